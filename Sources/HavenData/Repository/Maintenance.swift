import CrashPoints
import Foundation

/// What `verify` found.
public struct VerifyReport: Sendable {
    public struct Problem: Sendable, CustomStringConvertible {
        public var chunk: String
        public var error: DataError
        /// The versions that need the chunk.
        public var versions: [String]
        public var description: String { "chunk \(chunk): \(error.message); needed by \(versions.joined(separator: ", "))" }
    }

    public var checkedChunks: Int
    public var checkedVersions: Int
    public var problems: [Problem]
    /// Versions whose manifest cannot be used (unreadable, or inconsistent with its own index),
    /// by id: restore refuses them, so verify must not pass them.
    public var damagedVersions: [DamagedManifest] = []
    public var ok: Bool { problems.isEmpty && damagedVersions.isEmpty }
}

/// What `gc` did.
public struct GCReport: Sendable {
    public var liveChunks: Int
    public var deletedChunks: Int
    public var deletedBytes: Int64
    public var keptYoungChunks: Int
    public var removedTemporaryFiles: Int
}

extension BackupRepository {
    /// Checks each manifest (readable, consistent: see `BackupManifest.checkConsistency`, and
    /// naming as many chunks as its index holds), then re-reads and re-hashes the chunks of the
    /// given versions (all when empty), and the index pages that lead to them. Every damaged
    /// manifest is reported by version id; every bad or missing chunk with the versions needing it.
    public func verify(versions: [String] = []) throws -> VerifyReport {
        var chosen: [BackupManifest] = []
        var damaged: [DamagedManifest] = []
        if versions.isEmpty {
            let all = try manifests()
            chosen = all.versions
            damaged = all.damaged
        } else {
            for id in versions {
                do {
                    chosen.append(try manifest(id))
                } catch let e as DataError where e.code == .badManifest {
                    damaged.append(DamagedManifest(id: id, error: e))
                }
            }
        }
        var users: [ChunkID: Set<String>] = [:]
        var problems: [VerifyReport.Problem] = []
        for m in chosen {
            for d in m.disks {
                do {
                    let (pages, entries) = try DiskIndex.walk(d.index, from: self)
                    for id in pages + entries where !id.isZero { users[id, default: []].insert(m.id) }
                    if entries.count != d.index.entries {
                        damaged.append(DamagedManifest(id: m.id, error: DataError(
                            .badManifest, m.id, "disk \(d.key): the index holds \(entries.count) entries, the manifest says \(d.index.entries)")))
                    }
                } catch let e as DataError {
                    problems.append(.init(chunk: d.index.root, error: e, versions: [m.id]))
                }
            }
        }
        let ids = Array(users.keys)
        let needs = users
        let cursor = IndexCursor(Array(ids.indices))
        let found = ProblemList()
        try runThreads(min(ProcessInfo.processInfo.activeProcessorCount, max(1, ids.count)), name: "verify") { [self] _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(config.chunkSize, 1024 * 32), alignment: 4096)
            defer { buffer.deallocate() }
            while let i = cursor.next() {
                do {
                    _ = try getChunk(ids[i], into: buffer)
                } catch let e as DataError {
                    found.append(.init(chunk: ids[i].hex, error: e, versions: needs[ids[i]]!.sorted()))
                }
            }
        }
        problems += found.items.sorted { $0.chunk < $1.chunk }
        return VerifyReport(checkedChunks: ids.count, checkedVersions: Set(chosen.map(\.id) + damaged.map(\.id)).count, problems: problems,
                            damagedVersions: damaged)
    }

    /// Marks every chunk reachable from a manifest; deletes packs holding none of them and
    /// rewrites packs that are mostly dead, leaving alone packs younger than `safetyWindow` (a
    /// backup may still be writing them). Holds the lock exclusively.
    public func collectGarbage(safetyWindow: TimeInterval = 3_600, lockTimeout: Double? = nil) throws -> GCReport {
        try withLock(exclusive: true, timeout: lockTimeout) {
            // The table was read when this object opened the repository; writers in other
            // processes (or other repository objects) have added packs since. Read it again now
            // that nobody writes, or the walk below misses their chunks.
            try index.load()
            var live = Set<ChunkID>()
            // A damaged manifest still names chunks nobody can now tell: collect nothing until it
            // is repaired or forgotten.
            let all: [BackupManifest]
            do { all = try manifests().requireAll() } catch let e as DataError {
                throw DataError(.badManifest, e.subject, "\(e.message); gc collects nothing while a version cannot be read (repair it, or forget it with `haven backups forget \(e.subject)`)")
            }
            for m in all {
                for d in m.disks {
                    let (pages, entries) = try DiskIndex.walk(d.index, from: self)
                    live.formUnion(pages)
                    live.formUnion(entries)
                }
            }
            let cutoff = Date().addingTimeInterval(-safetyWindow)
            var report = GCReport(liveChunks: live.count, deletedChunks: 0, deletedBytes: 0, keptYoungChunks: 0, removedTemporaryFiles: 0)
            var rewritten = false
            for pack in index.packEntries().sorted(by: { $0.name < $1.name }) {
                let entries = pack.entries
                let dead = entries.filter { !live.contains($0.0) }
                guard !dead.isEmpty else { continue }
                var st = stat()
                guard stat(pack.path, &st) == 0 else { continue }
                if Date(timeIntervalSince1970: TimeInterval(st.st_mtim.tv_sec)) > cutoff {
                    report.keptYoungChunks += dead.count
                    continue
                }
                let deadBytes = dead.reduce(Int64(0)) { $0 + Int64($1.2) + 36 }
                if dead.count < entries.count {
                    // Mostly alive: leave it until a third of it is dead.
                    guard deadBytes * 3 >= Int64(st.st_size) else { continue }
                    // Copy the live chunks into new packs first (sealing makes them durable);
                    // only then drop the old one.
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(config.chunkSize, 1024 * 32) + 4096, alignment: 64)
                    defer { buffer.deallocate() }
                    let fd = Glibc.open(pack.path, O_RDONLY)
                    guard fd >= 0 else { continue }
                    let writer = acquireWriter()
                    for (id, offset, length) in entries where live.contains(id) {
                        let n = pread(fd, buffer.baseAddress, Int(length), off_t(offset))
                        guard n == Int(length) else { continue }
                        try writer.append(id, UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                    }
                    Glibc.close(fd)
                    try writer.seal()
                    releaseWriter(writer)
                    rewritten = true
                    CrashPoints.hit("gc pack rewritten")
                }
                unlink(indexPath(pack.name))
                CrashPoints.hit("gc index removed")
                unlink(pack.path)
                CrashPoints.hit("gc pack removed")
                index.removePack(named: pack.name)
                report.deletedChunks += dead.count
                report.deletedBytes += deadBytes
            }
            // The removals made durable: an index that came back after a crash would name a pack
            // that may be gone.
            if report.deletedChunks > 0 { try syncDirectory(indexDir.path) }
            if rewritten { try index.load() }
            for name in (try? FileManager.default.contentsOfDirectory(atPath: tmpDir.path)) ?? [] {
                let path = tmpDir.appendingPathComponent(name).path
                var st = stat()
                if stat(path, &st) == 0, Date(timeIntervalSince1970: TimeInterval(st.st_mtim.tv_sec)) <= cutoff, unlink(path) == 0 {
                    report.removedTemporaryFiles += 1
                }
            }
            return report
        }
    }

    /// Bytes the repository occupies on disk.
    public func diskUsage() -> Int64 {
        var total: Int64 = 0
        let e = FileManager.default.enumerator(atPath: root.path)
        while let p = e?.nextObject() as? String {
            var st = stat()
            if stat(root.appendingPathComponent(p).path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { total += Int64(st.st_blocks) * 512 }
        }
        return total
    }
}

final class ProblemList: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var list: [VerifyReport.Problem] = []
    func append(_ p: VerifyReport.Problem) {
        lock.lock()
        list.append(p)
        lock.unlock()
    }
    var items: [VerifyReport.Problem] {
        lock.lock()
        defer { lock.unlock() }
        return list
    }
}

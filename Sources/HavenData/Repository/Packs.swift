import CrashPoints
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Where a chunk lives: a pack file, the offset of its record's encoded chunk, its length.
struct ChunkLocation: Sendable {
    var pack: String
    var offset: UInt64
    var length: UInt32
    /// True while the pack is still being written (its path is in tmp/).
    var pending: Bool
}

/// Chunks are appended to pack files (about 32 MiB each) instead of one file per chunk: a small
/// chunk no longer costs a file creation. A pack is a sequence of records, each `id (32) |
/// length (u32 LE) | encoded chunk`; it can be re-indexed by reading it front to back. Its index
/// (`index/<pack>.idx`: `id | offset (u64 LE) | length (u32 LE)` per chunk) is written after the
/// pack is in place, so an index never names a pack that is not there.
final class PackWriter: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`; one backup thread appends at a time, and
    // commit may seal it from another thread.
    let lock = NSLock()
    unowned let repository: BackupRepository
    var fd: Int32 = -1
    var name = ""
    var size: UInt64 = 0
    var entries: [(ChunkID, UInt64, UInt32)] = []
    /// The pack is in `packs/` but its index could not be written (a full file system): the
    /// next seal, or append, tries again before anything else.
    var awaitingIndex = false
    static let target: UInt64 = 32 << 20

    init(repository: BackupRepository) { self.repository = repository }

    var tmpPath: String { repository.tmpDir.path + "/pack-" + name }

    /// Appends an encoded chunk; returns where it went.
    func append(_ id: ChunkID, _ encoded: UnsafeRawBufferPointer) throws -> ChunkLocation {
        lock.lock()
        defer { lock.unlock() }
        if awaitingIndex { try writeIndexLocked() }
        if fd < 0 {
            name = (0..<4).map { _ in String(format: "%08x", UInt32.random(in: 0...UInt32.max)) }.joined()
            fd = open(tmpPath, O_WRONLY | O_CREAT | O_TRUNC, BackupRepository.fileMode)
            guard fd >= 0 else { throw DataError(.io, tmpPath, String(cString: strerror(errno))) }
            size = 0
        }
        var header = id.bytes
        let length = UInt32(encoded.count)
        header += [UInt8(length & 0xff), UInt8(length >> 8 & 0xff), UInt8(length >> 16 & 0xff), UInt8(length >> 24)]
        let ok = header.withUnsafeBytes { writeAll(fd, $0) } && writeAll(fd, encoded)
        guard ok else {
            let reason = String(cString: strerror(errno))
            // A partial record would shift every later record away from the offset its index
            // gives: cut the pack back to its last whole record before anything else is appended.
            guard ftruncate(fd, off_t(size)) == 0, lseek(fd, off_t(size), SEEK_SET) == off_t(size) else {
                // Cannot happen on a sane file system; if it does, this pack is lost: forget it
                // and its chunks (never sealed, so no committed version names them).
                close(fd)
                fd = -1
                unlink(tmpPath)
                for (id, _, _) in entries { repository.index.dropPending(id) }
                entries.removeAll()
                throw DataError(.io, tmpPath, "cannot append to pack: \(reason)")
            }
            throw DataError(.io, tmpPath, "cannot append to pack: \(reason)")
        }
        let offset = size + 36
        size += 36 + UInt64(encoded.count)
        entries.append((id, offset, length))
        let location = ChunkLocation(pack: tmpPath, offset: offset, length: length, pending: true)
        repository.index.addPending(id, location)
        CrashPoints.hit("chunk-appended")
        if size >= Self.target { try sealLocked() }
        return location
    }

    func seal() throws {
        lock.lock()
        defer { lock.unlock() }
        try sealLocked()
    }

    /// Puts the pack in place, then its index, then makes its chunks visible as sealed.
    private func sealLocked() throws {
        if awaitingIndex { return try writeIndexLocked() }
        guard fd >= 0 else { return }
        close(fd)
        fd = -1
        let final = repository.packPath(name)
        let dir = (final as NSString).deletingLastPathComponent
        if access(dir, F_OK) != 0 { mkdir(dir, BackupRepository.directoryMode) }
        guard rename(tmpPath, final) == 0 else { throw DataError(.io, final, String(cString: strerror(errno))) }
        CrashPoints.hit("pack-renamed")
        awaitingIndex = true
        // Reads (an incremental patching a chunk) find the chunks at their new path meanwhile.
        for (id, offset, length) in entries {
            repository.index.addPending(id, ChunkLocation(pack: final, offset: offset, length: length, pending: true))
        }
        try writeIndexLocked()
    }

    /// Writes the index of the pack just put in place, then makes its chunks visible as sealed.
    private func writeIndexLocked() throws {
        let final = repository.packPath(name)
        var idx: [UInt8] = []
        idx.reserveCapacity(entries.count * 44)
        for (id, offset, length) in entries {
            idx += id.bytes
            withUnsafeBytes(of: offset.littleEndian) { idx += $0 }
            withUnsafeBytes(of: length.littleEndian) { idx += $0 }
        }
        let tmpIndex = repository.tmpDir.path + "/index-" + name
        let ifd = open(tmpIndex, O_WRONLY | O_CREAT | O_TRUNC, BackupRepository.fileMode)
        guard ifd >= 0 else { throw DataError(.io, tmpIndex, String(cString: strerror(errno))) }
        let ok = idx.withUnsafeBytes { writeAll(ifd, $0) }
        close(ifd)
        guard ok, rename(tmpIndex, repository.indexPath(name)) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(tmpIndex)
            throw DataError(.io, tmpIndex, "cannot write the pack index: \(reason)")
        }
        CrashPoints.hit("index-renamed")
        awaitingIndex = false
        for (id, offset, length) in entries {
            repository.index.seal(id, ChunkLocation(pack: final, offset: offset, length: length, pending: false))
        }
        entries.removeAll()
        name = ""
        size = 0
    }
}

/// Every chunk's location, loaded from the index files at open and kept current as packs are
/// sealed. Chunks of packs still being written are visible (for deduplication and reads) too.
final class ChunkIndex: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var sealed: [ChunkID: ChunkLocation] = [:]
    private var pending: [ChunkID: ChunkLocation] = [:]
    /// The packs `sealed` points into: tells cheaply whether another process's GC removed one.
    private var packs: Set<String> = []

    func load(from repo: BackupRepository) throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: repo.indexDir.path)) ?? []
        var files: [(pack: String, data: Data)] = []
        for file in names where file.hasSuffix(".idx") {
            guard let data = FileManager.default.contents(atPath: repo.indexDir.appendingPathComponent(file).path) else { continue }
            files.append((repo.packPath(String(file.dropLast(4))), data))
        }
        // Sized once: growing a table of a few hundred thousand ids rehashes it many times.
        var map: [ChunkID: ChunkLocation] = [:]
        map.reserveCapacity(files.reduce(0) { $0 + $1.data.count / 44 })
        for (path, data) in files {
            data.withUnsafeBytes { raw in
                var i = 0
                while i + 44 <= raw.count {
                    let id = ChunkID(raw: UnsafeRawBufferPointer(rebasing: raw[i..<(i + 32)]))
                    let offset = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i + 32, as: UInt64.self))
                    let length = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i + 40, as: UInt32.self))
                    map[id] = ChunkLocation(pack: path, offset: offset, length: length, pending: false)
                    i += 44
                }
            }
        }
        lock.withLock {
            sealed = map
            packs = Set(files.map(\.pack))
        }
    }

    /// Reads every index again when a pack this table points into has lost its index (a GC by
    /// another process deleted or rewrote it): otherwise deduplication would rely on chunks gone.
    func reloadIfPacksVanished(from repo: BackupRepository) throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: repo.indexDir.path)) ?? []
        let present = Set(names.filter { $0.hasSuffix(".idx") }.map { repo.packPath(String($0.dropLast(4))) })
        if lock.withLock({ !packs.isSubset(of: present) }) { try load(from: repo) }
    }

    /// The first non-zero id (with the reason) that is not in a sealed pack whose file exists;
    /// nil when all are. One lock for the whole list; `packs` caches which pack files exist.
    func firstUnsealed(_ ids: [ChunkID], packs cache: inout [String: Bool]) -> (ChunkID, String)? {
        lock.withLock {
            var lastPack = ""
            for id in ids where !id.isZero {
                guard let loc = sealed[id] else {
                    if let p = pending[id] { return (id, "is still in a pack being written (\(p.pack))") }
                    return (id, "is in no pack index")
                }
                // Chunks of a disk come in runs from the same pack: one comparison mostly.
                if loc.pack == lastPack { continue }
                let exists = cache[loc.pack] ?? (access(loc.pack, F_OK) == 0)
                cache[loc.pack] = exists
                guard exists else { return (id, "is in pack \(loc.pack), which is gone") }
                lastPack = loc.pack
            }
            return nil
        }
    }

    func find(_ id: ChunkID) -> ChunkLocation? { lock.withLock { sealed[id] ?? pending[id] } }
    func addPending(_ id: ChunkID, _ l: ChunkLocation) { lock.withLock { pending[id] = l } }
    func dropPending(_ id: ChunkID) { lock.withLock { pending[id] = nil } }

    func seal(_ id: ChunkID, _ l: ChunkLocation) {
        lock.withLock {
            pending[id] = nil
            sealed[id] = l
            packs.insert(l.pack)
        }
    }

    func remove(packPath: String) {
        lock.withLock {
            sealed = sealed.filter { $0.value.pack != packPath }
            packs.remove(packPath)
        }
    }
    var sealedEntries: [ChunkID: ChunkLocation] { lock.withLock { sealed } }
    var count: Int { lock.withLock { sealed.count + pending.count } }
}

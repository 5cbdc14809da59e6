import DiskFormats
import Foundation
import Synchronization
import Testing

@testable import HavenData

/// Issue 13, defect 1: `repo gc` between the disks of a backup (or before its commit) deleted
/// chunks the backup had deduplicated against, and the version was committed anyway.
@Suite struct WriteSessionTests {
    /// A repository where disk A's chunks are all present but referenced by no version (its
    /// version was pruned), as after a retention run: exactly what GC may delete, and exactly what
    /// a new backup of A deduplicates against.
    func prunedBase(_ s: Scratch) throws -> BackupRepository {
        var a = ImageMaker(state: 51)
        try a.image(at: s.path("a.img"), blocks: 64)
        var b = ImageMaker(state: 52)
        try b.image(at: s.path("b.img"), blocks: 64)
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let old = try DiskBackup(repository: repo).run(request("a", s))
        let m = manifest([old])
        try repo.commit(m)
        try repo.prune(m.id)
        return repo
    }

    func request(_ name: String, _ s: Scratch) throws -> DiskBackup.Request {
        DiskBackup.Request(key: name == "a" ? "0" : "1", name: name, vdiUUID: "", sourceSnapshotVDI: "", source: try FileDiskSource(path: s.path("\(name).img")))
    }

    func manifest(_ disks: [DiskVersion]) -> BackupManifest {
        BackupManifest(kind: .full, vmUUID: "u", vmName: "vm", pool: "", policy: "", vmRecord: [:], sourceSnapshotUUID: "", disks: disks)
    }

    func restoresBitIdentically(_ repo: BackupRepository, _ disk: DiskVersion, _ image: String, _ s: Scratch) throws -> Bool {
        try DiskRestore(repository: repo).toRawFile(disk, path: s.path("check.raw"))
        return try sha256(s.path("check.raw")) == sha256(image)
    }

    @Test func gcWaitsForTheWholeSessionAcrossDisks() throws {
        let s = try Scratch()
        let repo = try prunedBase(s)
        let session = try repo.beginWriteSession()
        // Per-disk shared locking inside the session, as the engine does: nesting must not deadlock.
        let diskA = try repo.withLock(exclusive: false) { try DiskBackup(repository: repo).run(try request("a", s)) }
        #expect(diskA.storedBytes == 0, "disk A relies entirely on chunks no version references yet")

        // Between the disks: GC is refused at once …
        #expect(throws: DataError.self) { try repo.collectGarbage(safetyWindow: 0, lockTimeout: 0) }
        // … and a GC that waits (from another repository object, as another process would) may
        // only run once the session is closed.
        let closed = Atomic<Bool>(false)
        let outcome = Mutex<(ranAfterClose: Bool, error: String?)?>(nil)
        let gcDone = DispatchSemaphore(value: 0)
        let root = s.path("repo")
        Thread {
            do {
                _ = try BackupRepository.open(at: root).collectGarbage(safetyWindow: 0)
                let after = closed.load(ordering: .sequentiallyConsistent)
                outcome.withLock { $0 = (after, nil) }
            } catch {
                outcome.withLock { $0 = (false, "\(error)") }
            }
            gcDone.signal()
        }.start()

        let diskB = try repo.withLock(exclusive: false) { try DiskBackup(repository: repo).run(try request("b", s)) }
        let version = manifest([diskA, diskB])
        try session.commit(version)
        closed.store(true, ordering: .sequentiallyConsistent)
        session.close()
        gcDone.wait()
        let gc = try #require(outcome.withLock { $0 })
        #expect(gc.error == nil)
        #expect(gc.ranAfterClose, "GC ran while the session held the lock")

        // After that GC, the committed version is whole.
        let reopened = try BackupRepository.open(at: root)
        #expect(try reopened.verify().ok)
        #expect(try restoresBitIdentically(reopened, diskA, s.path("a.img"), s))
        #expect(try restoresBitIdentically(reopened, diskB, s.path("b.img"), s))
        #expect(throws: DataError.self) { try session.commit(manifest([diskA])) }
    }

    /// The reported sequence, without a session: the lock held per disk only, GC (another
    /// process) in the gap. The commit must refuse, naming a missing chunk, and write no manifest.
    @Test func commitRefusesAVersionWhoseChunksGCRemoved() throws {
        let s = try Scratch()
        let repo = try prunedBase(s)
        let diskA = try repo.withLock(exclusive: false) { try DiskBackup(repository: repo).run(try request("a", s)) }
        let (pages, entries) = try DiskIndex.walk(diskA.index, from: repo)
        let needed = Set((pages + entries).filter { !$0.isZero }.map(\.hex))
        let gc = try BackupRepository.open(at: s.path("repo")).collectGarbage(safetyWindow: 0, lockTimeout: 0)
        #expect(gc.deletedChunks > 0)
        let diskB = try repo.withLock(exclusive: false) { try DiskBackup(repository: repo).run(try request("b", s)) }
        do {
            try repo.commit(manifest([diskA, diskB]))
            Issue.record("a version naming deleted chunks was committed")
        } catch let e as DataError {
            #expect(e.code == .missingChunk, "\(e)")
            #expect(needed.contains(e.subject), "the error names a chunk of disk A: \(e)")
        }
        #expect(try repo.manifests().isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.path("repo/manifests")).isEmpty)
    }

    /// Commit checks, directly: a version naming a chunk whose pack file is gone, or a chunk that
    /// was never stored, is refused with that chunk named; no manifest appears.
    @Test(arguments: ["pack-deleted", "never-stored"])
    func commitRefusesAMissingChunk(how: String) throws {
        let s = try Scratch()
        var maker = ImageMaker(state: 61)
        try maker.image(at: s.path("a.img"), blocks: 64)
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let first = try DiskBackup(repository: repo).run(try request("a", s))
        let firstVersion = manifest([first])
        try repo.commit(firstVersion)
        var disk = try DiskBackup(repository: repo).run(try request("a", s))
        var culprits: Set<String> = []
        if how == "pack-deleted" {
            let (pages, entries) = try DiskIndex.walk(disk.index, from: repo)
            let victim = try #require(entries.first { !$0.isZero })
            let pack = try #require(repo.location(of: victim)).pack
            culprits = Set((pages + entries).filter { repo.location(of: $0)?.pack == pack }.map(\.hex))
            try FileManager.default.removeItem(atPath: pack)
        } else {
            var entries = try DiskIndex.read(disk.index, from: repo)
            let forged = ChunkID(hex: String(repeating: "5a", count: 32))!
            entries[entries.count / 2] = forged
            disk.index = try DiskIndex.write(entries, to: repo).0
            culprits = [forged.hex]
        }
        do {
            try repo.commit(manifest([disk]))
            Issue.record("committed a version naming a missing chunk")
        } catch let e as DataError {
            #expect(e.code == .missingChunk, "\(e)")
            #expect(culprits.contains(e.subject), "\(e)")
        }
        #expect(try repo.manifests().map(\.id) == [firstVersion.id])
    }

    /// The check on a large version: one missing chunk among a million (a 64 GiB disk in 64 KiB
    /// chunks) is found. `HAVEN_REFCHECK_ENTRIES` sets the size; the time is printed.
    @Test func referenceCheckFindsOneMissingChunkAmongMany() throws {
        let s = try Scratch()
        let count = Int(ProcessInfo.processInfo.environment["HAVEN_REFCHECK_ENTRIES"] ?? "") ?? 1_000_000
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        // Stand-ins for stored chunks: one pack file (empty: the check does not read data
        // chunks) and its index naming `count` random ids, loaded as at open.
        let name = "00000000000000000000000000000000"
        let pack = repo.packPath(name)
        try FileManager.default.createDirectory(atPath: (pack as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: pack, contents: Data())
        var rng = SplitMix64(state: 77)
        var entries: [ChunkID] = []
        entries.reserveCapacity(count)
        var idx = Data(capacity: count * 44)
        for i in 0..<count {
            var bytes = [UInt8](repeating: 0, count: 44)
            for w in 0..<4 { withUnsafeBytes(of: rng.next()) { bytes.replaceSubrange((w * 8)..<(w * 8 + 8), with: $0) } }
            withUnsafeBytes(of: UInt64(i).littleEndian) { bytes.replaceSubrange(32..<40, with: $0) }
            bytes[40] = 1
            entries.append(bytes.withUnsafeBytes { ChunkID(raw: UnsafeRawBufferPointer(rebasing: $0[0..<32])) })
            idx.append(contentsOf: bytes)
        }
        try idx.write(to: URL(fileURLWithPath: repo.indexPath(name)))
        try repo.index.load()
        #expect(repo.chunkCount == count)
        let (root, _) = try DiskIndex.write(entries, to: repo)
        try repo.sealPacks()
        let disk = DiskVersion(key: "0", name: "big", vdiUUID: "", size: Int64(count) * 65_536, chunkSize: 65_536, index: root,
                               sourceSnapshotVDI: "", readBytes: 0, storedBytes: 0, zeroChunks: 0)
        let clock = ContinuousClock()
        let took = try clock.measure { try repo.checkReferences(of: manifest([disk])) }
        // For comparison: reading the index alone (what any restore of the version does first).
        var readBack = 0
        let read = try clock.measure { readBack = try DiskIndex.read(root, from: repo).count }
        #expect(readBack == count)
        print("reference check of \(count) chunks: \(took) (reading the index alone: \(read))")

        let missing = ChunkID(hex: String(repeating: "c3", count: 32))!
        entries[count - 10] = missing
        let (forged, _) = try DiskIndex.write(entries, to: repo)
        var bad = disk
        bad.index = forged
        #expect(throws: DataError(.missingChunk, missing.hex, "the version needs this chunk, but it is in no pack index; nothing was committed")) {
            try repo.commit(manifest([bad]))
        }
        #expect(try repo.manifests().isEmpty)
    }
}

import Foundation
import Testing

@testable import HavenData

@Suite struct IntegrityTests {
    func seeded(_ s: Scratch, versions: Int) throws -> (BackupRepository, [BackupManifest]) {
        var maker = ImageMaker(state: 21)
        try maker.image(at: s.path("disk.img"), blocks: 96)
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        var out: [BackupManifest] = []
        var previous: DiskVersion?
        for i in 0..<versions {
            var changed: ChangedBlocks?
            if i > 0 { changed = ChangedBlocks(diskSize: 96 * 65_536, blocks: try maker.change(s.path("disk.img"), blocks: 96, count: 10)) }
            let d = try DiskBackup(repository: repo).run(.init(key: "0", name: "d", vdiUUID: "", sourceSnapshotVDI: "", source: try FileDiskSource(path: s.path("disk.img")),
                                                               previous: previous, changed: changed))
            let m = BackupManifest(kind: .full, vmUUID: "", vmName: "vm", pool: "", policy: "", vmRecord: [:], sourceSnapshotUUID: "", disks: [d])
            try repo.commit(m)
            out.append(m)
            previous = d
        }
        return (repo, out)
    }


    @Test(arguments: ["flip", "truncate", "zero", "delete"])
    func damagedChunksAreAlwaysDetected(how: String) throws {
        let s = try Scratch()
        let (repo, versions) = try seeded(s, versions: 2)
        let entries = try DiskIndex.read(versions[0].disks[0].index, from: repo)
        let victim = try #require(entries.first { !$0.isZero })
        let loc = try #require(repo.location(of: victim))
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: loc.pack))
        switch how {
        case "flip":
            try h.seek(toOffset: loc.offset + UInt64(loc.length / 2))
            let b = try h.read(upToCount: 1)!
            try h.seek(toOffset: loc.offset + UInt64(loc.length / 2))
            try h.write(contentsOf: Data([b[0] ^ 0x40]))
        case "truncate": try h.truncate(atOffset: loc.offset + UInt64(loc.length / 3))
        case "zero":
            try h.seek(toOffset: loc.offset)
            try h.write(contentsOf: Data(count: Int(loc.length)))
        default: break
        }
        try h.close()
        if how == "delete" { try FileManager.default.removeItem(atPath: loc.pack) }
        let report = try repo.verify()
        #expect(!report.ok)
        // The chunk is named, and so is the version that needs it (through the chunk itself, or
        // through an index page of the version when the damage reached that too).
        let problem = try #require(report.problems.first { $0.chunk == victim.hex })
        #expect(problem.error.code == (how == "delete" ? .missingChunk : .corruptChunk))
        #expect(report.problems.contains { $0.versions.contains(versions[0].id) })
        #expect(throws: DataError.self) { try DiskRestore(repository: repo).toRawFile(versions[0].disks[0], path: s.path("x.raw")) }
    }

    @Test func gcSweepsOnlyWhatNoVersionNeeds() throws {
        let s = try Scratch()
        var maker = ImageMaker(state: 41)
        try maker.image(at: s.path("a.img"), blocks: 64)
        var other = ImageMaker(state: 42)
        try other.image(at: s.path("b.img"), blocks: 64)
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        var versions: [BackupManifest] = []
        for file in ["a.img", "b.img"] {
            let d = try DiskBackup(repository: repo).run(.init(key: "0", name: file, vdiUUID: "", sourceSnapshotVDI: "", source: try FileDiskSource(path: s.path(file))))
            let m = BackupManifest(kind: .full, vmUUID: "", vmName: file, pool: "", policy: "", vmRecord: [:], sourceSnapshotUUID: "", disks: [d])
            try repo.commit(m)
            versions.append(m)
        }
        let before = repo.chunkCount
        try repo.prune(versions[0].id)
        // Inside the safety window nothing goes.
        let young = try repo.collectGarbage(safetyWindow: 3_600)
        #expect(young.deletedChunks == 0)
        #expect(young.keptYoungChunks > 0)
        let swept = try repo.collectGarbage(safetyWindow: 0)
        #expect(swept.deletedChunks > 0)
        #expect(repo.chunkCount < before)
        #expect(try repo.verify().ok, "the remaining version is whole")
        try DiskRestore(repository: repo).toRawFile(versions[1].disks[0], path: s.path("r.raw"))
        #expect(try sha256(s.path("r.raw")) == sha256(s.path("b.img")))
        #expect(try repo.manifests().map(\.id) == [versions[1].id])
        // A reopened repository finds the same chunks.
        let again = try BackupRepository.open(at: s.path("repo"))
        #expect(again.chunkCount == repo.chunkCount)
        #expect(try again.verify().ok)
    }

    @Test func gcWaitsForWriters() throws {
        let s = try Scratch()
        let (repo, _) = try seeded(s, versions: 1)
        try repo.withLock(exclusive: false) {
            #expect(throws: DataError.self) { try repo.collectGarbage(safetyWindow: 0, lockTimeout: 0.2) }
        }
        _ = try repo.collectGarbage(safetyWindow: 0, lockTimeout: 1)
    }

    @Test func indexesOfUnchangedRegionsAreShared() throws {
        let s = try Scratch()
        // 4,096 chunks of 64 KiB: four index pages; one changed block rewrites one page only.
        let size: Int64 = 4096 * 65_536
        let fd = open(s.path("big.img"), O_CREAT | O_WRONLY, 0o644)
        ftruncate(fd, off_t(size))
        var data = [UInt8](repeating: 1, count: 65_536)
        for b in stride(from: 0, to: 4096, by: 7) {
            data[0] = UInt8(b & 0xff)
            data[1] = UInt8(b >> 8)
            _ = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, 65_536, off_t(b) * 65_536) }
        }
        close(fd)
        let repo = try BackupRepository.initialize(at: s.path("repo"), chunkSize: 65_536)
        let full = try DiskBackup(repository: repo).run(.init(key: "0", name: "d", vdiUUID: "", sourceSnapshotVDI: "", source: try FileDiskSource(path: s.path("big.img"))))
        #expect(full.index.depth == 1)
        var maker = ImageMaker(state: 1)
        let chunksBefore = repo.chunkCount
        let touched = try maker.change(s.path("big.img"), blocks: 4096, count: 1)
        let inc = try DiskBackup(repository: repo).run(.init(key: "0", name: "d", vdiUUID: "", sourceSnapshotVDI: "", source: try FileDiskSource(path: s.path("big.img")),
                                                              previous: full, changed: ChangedBlocks(diskSize: size, blocks: touched)))
        // One data chunk, one leaf page, one root page; each at most a page of 32 KiB.
        #expect(repo.chunkCount - chunksBefore <= 3)
        #expect(inc.storedBytes < 3 * 33 * 1024)
    }
}

@Suite struct ChangedBlocksTests {
    @Test func decodesMSBFirst() throws {
        // Blocks 0 and 9 of a 1 MiB disk (16 blocks): 0x80 0x40.
        let c = try ChangedBlocks(base64: Data([0x80, 0x40]).base64EncodedString(), diskSize: 1 << 20)
        #expect(c.blocks == [0, 9])
        #expect(c.base64 == Data([0x80, 0x40]).base64EncodedString())
    }

    @Test func refusesBitmapsThatDoNotFitTheDisk() {
        #expect(throws: DataError.self) { try ChangedBlocks(base64: Data([0xff]).base64EncodedString(), diskSize: 1 << 20) }
        // A bit beyond the last block (disk of 12 blocks, bit 13 set).
        #expect(throws: DataError.self) { try ChangedBlocks(base64: Data([0, 0x04]).base64EncodedString(), diskSize: 12 * 65_536) }
        #expect(throws: DataError.self) { try ChangedBlocks(base64: "not base64!", diskSize: 1 << 20) }
        // Padding to whole bytes (and SM's extra bytes) is fine.
        #expect((try? ChangedBlocks(base64: Data([0x80, 0, 0, 0]).base64EncodedString(), diskSize: 12 * 65_536))?.blocks == [0])
    }

    @Test func rangesCoalesceWithinChunksAndClipAtTheEnd() {
        let c = ChangedBlocks(diskSize: 40 * 65_536 - 512, blocks: [1, 2, 3, 15, 16, 17, 39])
        let r = c.ranges(within: 16 * 65_536)
        #expect(r == [ByteRange(offset: 65_536, length: 3 * 65_536), ByteRange(offset: 15 * 65_536, length: 65_536),
                      ByteRange(offset: 16 * 65_536, length: 2 * 65_536), ByteRange(offset: 39 * 65_536, length: 65_536 - 512)])
    }
}

@Suite struct ConcurrencyTests {
    @Test func concurrentWritersShareARepositorySafely() throws {
        let s = try Scratch()
        var maker = ImageMaker(state: 31)
        try maker.image(at: s.path("a.img"), blocks: 64)
        try FileManager.default.copyItem(atPath: s.path("a.img"), toPath: s.path("b.img"))
        _ = try maker.change(s.path("b.img"), blocks: 64, count: 20)
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let results = ResultsBox()
        try runThreads(2, name: "writer") { i in
            let file = i == 0 ? s.path("a.img") : s.path("b.img")
            let d = try repo.withLock(exclusive: false) {
                try DiskBackup(repository: repo, workers: 2).run(.init(key: "0", name: "d\(i)", vdiUUID: "", sourceSnapshotVDI: "",
                                                                      source: try FileDiskSource(path: file)))
            }
            try repo.commit(BackupManifest(kind: .full, vmUUID: "", vmName: "vm\(i)", pool: "", policy: "", vmRecord: [:], sourceSnapshotUUID: "", disks: [d]))
            results.set(i, d)
        }
        #expect(try repo.manifests().count == 2)
        #expect(try repo.verify().ok)
        for i in 0..<2 {
            let out = s.path("out\(i).raw")
            try DiskRestore(repository: repo).toRawFile(try #require(results.get(i)), path: out)
            #expect(try sha256(out) == sha256(s.path(i == 0 ? "a.img" : "b.img")))
        }
    }
}

final class ResultsBox: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var values: [Int: DiskVersion] = [:]
    func set(_ i: Int, _ v: DiskVersion) { lock.withLock { values[i] = v } }
    func get(_ i: Int) -> DiskVersion? { lock.withLock { values[i] } }
}

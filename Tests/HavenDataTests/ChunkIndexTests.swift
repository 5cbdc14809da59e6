import DiskFormats
import Foundation
import Testing

@testable import HavenData

/// The chunk index on disk: sorted runs written from the packs' `.idx` files, merged by size,
/// searched in place; a run is a cache, so a damaged one costs nothing but a re-read.
@Suite struct ChunkIndexTests {
    /// `count` versions of different random images (64 chunks of 64 KiB each), committed.
    func versions(_ s: Scratch, _ repo: BackupRepository, count: Int, from: Int = 0) throws -> [(BackupManifest, String)] {
        var out: [(BackupManifest, String)] = []
        for i in from..<(from + count) {
            let image = s.path("img-\(i)")
            try randomImage(at: image, bytes: 64 * 65_536 - 4096 * (i % 3), seed: UInt64(100 + i))
            let disk = try DiskBackup(repository: repo).run(.init(key: "0", name: "d\(i)", vdiUUID: "", sourceSnapshotVDI: "",
                                                                  source: try FileDiskSource(path: image)))
            let m = BackupManifest(kind: .full, vmUUID: "u\(i)", vmName: "vm\(i)", pool: "p", policy: "x", vmRecord: [:], sourceSnapshotUUID: "",
                                   disks: [disk])
            try repo.commit(m)
            out.append((m, try sha256(image)))
        }
        return out
    }

    func runs(_ s: Scratch) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: s.path("repo/index/runs"))) ?? []).filter { $0.hasSuffix(".run") }.sorted()
    }

    func restoresAll(_ repo: BackupRepository, _ vs: [(BackupManifest, String)], _ s: Scratch) throws {
        for (i, (m, hash)) in vs.enumerated() {
            let out = s.path("restored-\(i).raw")
            try DiskRestore(repository: repo).toRawFile(m.disks[0], path: out)
            #expect(try sha256(out) == hash, "version \(i)")
            try FileManager.default.removeItem(atPath: out)
        }
    }

    /// Opens the repository with a small flush threshold (the default is 32,768 chunks).
    func reopen(_ s: Scratch, flushAt: Int) throws -> BackupRepository {
        let repo = try BackupRepository.open(at: s.path("repo"))
        repo.index.flushEntries = flushAt
        try repo.index.load()
        return repo
    }

    @Test func looseChunksBecomeARunThatServesLookups() throws {
        let s = try Scratch()
        let repo = try BackupRepository.initialize(at: s.path("repo"), compression: "none")
        let vs = try versions(s, repo, count: 5)
        let count = repo.chunkCount
        #expect(runs(s).isEmpty, "below the threshold every chunk is held in memory")
        let again = try reopen(s, flushAt: 100)
        #expect(runs(s).count == 1, "the loose packs were written as one run")
        #expect(again.chunkCount == count)
        try restoresAll(again, vs, s)
        #expect(try again.verify().ok)
        // A third opening maps the run and reads no .idx at all: same answers.
        let third = try reopen(s, flushAt: 100)
        #expect(third.chunkCount == count)
        for (m, _) in vs {
            for id in try DiskIndex.read(m.disks[0].index, from: third) where !id.isZero { #expect(third.hasChunk(id)) }
        }
        // An id in no pack is in no run either.
        #expect(!third.hasChunk(ChunkID(hex: String(repeating: "7e", count: 32))!))
        // Deduplication through the run: the same image again stores nothing new.
        let disk = try DiskBackup(repository: third).run(.init(key: "0", name: "again", vdiUUID: "", sourceSnapshotVDI: "",
                                                               source: try FileDiskSource(path: s.path("img-0"))))
        #expect(disk.storedBytes <= 33 * 1024, "at most an index page is new: \(disk.storedBytes)")
    }

    @Test func runsOfOneSizeAreMerged() throws {
        let s = try Scratch()
        let repo = try BackupRepository.initialize(at: s.path("repo"), compression: "none")
        var all: [(BackupManifest, String)] = []
        // Each round adds about 65 chunks and flushes them as a run of their own.
        for round in 0..<6 {
            all += try versions(s, try reopen(s, flushAt: 60), count: 1, from: round)
            _ = try reopen(s, flushAt: 60)
        }
        #expect(runs(s).count < 4, "four runs of a tier became one: \(runs(s))")
        let again = try reopen(s, flushAt: 60)
        try restoresAll(again, all, s)
        #expect(try again.verify().ok)
        _ = repo
    }

    @Test func aDamagedRunIsDroppedAndThePacksAreReadAgain() throws {
        let s = try Scratch()
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let vs = try versions(s, repo, count: 3)
        let count = repo.chunkCount
        _ = try reopen(s, flushAt: 10)
        let run = try #require(runs(s).first)
        // A flipped byte in its pack table: the checksum no longer matches.
        let path = s.path("repo/index/runs/\(run)")
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        let size = try h.seekToEnd()
        try h.seek(toOffset: size - 45)
        let b = try #require(try h.read(upToCount: 1))
        try h.seek(toOffset: size - 45)
        try h.write(contentsOf: Data([b[0] ^ 0x20]))
        try h.close()
        let again = try reopen(s, flushAt: 1_000_000)
        #expect(!runs(s).contains(run), "the damaged run is gone")
        #expect(again.chunkCount == count)
        try restoresAll(again, vs, s)
    }

    @Test func gcLeavesRunsThatNoLongerNameItsPacks() throws {
        let s = try Scratch()
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let vs = try versions(s, repo, count: 4)
        let indexed = try reopen(s, flushAt: 10)
        let before = indexed.chunkCount
        let victim = try #require(try DiskIndex.read(vs[0].0.disks[0].index, from: indexed).first { !$0.isZero })
        try indexed.prune(vs[0].0.id)
        let report = try indexed.collectGarbage(safetyWindow: 0)
        #expect(report.deletedChunks > 0)
        #expect(indexed.chunkCount < before)
        #expect(!indexed.hasChunk(victim), "a chunk of a pack GC deleted is not found through the run")
        let again = try reopen(s, flushAt: 10)
        #expect(again.chunkCount == indexed.chunkCount)
        #expect(!again.hasChunk(victim))
        try restoresAll(again, Array(vs.dropFirst()), s)
        #expect(try again.verify().ok)
    }

    @Test func aRepositoryOfManyLoosePacksIsIndexedInBatches() throws {
        let s = try Scratch()
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let vs = try versions(s, repo, count: 6)
        let count = repo.chunkCount
        // Batches of 8 × 20 chunks: several runs are written while reading, then merged.
        let again = try reopen(s, flushAt: 20)
        #expect(!runs(s).isEmpty)
        #expect(again.chunkCount == count)
        try restoresAll(again, vs, s)
    }
}

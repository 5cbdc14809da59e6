import Foundation
import Testing

@testable import HavenData

@Suite struct RoundTripTests {
    /// Full backup then five incrementals, read over NBD with TLS from nbdkit; every version
    /// restores bit-identically to raw and to VHD.
    @Test(arguments: ["zstd:3", "none"])
    func fullAndFiveIncrementalsRestoreBitIdentically(compression: String) throws {
        let s = try Scratch()
        let blocks = 320  // 20 MiB, not a multiple of the 1 MiB chunk in blocks? 320*64K = 20 MiB
        var maker = ImageMaker(state: compression == "none" ? 11 : 7)
        let image = s.path("disk.img")
        try maker.image(at: image, blocks: blocks)
        // A size that is not a whole number of chunks.
        try FileHandle(forWritingTo: URL(fileURLWithPath: image)).truncate(atOffset: UInt64(blocks) * 65_536 - 65_536 * 3)
        let size = Int64(blocks) * 65_536 - 65_536 * 3
        let repo = try BackupRepository.initialize(at: s.path("repo"), chunkSize: 1 << 20, compression: compression)
        var versions: [(BackupManifest, String)] = []
        var previous: DiskVersion?
        for round in 0...5 {
            var changed: ChangedBlocks?
            if round > 0 {
                let touched = try maker.change(image, blocks: Int(size / 65_536), count: 6 + round * 3)
                changed = ChangedBlocks(diskSize: size, blocks: touched)
            }
            let snapshot = s.path("snap-\(round).img")
            try FileManager.default.copyItem(atPath: image, toPath: snapshot)
            let server = try NBDKit(file: snapshot, scratch: s)
            let source = try NBDDiskSource(server.endpoint, connections: 3, depth: 4)
            let disk = try DiskBackup(repository: repo).run(.init(
                key: "0", name: "root", vdiUUID: "vdi", sourceSnapshotVDI: "snap-\(round)", source: source,
                previous: previous, changed: changed))
            if let changed { #expect(disk.readBytes == changed.changedBytes, "an incremental reads only the changed blocks") }
            let m = BackupManifest(kind: round == 0 ? .full : .incremental, vmUUID: "u", vmName: "vm", pool: "p", policy: "x",
                                   vmRecord: [:], sourceSnapshotUUID: "s", disks: [disk])
            try repo.commit(m)
            versions.append((m, try sha256(snapshot)))
            previous = disk
        }
        let restore = DiskRestore(repository: repo)
        for (i, (m, hash)) in versions.enumerated() {
            let raw = s.path("restored-\(i).raw")
            try restore.toRawFile(m.disks[0], path: raw)
            #expect(try sha256(raw) == hash, "version \(i) raw")
            let vhd = s.path("restored-\(i).vhd")
            try restore.toVHDFile(m.disks[0], path: vhd)
            let (rc, out) = try run("qemu-img", ["compare", "-f", "raw", "-F", "vpc", s.path("snap-\(i).img"), vhd])
            #expect(rc == 0, "version \(i) vhd: \(out)")
        }
        #expect(try repo.verify().ok)
        // Restored raw files keep holes where the disk had none written.
        var st = stat()
        stat(s.path("restored-0.raw"), &st)
        #expect(Int64(st.st_blocks) * 512 < size)
    }

    @Test func restoreToAWritableNBDExport() throws {
        let s = try Scratch()
        var maker = ImageMaker(state: 3)
        try maker.image(at: s.path("disk.img"), blocks: 64)
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let disk = try DiskBackup(repository: repo).run(.init(key: "0", name: "d", vdiUUID: "", sourceSnapshotVDI: "",
                                                                source: try FileDiskSource(path: s.path("disk.img"))))
        // A target full of garbage: every chunk (zeros too) must be written.
        try Data((0..<(64 * 65_536)).map { UInt8(truncatingIfNeeded: $0 &* 31) }).write(to: URL(fileURLWithPath: s.path("target.img")))
        let server = try NBDKit(file: s.path("target.img"), scratch: s, writable: true)
        try DiskRestore(repository: repo).toNBD(disk, endpoint: server.endpoint)
        #expect(try sha256(s.path("target.img")) == sha256(s.path("disk.img")))
    }

    @Test func deduplicatesAcrossDisksAndVersions() throws {
        let s = try Scratch()
        var maker = ImageMaker(state: 5)
        try maker.image(at: s.path("a.img"), blocks: 128)
        try FileManager.default.copyItem(atPath: s.path("a.img"), toPath: s.path("b.img"))
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let first = try DiskBackup(repository: repo).run(.init(key: "0", name: "a", vdiUUID: "", sourceSnapshotVDI: "", source: try FileDiskSource(path: s.path("a.img"))))
        let second = try DiskBackup(repository: repo).run(.init(key: "1", name: "b", vdiUUID: "", sourceSnapshotVDI: "", source: try FileDiskSource(path: s.path("b.img"))))
        #expect(first.storedBytes > 0)
        #expect(second.storedBytes == 0, "the same content on another disk stores nothing new")
        #expect(second.index == first.index)
    }

    @Test func encryptedRepositoryRoundTripsAndRefusesTheWrongKey() throws {
        let s = try Scratch()
        var maker = ImageMaker(state: 9)
        try maker.image(at: s.path("disk.img"), blocks: 48)
        let repo = try BackupRepository.initialize(at: s.path("repo"), keyFile: s.path("key"))
        let disk = try DiskBackup(repository: repo).run(.init(key: "0", name: "d", vdiUUID: "", sourceSnapshotVDI: "", source: try FileDiskSource(path: s.path("disk.img"))))
        try repo.commit(BackupManifest(kind: .full, vmUUID: "", vmName: "", pool: "", policy: "", vmRecord: [:], sourceSnapshotUUID: "", disks: [disk]))
        let reopened = try BackupRepository.open(at: s.path("repo"), keyFile: s.path("key"))
        try DiskRestore(repository: reopened).toRawFile(disk, path: s.path("out.raw"))
        #expect(try sha256(s.path("out.raw")) == sha256(s.path("disk.img")))
        // No plaintext in the chunk files.
        let (grepRC, _) = try run("grep", ["-r", "-l", "quick brown fox", s.path("repo")])
        #expect(grepRC != 0)
        try (String(repeating: "ab", count: 32) + "\n").write(toFile: s.path("other-key"), atomically: true, encoding: .utf8)
        #expect(throws: DataError.self) { try BackupRepository.open(at: s.path("repo"), keyFile: s.path("other-key")) }
        do {
            _ = try BackupRepository.open(at: s.path("repo"), keyFile: s.path("other-key"))
        } catch let e as DataError {
            #expect(e.code == .wrongKey)
            #expect(e.message.contains("does not open"))
        }
        #expect(throws: DataError.self) { try BackupRepository.open(at: s.path("repo")) }
    }
}

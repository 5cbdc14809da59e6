import Foundation
import Synchronization
import Testing

@testable import HavenData

/// Transfers that end badly (a full file system) or run wide (many NBD connections) over real
/// nbdkit servers on loopback.
@Suite struct TransferFailureTests {
    /// Issue 13, defect 2: a backup onto a full file system used to free the buffers of NBD reads
    /// still in flight (`malloc(): invalid next size`, exit 134). It must fail with a clean error
    /// naming the file, leave every earlier version restorable, and leave the repository usable
    /// once space is freed.
    @Test(.enabled(if: TmpFS.available, "mounting a tmpfs needs root"))
    func backupOntoAFullFileSystemFailsCleanly() throws {
        let s = try Scratch()
        let fs = try TmpFS(in: s, name: "fs", bytes: 8 << 20)
        let repo = try BackupRepository.initialize(at: fs.path + "/repo", compression: "none")
        // An earlier version (1 MiB), committed while there is room.
        try randomImage(at: s.path("early.img"), bytes: 1 << 20, seed: 1)
        let early = try DiskBackup(repository: repo).run(.init(key: "0", name: "early", vdiUUID: "", sourceSnapshotVDI: "",
                                                               source: try FileDiskSource(path: s.path("early.img"))))
        let earlyVersion = BackupManifest(kind: .full, vmUUID: "", vmName: "early", pool: "", policy: "", vmRecord: [:],
                                          sourceSnapshotUUID: "", disks: [early])
        try repo.commit(earlyVersion)
        // Room to free later, to show the repository still takes backups after the failure.
        try Data(count: 2 << 20).write(to: URL(fileURLWithPath: fs.path + "/filler"))

        // 16 MiB that does not compress, read over NBD with many reads in flight: the file system
        // fills up while reads are outstanding on every connection.
        try randomImage(at: s.path("big.img"), bytes: 16 << 20, seed: 2)
        let server = try NBDKit(file: s.path("big.img"), scratch: s)
        let source = try NBDDiskSource(server.endpoint, connections: 4, depth: 8)
        do {
            _ = try DiskBackup(repository: repo, workers: 2).run(.init(key: "0", name: "big", vdiUUID: "", sourceSnapshotVDI: "", source: source))
            Issue.record("a 16 MiB backup fitted into what is left of an 8 MiB file system")
        } catch let e as DataError {
            #expect(e.code == .io, "\(e)")
            #expect(e.message.contains("No space left on device"), "\(e)")
            #expect(e.subject.hasPrefix(fs.path + "/repo/"), "the error names the file that could not be written: \(e)")
        }
        #expect(try repo.manifests().map(\.id) == [earlyVersion.id])

        // The earlier version is whole, in this process and in a fresh one.
        try DiskRestore(repository: repo).toRawFile(early, path: s.path("early.raw"))
        #expect(try sha256(s.path("early.raw")) == sha256(s.path("early.img")))
        #expect(try BackupRepository.open(at: fs.path + "/repo").verify().ok)

        // With room again, the same repository object takes and commits a new backup, and both
        // versions restore bit-identically.
        try FileManager.default.removeItem(atPath: fs.path + "/filler")
        try randomImage(at: s.path("later.img"), bytes: 1 << 20, seed: 3)
        let later = try DiskBackup(repository: repo).run(.init(key: "0", name: "later", vdiUUID: "", sourceSnapshotVDI: "",
                                                               source: try FileDiskSource(path: s.path("later.img"))))
        try repo.commit(BackupManifest(kind: .full, vmUUID: "", vmName: "later", pool: "", policy: "", vmRecord: [:],
                                       sourceSnapshotUUID: "", disks: [later]))
        let reopened = try BackupRepository.open(at: fs.path + "/repo")
        #expect(try reopened.verify().ok)
        for (disk, image) in [(early, "early.img"), (later, "later.img")] {
            try DiskRestore(repository: reopened).toRawFile(disk, path: s.path("check.raw"))
            #expect(try sha256(s.path("check.raw")) == sha256(s.path(image)), "\(image)")
        }
    }

    /// Issue 14: with 7 or more connections of 8 reads each, more buffers are in flight than the
    /// pool holds (48 with two workers); readers waiting for a buffer while holding undelivered
    /// ones deadlocked. Every count must finish and store the disk exactly.
    @Test(arguments: [1, 7, 16])
    func anyNumberOfConnectionsFinishes(connections: Int) throws {
        let s = try Scratch()
        try randomImage(at: s.path("disk.img"), bytes: 16 << 20, seed: UInt64(connections))
        let server = try NBDKit(file: s.path("disk.img"), scratch: s)
        let repo = try BackupRepository.initialize(at: s.path("repo"), compression: "none")
        let source = try NBDDiskSource(server.endpoint, connections: connections, depth: 8)
        let disk = try DiskBackup(repository: repo, workers: 2).run(.init(key: "0", name: "d", vdiUUID: "", sourceSnapshotVDI: "", source: source))
        #expect(disk.readBytes == 16 << 20)
        try DiskRestore(repository: repo).toRawFile(disk, path: s.path("out.raw"))
        #expect(try sha256(s.path("out.raw")) == sha256(s.path("disk.img")))
    }

    /// Issue 11 (daemon): a cancelled backup used to read the whole disk before it stopped, so
    /// SIGTERM's grace period was over long before the daemon exited. Once `isStopped` says yes,
    /// the transfer stops at the next chunk with `cancelled`, having read only part of the disk.
    @Test func aStoppedTransferEndsBeforeTheDiskIsRead() throws {
        let s = try Scratch()
        let total = 32 << 20
        try randomImage(at: s.path("disk.img"), bytes: total, seed: 11)
        let server = try NBDKit(file: s.path("disk.img"), scratch: s)
        let repo = try BackupRepository.initialize(at: s.path("repo"), compression: "none")
        let source = try NBDDiskSource(server.endpoint, connections: 2, depth: 4)
        let done = Mutex<Int64>(0)
        do {
            _ = try DiskBackup(repository: repo, workers: 2).run(
                .init(key: "0", name: "d", vdiUUID: "", sourceSnapshotVDI: "", source: source),
                isStopped: { done.withLock { $0 } >= 2 << 20 },
                progress: { p in done.withLock { $0 = max($0, p.bytesDone) } })
            Issue.record("the transfer ran to its end although it was stopped")
        } catch let e as DataError {
            #expect(e.code == .cancelled, "\(e)")
        }
        let read = done.withLock { $0 }
        #expect(read >= 2 << 20)
        #expect(read < Int64(total) / 2, "stopped after 2 MiB, yet \(read) of \(total) bytes were read")
        // The repository holds no version and stays sound.
        #expect(try repo.manifests().isEmpty)
        #expect(try repo.verify().ok)
    }
}

import DiskFormats
import Foundation
import Testing

@testable import HavenData

/// Incrementals from a VHD delta (what `/export_raw_vdi?format=vhd&base=` answers): only the
/// sectors the delta carries are read, and the result restores bit-identically.
@Suite struct VHDDeltaTests {
    /// A source that streams `file` in pieces of `piece` bytes, as a download would.
    func deltaSource(_ file: [UInt8], size: Int64, piece: Int) -> VHDDeltaDiskSource {
        VHDDeltaDiskSource(size: size, label: "test delta") { sink in
            var at = 0
            while at < file.count {
                let n = min(piece, file.count - at)
                try file.withUnsafeBytes { try sink(UnsafeRawBufferPointer(rebasing: $0[at..<(at + n)])) }
                at += n
            }
        }
    }

    /// The writes laid over `image`, and the delta carrying exactly them.
    func applyAndDelta(_ image: String, size: Int64, writes: [(offset: UInt64, bytes: [UInt8])]) throws -> [UInt8] {
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: image))
        for w in writes {
            try h.seek(toOffset: w.offset)
            try h.write(contentsOf: w.bytes)
        }
        try h.close()
        return try VHDDelta.bytes(size: UInt64(size), writes: writes)
    }

    @Test(arguments: [(65_536, 7), (1 << 20, 4096), (4 << 20, 1 << 20)])
    func aDeltaPatchesThePreviousVersion(chunkSize: Int, piece: Int) throws {
        let s = try Scratch()
        let size: Int64 = 24 << 20 + 3 * 65_536
        let image = s.path("disk.img")
        try randomImage(at: image, bytes: Int(size), seed: 5)
        let repo = try BackupRepository.initialize(at: s.path("repo"), chunkSize: chunkSize)
        let full = try DiskBackup(repository: repo).run(.init(key: "0", name: "root", vdiUUID: "v", sourceSnapshotVDI: "s0",
                                                              source: try FileDiskSource(path: image)))
        // Whole 64 KiB blocks, a partial sector run inside a chunk, zeros over data, and the
        // disk's last sector: a delta's sector bitmap marks exactly these.
        var rng = SplitMix64(state: 9)
        func random(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }
        let writes: [(offset: UInt64, bytes: [UInt8])] = [
            (offset: 3 << 20, bytes: random(65_536 * 2)),
            (offset: (9 << 20) + 4096, bytes: random(1536)),
            (offset: 17 << 20, bytes: [UInt8](repeating: 0, count: 1 << 20)),
            (offset: UInt64(size) - 512, bytes: random(512)),
        ]
        let delta = try applyAndDelta(image, size: size, writes: writes)
        let disk = try DiskBackup(repository: repo).run(.init(
            key: "0", name: "root", vdiUUID: "v", sourceSnapshotVDI: "s1", source: deltaSource(delta, size: size, piece: piece), previous: full))
        #expect(disk.readBytes == Int64(writes.reduce(0) { $0 + $1.bytes.count }), "only the delta's sectors are read")
        let m = BackupManifest(kind: .incremental, vmUUID: "u", vmName: "vm", pool: "p", policy: "x", vmRecord: [:], sourceSnapshotUUID: "s",
                               disks: [disk])
        try repo.commit(m)
        try DiskRestore(repository: repo).toRawFile(disk, path: s.path("restored.raw"))
        #expect(try sha256(s.path("restored.raw")) == sha256(image))
        #expect(try repo.verify().ok)
    }

    @Test func aDeltaForAnotherDiskSizeIsRefused() throws {
        let s = try Scratch()
        let image = s.path("disk.img")
        try randomImage(at: image, bytes: 4 << 20, seed: 1)
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let full = try DiskBackup(repository: repo).run(.init(key: "0", name: "r", vdiUUID: "v", sourceSnapshotVDI: "s", source: try FileDiskSource(path: image)))
        let delta = try VHDDelta.bytes(size: 8 << 20, writes: [(offset: 0, bytes: [UInt8](repeating: 1, count: 512))])
        #expect(throws: DataError.self) {
            try DiskBackup(repository: repo).run(.init(key: "0", name: "r", vdiUUID: "v", sourceSnapshotVDI: "s1",
                                                       source: deltaSource(delta, size: 4 << 20, piece: 4096), previous: full))
        }
    }

    @Test func aTruncatedDeltaFailsAndStoresNoVersion() throws {
        let s = try Scratch()
        let image = s.path("disk.img")
        try randomImage(at: image, bytes: 8 << 20, seed: 2)
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let full = try DiskBackup(repository: repo).run(.init(key: "0", name: "r", vdiUUID: "v", sourceSnapshotVDI: "s", source: try FileDiskSource(path: image)))
        let delta = try VHDDelta.bytes(size: 8 << 20, writes: [(offset: 2 << 20, bytes: [UInt8](repeating: 7, count: 1 << 20))])
        let cut = Array(delta.prefix(delta.count - (1 << 20)))
        let error = #expect(throws: DataError.self) {
            try DiskBackup(repository: repo).run(.init(key: "0", name: "r", vdiUUID: "v", sourceSnapshotVDI: "s1",
                                                       source: deltaSource(cut, size: 8 << 20, piece: 65_536), previous: full))
        }
        #expect(error?.message.contains("VHD delta") == true, "\(String(describing: error))")
    }

    @Test func aDeltaSourceNeedsAPreviousVersion() throws {
        let s = try Scratch()
        let repo = try BackupRepository.initialize(at: s.path("repo"))
        let delta = try VHDDelta.bytes(size: 1 << 20, writes: [])
        #expect(throws: DataError.self) {
            try DiskBackup(repository: repo).run(.init(key: "0", name: "r", vdiUUID: "v", sourceSnapshotVDI: "s1",
                                                       source: deltaSource(delta, size: 1 << 20, piece: 512)))
        }
    }
}

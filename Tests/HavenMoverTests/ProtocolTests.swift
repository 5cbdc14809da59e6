import Crypto
import Foundation
import Testing

@testable import HavenMover

/// Round trips through real TLS on loopback: what a client reads or writes is the disk's bytes.
@Suite struct ProtocolTests {
    static let size = 40 * 65536 + 12345

    @Test func identifyAndListDisks() async throws {
        let h = try MoverHarness(name: "abd-lab-1")
        try h.makeDisk("xvdb", size: Self.size)
        try h.emptyDisk("xvdc", size: 65536 * 3)
        try "not a disk".write(to: h.devices.appendingPathComponent("notes.txt"), atomically: true, encoding: .utf8)
        let client = h.client(.read)
        let id = try await client.identify()
        #expect(id.name == "abd-lab-1")
        #expect(id.address == "\(h.host):2811")
        #expect(id.blockSize == 65536)
        let disks = try await client.disks()
        #expect(disks == [MoverDisk(name: "xvdb", size: Int64(Self.size)), MoverDisk(name: "xvdc", size: 65536 * 3)])
    }

    @Test func readAllGivesTheDisksBytes() async throws {
        let h = try MoverHarness()
        let original = try h.makeDisk("xvdb", size: Self.size)
        let collector = BlockCollector(size: Self.size)
        let summary = try await h.client(.read).readBlocks(disk: "xvdb") { collector.add($0) }
        #expect(collector.bytes == original)
        let blocks = Int64((Self.size + 65535) / 65536)
        #expect(collector.indices == Array(0..<blocks))
        #expect(summary.blocks == blocks)
        // Every third block is zeros and travels without data.
        #expect(summary.zeroBlocks == (blocks + 2) / 3)
        #expect(summary.resumes == 0)
    }

    @Test func readBitmapGivesOnlyChangedBlocks() async throws {
        let h = try MoverHarness()
        let original = try h.makeDisk("xvdb", size: Self.size)
        let changed: [Int64] = [1, 2, 7, 8, 9, 23, 40]
        // As xapi's list_changed_blocks gives it: base64, padded beyond the disk.
        var bitmap = ChangedBlocks(blocks: changed).bitmap
        bitmap += [UInt8](repeating: 0, count: 8)
        let blocks = try ChangedBlocks(base64: Data(bitmap).base64EncodedString())
        let collector = BlockCollector(size: Self.size)
        let summary = try await h.client(.read).readBlocks(disk: "xvdb", bitmap: blocks) { collector.add($0) }
        #expect(collector.indices == changed)
        #expect(summary.blocks == Int64(changed.count))
        let got = collector.bytes
        for b in changed {
            let start = Int(b) * 65536
            let end = min(Self.size, start + 65536)
            #expect(Array(got[start..<end]) == Array(original[start..<end]))
        }
    }

    @Test func writeBlocksChangesExactlyThoseBlocks() async throws {
        let h = try MoverHarness()
        let before = try h.makeDisk("xvdb", size: Self.size, seed: 5, zeroEvery: 1000)
        let source = try h.makeDisk("source", size: Self.size, seed: 9)
        let selected: [Int64] = [0, 3, 4, 5, 17, 40]
        let summary = try await h.client(.write).writeBlocks(disk: "xvdb", bitmap: ChangedBlocks(blocks: selected)) { index in
            let start = Int(index) * 65536
            let slice = Array(source[start..<min(Self.size, start + 65536)])
            return slice.allSatisfy { $0 == 0 } ? nil : slice
        }
        #expect(summary.blocks == Int64(selected.count))
        var expected = before
        for b in selected {
            let start = Int(b) * 65536
            let end = min(Self.size, start + 65536)
            expected.replaceSubrange(start..<end, with: source[start..<end])
        }
        #expect(try h.contents("xvdb") == expected)
        #expect(summary.lastAcknowledged == 40)
    }

    @Test func hashesMatchTheBytesAndFindTheChange() async throws {
        let h = try MoverHarness()
        var original = try h.makeDisk("xvdb", size: Self.size)
        let client = h.client(.read)
        let hashes = try await client.hashRanges(disk: "xvdb", blocksPerHash: 4)
        #expect(hashes.count == 11)
        for hash in hashes {
            let start = Int(hash.range.first) * 65536
            let end = min(Self.size, Int(hash.range.end) * 65536)
            #expect(hash.sha256 == Array(SHA256.hash(data: original[start..<end])))
        }
        #expect(hashes.last?.range == BlockRange(first: 40, count: 1))
        // One byte changes in block 13: only run 3 (blocks 12-15) differs.
        original[13 * 65536 + 100] ^= 0xFF
        try Data(original).write(to: h.devices.appendingPathComponent("xvdb"))
        let again = try await client.hashRanges(disk: "xvdb", blocksPerHash: 4)
        let differing = zip(hashes, again).filter { $0.sha256 != $1.sha256 }.map(\.0.range)
        #expect(differing == [BlockRange(first: 12, count: 4)])
    }

    @Test func pushCopiesADiskToAnotherMover() async throws {
        let source = try MoverHarness(name: "abd-source")
        let target = try MoverHarness(name: "abd-target")
        let original = try source.makeDisk("xvdb", size: Self.size)
        try target.makeDisk("xvdc", size: Self.size, seed: 77, zeroEvery: 1000)
        let progress = ProgressLog()
        let summary = try await source.client(.read).push(disk: "xvdb", to: target.peer(disk: "xvdc", .write)) { progress.add($0) }
        #expect(try target.contents("xvdc") == original)
        #expect(summary.blocks == 41)
        #expect(summary.lastAcknowledged == 40)
        #expect(progress.values.last == 40)
    }

    @Test func pullFetchesChangedBlocksFromAnotherMover() async throws {
        let source = try MoverHarness(name: "abd-source")
        let target = try MoverHarness(name: "abd-target")
        let original = try source.makeDisk("xvdb", size: Self.size)
        let stale = try target.makeDisk("xvdc", size: Self.size, seed: 3)
        let changed: [Int64] = [2, 3, 30, 40]
        let summary = try await target.client(.write).pull(disk: "xvdc", bitmap: ChangedBlocks(blocks: changed), from: source.peer(disk: "xvdb", .read))
        var expected = stale
        for b in changed {
            let start = Int(b) * 65536
            let end = min(Self.size, start + 65536)
            expected.replaceSubrange(start..<end, with: original[start..<end])
        }
        #expect(try target.contents("xvdc") == expected)
        #expect(summary.blocks == Int64(changed.count))
        // Then a full pull makes the replica equal to the source.
        _ = try await target.client(.write).pull(disk: "xvdc", from: source.peer(disk: "xvdb", .read))
        #expect(try target.contents("xvdc") == original)
    }

    @Test func aFreshTargetSkipsZeroBlocks() async throws {
        let source = try MoverHarness()
        let target = try MoverHarness()
        let original = try source.makeDisk("xvdb", size: Self.size)
        try target.emptyDisk("xvdb", size: Self.size)
        let summary = try await source.client(.read).push(disk: "xvdb", to: target.peer(disk: "xvdb", .write), targetIsZeroed: true)
        #expect(try target.contents("xvdb") == original)
        #expect(summary.zeroBlocks == 0)
        #expect(summary.blocks == 41 - 14)
    }

    @Test func aReadOnlyDiskIsReadButNotWritten() async throws {
        let h = try MoverHarness()
        let original = try h.makeDisk("xvdc", size: 65536 * 4)
        FileManager.default.createFile(atPath: h.devices.appendingPathComponent(".xvdc.ro").path, contents: nil)
        do {
            _ = try await h.client(.write).writeBlocks(disk: "xvdc") { _ in [UInt8](repeating: 1, count: 65536) }
            Issue.record("a read-only disk was written")
        } catch let e as MoverError {
            #expect(e.code == .forbidden)
        }
        #expect(try h.contents("xvdc") == original)
        let collector = BlockCollector(size: 65536 * 4)
        _ = try await h.client(.read).readBlocks(disk: "xvdc") { collector.add($0) }
        #expect(collector.bytes == original)
        #expect(try await h.client(.read).disks().map(\.name) == ["xvdc"])
    }

    @Test func aServerOnPortZeroSaysWhichPortItGot() async throws {
        let h = try MoverHarness(name: "abd-ephemeral") { $0.port = 0 }
        let port = h.server.port
        #expect(port > 0 && port != 2811)
        let id = try await MoverClient(endpoint: MoverEndpoint(host: h.host, port: port, pin: h.credentials.pin), token: h.token()).identify()
        #expect(id.address == "\(h.host):\(port)")
    }

    @Test func probeReachesAPeer() async throws {
        let a = try MoverHarness(name: "abd-a")
        let b = try MoverHarness(name: "abd-b")
        let id = try await a.client(.read).probe(b.peer(disk: "", .read))
        #expect(id.name == "abd-b")
        // A wrong pin for the peer: the mover says it cannot trust it, and why.
        var wrong = b.peer(disk: "", .read)
        wrong.endpoint.pin = a.credentials.pin
        await #expect(throws: MoverError.self) { try await a.client(.read).probe(wrong) }
        do {
            _ = try await a.client(.read).probe(wrong)
        } catch let e as MoverError {
            #expect(e.code == .peerUnreachable)
            #expect(e.message.contains("pin-mismatch"))
        }
    }
}

final class ProgressLog: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var list: [Int64] = []
    func add(_ v: Int64) {
        lock.lock()
        list.append(v)
        lock.unlock()
    }
    var values: [Int64] {
        lock.lock()
        defer { lock.unlock() }
        return list
    }
}

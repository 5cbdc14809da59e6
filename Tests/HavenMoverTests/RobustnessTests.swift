import Foundation
import Testing

@testable import HavenMover

/// Broken connections, the window, hostile frames.
@Suite struct RobustnessTests {
    static let size = 64 * 65536 + 999

    @Test func aReadResumesAfterADroppedConnectionAndEachBlockArrivesOnce() async throws {
        let h = try MoverHarness()
        let original = try h.makeDisk("xvdb", size: Self.size)
        // Cut in the middle of the stream: ~20 blocks in.
        let proxy = try DroppingProxy(to: (h.host, 2811), cutDownstreamAfter: 20 * 65536)
        let client = MoverClient(endpoint: MoverEndpoint(host: proxy.host, pin: h.credentials.pin), token: h.token(.read))
        let collector = BlockCollector(size: Self.size)
        let summary = try await client.readBlocks(disk: "xvdb") { collector.add($0) }
        #expect(proxy.cuts.load(ordering: .relaxed) == 1)
        #expect(summary.resumes == 1)
        #expect(collector.indices == Array(0..<65))
        #expect(collector.bytes == original)
    }

    @Test func aWriteResumesFromTheLastAcknowledgedBlock() async throws {
        let h = try MoverHarness()
        let source = try h.makeDisk("source", size: Self.size, seed: 4, zeroEvery: 1000)
        try h.emptyDisk("xvdb", size: Self.size)
        // Cut once about 20 blocks went to the server.
        let proxy = try DroppingProxy(to: (h.host, 2811), cutUpstreamAfter: 20 * 65536)
        var options = MoverClient.Options()
        options.window = 4
        let client = MoverClient(endpoint: MoverEndpoint(host: proxy.host, pin: h.credentials.pin), token: h.token(.write), options: options)
        let asked = ProgressLog()
        let summary = try await client.writeBlocks(disk: "xvdb") { index in
            asked.add(index)
            let start = Int(index) * 65536
            return Array(source[start..<min(Self.size, start + 65536)])
        }
        #expect(proxy.cuts.load(ordering: .relaxed) == 1)
        #expect(summary.resumes == 1)
        #expect(try h.contents("xvdb") == source)
        // The second attempt started after the last acknowledged block, not from 0.
        let indices = asked.values
        let restart = zip(indices, indices.dropFirst()).first { $1 <= $0 }
        #expect(restart != nil)
        if let (before, again) = restart { #expect(again > 0 && again <= before) }
    }

    @Test func theServerNeverHasMoreThanTheWindowInFlight() async throws {
        let h = try MoverHarness()
        let original = try h.makeDisk("xvdb", size: Self.size)
        var options = MoverClient.Options()
        options.window = 4
        let collector = BlockCollector(size: Self.size)
        // A slow consumer: without the window the server would run megabytes ahead.
        _ = try await MoverClient(endpoint: h.endpoint, token: h.token(.read), options: options).readBlocks(disk: "xvdb") { b in
            collector.add(b)
            usleep(2000)
        }
        #expect(collector.bytes == original)
        let peak = h.server.statistics.peakInFlight
        #expect(peak == 4)
        // A greedy window is cut to the server's limit.
        options.window = 100_000
        let again = try MoverHarness()
        try again.makeDisk("xvdb", size: 200 * 65536)
        _ = try await MoverClient(endpoint: again.endpoint, token: again.token(.read), options: options).readBlocks(disk: "xvdb") { _ in usleep(500) }
        #expect(again.server.statistics.peakInFlight == MoverProtocol.maxWindow)
    }

    @Test func cancellingATransferBreaksItsConnection() async throws {
        let h = try MoverHarness()
        try h.makeDisk("xvdb", size: Self.size)
        let seen = ProgressLog()
        let reached = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        let task = Task {
            try await h.client(.read).readBlocks(disk: "xvdb") { b in
                seen.add(b.index)
                // The sink holds the third block until the task is cancelled.
                if b.index == 2 {
                    reached.signal()
                    go.wait()
                }
            }
        }
        await Task.detached { reached.wait() }.value
        task.cancel()
        go.signal()
        do {
            _ = try await task.value
            Issue.record("a cancelled read finished")
        } catch let e as MoverError {
            #expect(e.code == .cancelled)
        }
        // Less than a window beyond the block it was cancelled at.
        #expect(seen.values.count < 3 + 16)
    }

    /// A raw TLS connection that speaks bytes of the test's choosing.
    func rawConnection(_ h: MoverHarness) throws -> FrameConnection {
        let channel = try TLSClientContext.shared.connect(host: h.host, port: 2811, pin: h.credentials.pin, source: nil, timeout: 5, ioTimeout: 10)
        return FrameConnection(channel, context: "test")
    }

    func hello(_ c: FrameConnection, _ token: MoverToken) throws {
        try c.send(.hello) { w in
            w.raw(MoverProtocol.magic)
            w.u16(1)
            w.u16(1)
            w.string(token.text)
        }
        _ = try c.expect(.welcome)
    }

    @Test func hostileFramesAreRefusedAndTheMoverGoesOn() async throws {
        let h = try MoverHarness()
        let original = try h.makeDisk("xvdb", size: 65536 * 3)
        // An oversized length, before and after HELLO: an error frame, then the connection ends.
        for authenticated in [false, true] {
            let c = try rawConnection(h)
            if authenticated { try hello(c, h.token()) }
            try c.sendRaw([0xFF, 0xFF, 0xFF, 0xF0, 0x10])
            let f = try c.receive()
            #expect(f.type == .error)
            #expect(c.decodeError(f.payload).code == .badFrame)
            #expect(throws: MoverError.self) { _ = try c.receive() }
            c.close()
        }
        // A frame cut short, then the connection closed.
        let cut = try rawConnection(h)
        try hello(cut, h.token())
        try cut.sendRaw([0x00, 0x00, 0x10, 0x00, FrameType.read.rawValue, 0x00, 0x04])
        cut.close()
        // A command before HELLO, a HELLO without the magic, a READ with a lying bitmap length.
        let early = try rawConnection(h)
        try early.send(.listDisks)
        #expect(throws: MoverError.self) { _ = try early.expect(.diskList) }
        early.close()
        let noMagic = try rawConnection(h)
        try noMagic.send(.hello, Array("HELLO WORLD".utf8))
        #expect(throws: MoverError.self) { _ = try noMagic.expect(.welcome) }
        noMagic.close()
        let lying = try rawConnection(h)
        try hello(lying, h.token())
        try lying.send(.read) { w in
            w.string("xvdb")
            w.i64(0)
            w.i64(3)
            w.u32(4)
            w.u8(1)
            w.u32(0x7FFF_FFFF)
        }
        let reply = try lying.receive()
        #expect(reply.type == .error)
        lying.close()
        // A path in a disk name is not a disk.
        let traversal = try rawConnection(h)
        try hello(traversal, h.token())
        try traversal.send(.read) { w in
            StreamRequest(disk: "../../etc/passwd", range: BlockRange(first: 0, count: 1), window: 1).encode(into: &w)
        }
        #expect(traversal.decodeError(try traversal.receive().payload).code == .noSuchDisk)
        traversal.close()
        // The mover still serves.
        let collector = BlockCollector(size: 65536 * 3)
        _ = try await h.client(.read).readBlocks(disk: "xvdb") { collector.add($0) }
        #expect(collector.bytes == original)
    }

    @Test func rangesOutsideTheDiskAndOutOfOrderBlocksAreRefused() async throws {
        let h = try MoverHarness()
        try h.makeDisk("xvdb", size: 65536 * 3)
        do {
            _ = try await h.client(.read).readBlocks(disk: "xvdb", range: BlockRange(first: 2, count: 5)) { _ in }
            Issue.record("a range beyond the disk was read")
        } catch let e as MoverError {
            #expect(e.code == .outOfRange)
        }
        let c = try rawConnection(h)
        try hello(c, h.token(.write))
        try c.send(.write) { StreamRequest(disk: "xvdb", range: BlockRange(first: 0, count: 3), window: 4).encode(into: &$0) }
        _ = try c.expect(.ready)
        let block = [UInt8](repeating: 7, count: 65536)
        try block.withUnsafeBytes { try c.sendBlock(index: 2, data: $0) }
        try block.withUnsafeBytes { try c.sendBlock(index: 1, data: $0) }
        try c.send(.endWrite)
        var sawError = false
        while let f = try? c.receive() {
            if f.type == .error {
                #expect(c.decodeError(f.payload).code == .outOfRange)
                sawError = true
            }
        }
        #expect(sawError)
        c.close()
    }
}

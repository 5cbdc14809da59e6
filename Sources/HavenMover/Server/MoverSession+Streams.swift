import Crypto
import Foundation

/// READ, WRITE and HASH on the server side.
extension MoverSession {
    func open(_ request: StreamRequest, writable: Bool) throws -> BlockDevice {
        let device = try config.devices.open(request.disk, writable: writable)
        guard request.range.end <= device.blockCount else {
            throw MoverError(.outOfRange, "disk \(request.disk)", "\(request.range) is beyond the disk's \(device.blockCount) blocks")
        }
        return device
    }

    func sendReady(_ window: Int) throws {
        try conn.send(.ready) { $0.u32(UInt32(window)) }
        inStream = true
    }

    func window(_ asked: Int) -> Int { min(max(1, asked), config.maxWindow) }

    func produce(_ device: BlockDevice) -> BlockProducer {
        { index, buffer in
            let n = try device.read(index, into: buffer)
            return UnsafeRawBufferPointer(rebasing: buffer[0..<n]).isAllZero ? nil : n
        }
    }

    func serveRead(_ request: StreamRequest) throws {
        let device = try open(request, writable: false)
        let window = window(request.window)
        try sendReady(window)
        let sent = try BlockStream.send(
            conn, selection: request.selection, window: window, skipZeros: false, produce: produce(device),
            inFlightPeak: { n in self.server.record { $0.peakInFlight = max($0.peakInFlight, n) } })
        try conn.send(.end) { BlockStream.encodeEnd(sent, into: &$0) }
    }

    func serveWrite(_ request: StreamRequest) throws {
        let device = try open(request, writable: true)
        let window = window(request.window)
        try sendReady(window)
        let writer = TrackedWriter(device: device, observer: config.writeObserver)
        let ackEvery = max(1, window / 2)
        var summary = TransferSummary()
        var last = request.range.first - 1
        var unacked = 0
        func ack() throws {
            try writer.flush()
            try conn.send(.ack) { $0.i64(last) }
            summary.lastAcknowledged = last
            unacked = 0
        }
        while true {
            let f = try conn.receive()
            switch f.type {
            case .block:
                guard f.payload.count >= 9 else { throw MoverError(.badFrame, "", "a short block frame") }
                var h = WireReader(Array(f.payload[0..<9]))
                let index = try h.i64()
                let kind = try h.u8()
                guard index > last, request.selects(index) else {
                    throw MoverError(.outOfRange, "disk \(request.disk)", "block \(index) is out of order or outside \(request.range)")
                }
                guard kind == 0 || (kind == 1 && f.payload.count == 9) else { throw MoverError(.badFrame, "", "block \(index): bad kind") }
                if kind == 1 {
                    try writer.write(index, nil)
                    summary.zeroBlocks += 1
                } else {
                    try f.payload.withUnsafeBytes { try writer.write(index, UnsafeRawBufferPointer(rebasing: $0[9...])) }
                    summary.bytes += Int64(f.payload.count - 9)
                }
                summary.blocks += 1
                last = index
                unacked += 1
                if unacked >= ackEvery { try ack() }
            case .endWrite:
                try writer.flush()
                try device.sync()
                if unacked > 0 { try ack() }
                summary.lastAcknowledged = last
                try conn.send(.end) { BlockStream.encodeEnd(summary, into: &$0) }
                return
            default:
                throw MoverError(.badFrame, "", "expected a block or the end of the write, got \(f.type)")
            }
        }
    }

    func serveHash(disk: String, range: BlockRange, blocksPerHash: Int) throws {
        guard (1...4096).contains(blocksPerHash) else { throw MoverError(.invalidArgument, "disk \(disk)", "blocks per hash must be 1...4096") }
        guard range.first >= 0, range.count >= 0 else { throw MoverError(.outOfRange, "disk \(disk)", "a negative range") }
        let device = try open(StreamRequest(disk: disk, range: range, window: 1), writable: false)
        try sendReady(0)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MoverProtocol.blockSize, alignment: 4096)
        defer { buffer.deallocate() }
        var batch = WireWriter(capacity: 32 * MoverProtocol.hashesPerFrame + 16)
        var batchStart: Int64 = range.first
        var inBatch = 0
        func flush() throws {
            guard inBatch > 0 else { return }
            var w = WireWriter(capacity: batch.bytes.count + 16)
            w.i64(batchStart)
            w.u32(UInt32(blocksPerHash))
            w.u32(UInt32(inBatch))
            w.raw(batch.bytes)
            try conn.send(.hashes, w.bytes)
            batch = WireWriter(capacity: 32 * MoverProtocol.hashesPerFrame + 16)
            inBatch = 0
        }
        var start = range.first
        while start < range.end {
            if inBatch == 0 { batchStart = start }
            let count = min(Int64(blocksPerHash), range.end - start)
            var hasher = SHA256Stream()
            for index in start..<(start + count) {
                let n = try device.read(index, into: buffer)
                hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            }
            batch.raw(hasher.finish())
            inBatch += 1
            if inBatch == MoverProtocol.hashesPerFrame { try flush() }
            start += count
        }
        try flush()
        try conn.send(.end) { BlockStream.encodeEnd(TransferSummary(), into: &$0) }
    }
}

/// Writes blocks and tells the observer which, in runs, before each acknowledgement.
final class TrackedWriter {
    let device: BlockDevice
    let observer: (any MoverWriteObserver)?
    private var run: BlockRange?

    init(device: BlockDevice, observer: (any MoverWriteObserver)?) {
        self.device = device
        self.observer = observer
    }

    func write(_ index: Int64, _ bytes: UnsafeRawBufferPointer?) throws {
        try device.write(index, bytes)
        guard observer != nil else { return }
        if let r = run, r.end == index {
            run = BlockRange(first: r.first, count: r.count + 1)
        } else {
            try flush()
            run = BlockRange(first: index, count: 1)
        }
    }

    func flush() throws {
        guard let r = run, let observer else { return }
        run = nil
        try observer.wrote(disk: device.name, blocks: r)
    }
}

/// SHA-256 over several buffers.
struct SHA256Stream {
    private var hasher = Crypto.SHA256()
    mutating func update(_ bytes: UnsafeRawBufferPointer) { hasher.update(bufferPointer: bytes) }
    func finish() -> [UInt8] { Array(hasher.finalize()) }
}

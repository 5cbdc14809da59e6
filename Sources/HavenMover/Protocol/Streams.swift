/// The blocks a request selects: every block of a range, or those of the range whose bit is
/// set in a bitmap rebased at the range's first block.
struct BlockSelection: Sequence {
    let range: BlockRange
    let bitmap: [UInt8]?

    func makeIterator() -> AnyIterator<Int64> {
        var next = range.first
        let end = range.end
        let first = range.first
        let bits = bitmap
        return AnyIterator {
            while next < end {
                let b = next
                next += 1
                guard let bits else { return b }
                let i = b - first
                let byte = Int(i >> 3)
                if byte >= bits.count { next = end; return nil }
                if bits[byte] == 0, i & 7 == 0 {
                    next = b + 8
                    continue
                }
                if bits[byte] & (0x80 >> UInt8(i & 7)) != 0 { return b }
            }
            return nil
        }
    }
}

/// The request every streaming command starts with (READ, WRITE, PUSH, PULL share it).
struct StreamRequest {
    var disk: String
    var range: BlockRange
    var window: Int
    var bitmap: [UInt8]?
    /// The target reads as zeros where nothing is written: zero blocks need not be sent.
    var targetZeroed = false

    func encode(into w: inout WireWriter) {
        w.string(disk)
        w.i64(range.first)
        w.i64(range.count)
        w.u32(UInt32(window))
        w.u8((bitmap == nil ? 0 : 1) | (targetZeroed ? 2 : 0))
        if let bitmap { w.blob(bitmap) }
    }

    static func decode(_ r: inout WireReader) throws -> StreamRequest {
        let disk = try r.string(limit: 64)
        let first = try r.i64()
        let count = try r.i64()
        let window = Int(try r.u32())
        let flags = try r.u8()
        guard first >= 0, count >= 0, count <= Int64.max / 2 - first else { throw MoverError(.outOfRange, "disk \(disk)", "a negative block range") }
        var bitmap: [UInt8]?
        if flags & 1 != 0 {
            bitmap = try r.blob(limit: Int(MoverProtocol.maxBitmapBlocks / 8))
            guard Int64(bitmap!.count) * 8 >= count || count == 0 else {
                throw MoverError(.badFrame, "disk \(disk)", "the bitmap covers \(bitmap!.count * 8) blocks, the range \(count)")
            }
        }
        return StreamRequest(disk: disk, range: BlockRange(first: first, count: count), window: window, bitmap: bitmap, targetZeroed: flags & 2 != 0)
    }

    var selection: BlockSelection { BlockSelection(range: range, bitmap: bitmap) }

    /// Whether the request covers `index`: inside the range, and set in the bitmap if there is one.
    func selects(_ index: Int64) -> Bool {
        guard index >= range.first, index < range.end else { return false }
        guard let bitmap else { return true }
        let i = index - range.first
        let byte = Int(i >> 3)
        return byte < bitmap.count && bitmap[byte] & (0x80 >> UInt8(i & 7)) != 0
    }
}

/// Where a push sends to or a pull fetches from.
struct PeerRequest {
    var host: String
    var port: Int
    var pin: CertificatePin
    var token: String
    var disk: String

    func encode(into w: inout WireWriter) {
        w.string(host)
        w.u16(UInt16(port))
        w.raw(pin.sha256)
        w.string(token)
        w.string(disk)
    }

    static func decode(_ r: inout WireReader) throws -> PeerRequest {
        let host = try r.string(limit: 255)
        let port = Int(try r.u16())
        guard let pin = CertificatePin(sha256: try r.raw(32)) else { throw MoverError(.badFrame, "", "a bad pin") }
        return PeerRequest(host: host, port: port, pin: pin, token: try r.string(limit: 2048), disk: try r.string(limit: 64))
    }
}

/// Produces block `index` into a 64 KiB buffer: its length, or nil when it is all zeros.
typealias BlockProducer = (Int64, UnsafeMutableRawBufferPointer) throws -> Int?
/// Consumes block `index`: its bytes, or nil for a zero block.
typealias BlockConsumer = (Int64, UnsafeRawBufferPointer?) throws -> Void

extension UnsafeRawBufferPointer {
    var isAllZero: Bool {
        guard let base = baseAddress else { return true }
        var i = 0
        while i + 8 <= count {
            if base.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < count {
            if base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
            i += 1
        }
        return true
    }
}

/// The two directions of a block stream over one connection, shared by the server (READ: it
/// sends; WRITE: it receives) and by clients, including a mover that pushes or pulls.
enum BlockStream {
    /// Sends the selected blocks as BLOCK frames, never more than `window` unacknowledged;
    /// ACK frames are read only when the window is full. Returns the counts.
    static func send(
        _ conn: FrameConnection, selection: BlockSelection, window: Int, skipZeros: Bool, produce: BlockProducer,
        inFlightPeak: ((Int) -> Void)? = nil, acked: ((Int64) -> Void)? = nil
    ) throws -> TransferSummary {
        var summary = TransferSummary()
        var inFlight: [Int64] = []
        var head = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MoverProtocol.blockSize, alignment: 4096)
        defer { buffer.deallocate() }
        for index in selection {
            let length = try produce(index, buffer)
            if length == nil, skipZeros { continue }
            while inFlight.count - head >= window {
                let f = try conn.receive()
                switch f.type {
                case .ack:
                    var r = WireReader(f.payload)
                    let upTo = try r.i64()
                    while head < inFlight.count, inFlight[head] <= upTo { head += 1 }
                    summary.lastAcknowledged = max(summary.lastAcknowledged, upTo)
                    acked?(upTo)
                    if head > 1024 {
                        inFlight.removeFirst(head)
                        head = 0
                    }
                case .error: throw conn.decodeError(f.payload)
                default: throw MoverError(.badFrame, conn.context, "expected ack, got \(f.type)")
                }
            }
            if let length {
                try conn.sendBlock(index: index, data: UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
                summary.bytes += Int64(length)
            } else {
                try conn.sendBlock(index: index, data: nil)
                summary.zeroBlocks += 1
            }
            summary.blocks += 1
            inFlight.append(index)
            inFlightPeak?(inFlight.count - head)
        }
        return summary
    }

    /// Receives BLOCK frames until END, checking each lies in the range and comes in order;
    /// acknowledges every `window / 2` blocks after `consume` returned (and `beforeAck` ran).
    static func receive(
        _ conn: FrameConnection, range: BlockRange, window: Int, consume: BlockConsumer, beforeAck: () throws -> Void = {},
        acked: ((Int64, TransferSummary) throws -> Void)? = nil
    ) throws -> TransferSummary {
        var summary = TransferSummary()
        let ackEvery = max(1, window / 2)
        var sinceAck = 0
        var last: Int64 = range.first - 1
        func ack() throws {
            try beforeAck()
            try conn.send(.ack) { $0.i64(last) }
            summary.lastAcknowledged = last
            try acked?(last, summary)
            sinceAck = 0
        }
        while true {
            let f = try conn.receive()
            switch f.type {
            case .block:
                guard f.payload.count >= 9 else { throw MoverError(.badFrame, conn.context, "a short block frame") }
                var r = WireReader(Array(f.payload[0..<9]))
                let index = try r.i64()
                let kind = try r.u8()
                guard index > last, index < range.end else {
                    throw MoverError(.outOfRange, conn.context, "block \(index) is out of order or outside \(range)")
                }
                let dataLength = f.payload.count - 9
                guard dataLength <= MoverProtocol.blockSize, kind == 0 || (kind == 1 && dataLength == 0) else {
                    throw MoverError(.badFrame, conn.context, "block \(index) has a bad kind or size")
                }
                if kind == 1 {
                    try consume(index, nil)
                    summary.zeroBlocks += 1
                } else {
                    try f.payload.withUnsafeBytes { try consume(index, UnsafeRawBufferPointer(rebasing: $0[9...])) }
                    summary.bytes += Int64(dataLength)
                }
                summary.blocks += 1
                last = index
                sinceAck += 1
                if sinceAck >= ackEvery { try ack() }
            case .end:
                if sinceAck > 0 { try ack() }
                return summary
            case .error:
                throw conn.decodeError(f.payload)
            default:
                throw MoverError(.badFrame, conn.context, "expected a block, got \(f.type)")
            }
        }
    }

    static func encodeEnd(_ s: TransferSummary, into w: inout WireWriter) {
        w.i64(s.blocks)
        w.i64(s.zeroBlocks)
        w.i64(s.bytes)
        w.i64(s.lastAcknowledged)
    }

    static func decodeEnd(_ r: inout WireReader) throws -> TransferSummary {
        var s = TransferSummary()
        s.blocks = try r.i64()
        s.zeroBlocks = try r.i64()
        s.bytes = try r.i64()
        s.lastAcknowledged = try r.i64()
        return s
    }
}

/// Length-prefixed frames over a TLS channel: `u32 length | u8 type | payload`, big-endian,
/// length counting the type and payload. Frames over `MoverProtocol.maxFrame`, of an unknown
/// type, or cut short are errors; the connection is useless after one.
final class FrameConnection: @unchecked Sendable {
    // @unchecked: used by one thread at a time (the session or client that owns it); `abort()`
    // is the exception, and only touches the channel's descriptor.
    let channel: TLSChannel
    let context: String
    private var buffer = [UInt8](repeating: 0, count: 256 * 1024)
    private var start = 0
    private var end = 0

    init(_ channel: TLSChannel, context: String) {
        self.channel = channel
        self.context = context
    }

    func close() { channel.close() }
    func abort() { channel.abort() }

    // MARK: writing

    func send(_ type: FrameType, _ payload: [UInt8] = []) throws {
        var frame = WireWriter(capacity: payload.count + 5)
        frame.u32(UInt32(payload.count + 1))
        frame.u8(type.rawValue)
        frame.raw(payload)
        try sendRaw(frame.bytes)
    }

    func send(_ type: FrameType, _ build: (inout WireWriter) -> Void) throws {
        var w = WireWriter()
        build(&w)
        try send(type, w.bytes)
    }

    /// A BLOCK frame without copying the data twice: header and data in one buffer.
    func sendBlock(index: Int64, data: UnsafeRawBufferPointer?) throws {
        var frame = WireWriter(capacity: (data?.count ?? 0) + 14)
        frame.u32(UInt32(1 + 8 + 1 + (data?.count ?? 0)))
        frame.u8(FrameType.block.rawValue)
        frame.i64(index)
        frame.u8(data == nil ? 1 : 0)
        if let data { frame.bytes.append(contentsOf: data) }
        try sendRaw(frame.bytes)
    }

    func sendRaw(_ bytes: [UInt8]) throws {
        let ok = bytes.withUnsafeBytes { channel.write($0) }
        guard ok else { throw MoverError(.connection, context, "the connection broke while sending") }
    }

    func sendError(_ error: MoverError) {
        try? send(.error) { w in
            w.u16(error.code.wire)
            w.string(error.message)
        }
    }

    // MARK: reading

    /// The next frame; throws `connection` at end of stream, `badFrame` for a hostile one.
    func receive() throws -> Frame {
        let header = Array(try readExactly(4))
        let length = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
        guard length >= 1 else { throw MoverError(.badFrame, context, "an empty frame") }
        guard length <= MoverProtocol.maxFrame else {
            throw MoverError(.badFrame, context, "a frame of \(length) bytes exceeds the limit of \(MoverProtocol.maxFrame)")
        }
        let code = try readExactly(1).first!
        guard let type = FrameType(rawValue: code) else { throw MoverError(.badFrame, context, "unknown frame type \(code)") }
        // One copy of the payload, out of the read buffer.
        return Frame(type: type, payload: Array(try readExactly(length - 1)))
    }

    /// The next frame, which must be `type` (an ERROR frame from the peer is thrown as its error).
    func expect(_ type: FrameType) throws -> WireReader {
        let f = try receive()
        if f.type == type { return WireReader(f.payload) }
        if f.type == .error { throw decodeError(f.payload) }
        throw MoverError(.badFrame, context, "expected \(type), got \(f.type)")
    }

    func decodeError(_ payload: [UInt8]) -> MoverError {
        var r = WireReader(payload)
        guard let code = try? r.u16(), let message = try? r.string() else { return MoverError(.badFrame, context, "a malformed error frame") }
        return MoverError(.fromWire(code), context, message)
    }

    private func readExactly(_ n: Int) throws -> ArraySlice<UInt8> {
        if end - start < n {
            if start > 0 {
                // Move what is left to the front; grow only for frames larger than the buffer.
                let pending = end - start
                if pending > 0 { buffer.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: $0.baseAddress! + start, byteCount: pending) } }
                start = 0
                end = pending
            }
            if buffer.count < n { buffer += [UInt8](repeating: 0, count: n - buffer.count) }
            while end < n {
                let got = buffer.withUnsafeMutableBytes { channel.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[end...])) }
                guard got > 0 else {
                    let cut = end > 0 ? " in the middle of a frame" : ""
                    throw MoverError(.connection, context, "the connection closed\(cut)")
                }
                end += got
            }
        }
        defer { start += n }
        return buffer[start..<(start + n)]
    }
}

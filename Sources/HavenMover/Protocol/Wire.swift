/// Big-endian encoding of frame payloads.
struct WireWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    mutating func raw(_ v: some Collection<UInt8>) { bytes.append(contentsOf: v) }

    /// u16 length, then UTF-8.
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8.prefix(Int(UInt16.max)))
        u16(UInt16(utf8.count))
        raw(utf8)
    }

    /// u32 length, then the bytes.
    mutating func blob(_ b: [UInt8]) {
        u32(UInt32(b.count))
        raw(b)
    }
}

/// Bounds-checked decoding: every read past the end is a `badFrame` error, never a crash.
struct WireReader {
    let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }

    private mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= remaining else { throw MoverError(.badFrame, "", "a frame ends early") }
        defer { offset += n }
        return bytes[offset..<(offset + n)]
    }

    private mutating func integer<T: FixedWidthInteger>(_: T.Type) throws -> T {
        var v: T = 0
        for b in try take(MemoryLayout<T>.size) { v = (v << 8) | T(b) }
        return v
    }

    mutating func u8() throws -> UInt8 { try integer(UInt8.self) }
    mutating func u16() throws -> UInt16 { try integer(UInt16.self) }
    mutating func u32() throws -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws -> UInt64 { try integer(UInt64.self) }
    mutating func i64() throws -> Int64 { Int64(bitPattern: try u64()) }
    mutating func raw(_ n: Int) throws -> [UInt8] { Array(try take(n)) }
    mutating func rest() -> [UInt8] {
        defer { offset = bytes.count }
        return Array(bytes[offset...])
    }

    mutating func string(limit: Int = 4096) throws -> String {
        let n = Int(try u16())
        guard n <= limit else { throw MoverError(.badFrame, "", "a string of \(n) bytes exceeds \(limit)") }
        return String(decoding: try take(n), as: UTF8.self)
    }

    mutating func blob(limit: Int) throws -> [UInt8] {
        let n = Int(try u32())
        guard n <= limit else { throw MoverError(.badFrame, "", "a field of \(n) bytes exceeds \(limit)") }
        return Array(try take(n))
    }

    /// Fails when bytes are left over: a frame means exactly what it says.
    func finish() throws {
        guard remaining == 0 else { throw MoverError(.badFrame, "", "\(remaining) unexpected bytes at the end of a frame") }
    }
}

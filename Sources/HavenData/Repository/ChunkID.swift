/// The name of a chunk: SHA-256 of its plaintext (HMAC-SHA-256 with the repository's id key when
/// encrypted, so names say nothing about content). All zeros is reserved for "zero-filled".
public struct ChunkID: Hashable, Sendable, Comparable, CustomStringConvertible {
    // Four words, not [UInt8]: a repository index holds hundreds of thousands of ids, and an
    // inline value hashes and compares without a heap allocation each. Word 0 holds bytes 0–7
    // big-endian, so comparing words compares the bytes in order.
    private var w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 32)
        self = bytes.withUnsafeBytes { ChunkID(raw: UnsafeRawBufferPointer(rebasing: $0[0..<32])) }
    }

    /// Reads the 32 bytes at the start of `raw` (no copy into an array).
    public init(raw: UnsafeRawBufferPointer) {
        precondition(raw.count >= 32)
        w0 = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        w1 = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        w2 = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        w3 = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }

    /// The 32 bytes, in order.
    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        out.withUnsafeMutableBytes { b in
            b.storeBytes(of: w0.bigEndian, toByteOffset: 0, as: UInt64.self)
            b.storeBytes(of: w1.bigEndian, toByteOffset: 8, as: UInt64.self)
            b.storeBytes(of: w2.bigEndian, toByteOffset: 16, as: UInt64.self)
            b.storeBytes(of: w3.bigEndian, toByteOffset: 24, as: UInt64.self)
        }
        return out
    }

    /// Writes the 32 bytes at the start of `raw`.
    func store(into raw: UnsafeMutableRawBufferPointer) {
        raw.storeBytes(of: w0.bigEndian, toByteOffset: 0, as: UInt64.self)
        raw.storeBytes(of: w1.bigEndian, toByteOffset: 8, as: UInt64.self)
        raw.storeBytes(of: w2.bigEndian, toByteOffset: 16, as: UInt64.self)
        raw.storeBytes(of: w3.bigEndian, toByteOffset: 24, as: UInt64.self)
    }

    /// The first 8 bytes as a number: ids sort by it first (the chunk index's fences).
    var prefix: UInt64 { w0 }

    public static let zero = ChunkID(bytes: [UInt8](repeating: 0, count: 32))
    public var isZero: Bool { w0 | w1 | w2 | w3 == 0 }

    // SHA-256 output is uniform: one word is as good a hash as all four.
    public func hash(into hasher: inout Hasher) { hasher.combine(w0) }

    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8](repeating: 0, count: 64)
        for (i, b) in self.bytes.enumerated() {
            out[2 * i] = digits[Int(b >> 4)]
            out[2 * i + 1] = digits[Int(b & 15)]
        }
        return String(decoding: out, as: UTF8.self)
    }

    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 64 else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            case 65...70: c - 55
            default: nil
            }
        }
        for i in 0..<32 {
            guard let hi = nibble(utf8[2 * i]), let lo = nibble(utf8[2 * i + 1]) else { return nil }
            out[i] = hi << 4 | lo
        }
        self.init(bytes: out)
    }

    public var description: String { hex }
    public static func < (a: ChunkID, b: ChunkID) -> Bool { (a.w0, a.w1, a.w2, a.w3) < (b.w0, b.w1, b.w2, b.w3) }
}

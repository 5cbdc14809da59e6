/// Big-endian reads and writes into byte arrays (VHD is big-endian throughout).
extension Array where Element == UInt8 {
    mutating func putBE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        var v = value.bigEndian
        Swift.withUnsafeBytes(of: &v) { src in
            for i in 0..<MemoryLayout<T>.size { self[offset + i] = src[i] }
        }
    }

    func getBE<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v = v << 8 | T(self[offset + i]) }
        return v
    }

    mutating func putASCII(_ s: String, at offset: Int) {
        for (i, b) in s.utf8.enumerated() { self[offset + i] = b }
    }
}

extension UnsafeRawBufferPointer {
    /// Whether every byte is zero, eight at a time.
    public var isAllZero: Bool {
        guard let base = baseAddress else { return true }
        var i = 0
        let n = count
        while i + 8 <= n {
            if base.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < n {
            if base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
            i += 1
        }
        return true
    }
}

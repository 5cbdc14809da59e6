/// ustar, the tar flavour XVA uses: 512-byte headers, data padded to 512, two zero blocks at the end.
public enum Tar {
    public struct FormatError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { "tar: \(message)" }
    }

    public static func header(name: String, size: Int, mtime: Int = 0) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, _ at: Int, _ width: Int) {
            for (i, b) in s.utf8.prefix(width).enumerated() { h[at + i] = b }
        }
        func octal(_ v: Int, _ at: Int, _ width: Int) {
            let s = String(v, radix: 8)
            put(String(repeating: "0", count: max(0, width - 1 - s.count)) + s, at, width - 1)
        }
        put(name, 0, 100)
        octal(0o644, 100, 8)
        octal(0, 108, 8)
        octal(0, 116, 8)
        octal(size, 124, 12)
        octal(mtime, 136, 12)
        for i in 148..<156 { h[i] = 0x20 }
        h[156] = UInt8(ascii: "0")
        put("ustar", 257, 6)
        put("00", 263, 2)
        let sum = h.reduce(0) { $0 + Int($1) }
        let s = String(sum, radix: 8)
        put(String(repeating: "0", count: 6 - s.count) + s, 148, 6)
        h[154] = 0
        h[155] = 0x20
        return h
    }

    public static func padding(for size: Int) -> Int { (512 - size % 512) % 512 }
    public static let end = [UInt8](repeating: 0, count: 1024)

    /// One member header read from a stream.
    public struct Member: Sendable {
        public var name: String
        public var size: Int
    }

    public static func parseHeader(_ h: [UInt8]) throws -> Member? {
        if h.allSatisfy({ $0 == 0 }) { return nil }
        let stored = h.enumerated().reduce(0) { $0 + (148..<156 ~= $1.offset ? 0x20 : Int($1.element)) }
        let field = String(decoding: h[148..<156].prefix { $0 != 0 && $0 != 0x20 }, as: UTF8.self)
        guard let sum = Int(field, radix: 8), sum == stored else { throw FormatError(message: "header checksum mismatch") }
        let name = String(decoding: h[0..<100].prefix { $0 != 0 }, as: UTF8.self)
        let prefix = String(decoding: h[345..<500].prefix { $0 != 0 }, as: UTF8.self)
        let sizeText = String(decoding: h[124..<136].prefix { $0 != 0 && $0 != 0x20 }, as: UTF8.self)
        guard let size = Int(sizeText, radix: 8) else { throw FormatError(message: "bad size field") }
        return Member(name: prefix.isEmpty ? name : prefix + "/" + name, size: size)
    }
}

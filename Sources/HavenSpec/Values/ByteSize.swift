import Foundation

/// A number of bytes written like `128Mi`, `4Gi`, `1.5Gi`, `500M` or `65536`.
/// Binary suffixes (Ki, Mi, Gi, Ti, Pi) are powers of 1024, decimal ones (k/K, M, G, T, P) of 1000.
public struct ByteSize: Hashable, Sendable, Comparable, Codable, CustomStringConvertible {
    public var bytes: UInt64

    public init(bytes: UInt64) { self.bytes = bytes }

    static let suffixes: [(String, UInt64)] = [
        ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40), ("Pi", 1 << 50),
        ("k", 1_000), ("K", 1_000), ("M", 1_000_000), ("G", 1_000_000_000),
        ("T", 1_000_000_000_000), ("P", 1_000_000_000_000_000), ("B", 1),
    ]

    public static func parse(_ text: String) -> Result<ByteSize, ValueError> {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let numberPart = trimmed.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
        let suffix = String(trimmed.dropFirst(numberPart.count))
        guard !numberPart.isEmpty else {
            return .failure(ValueError("'\(trimmed)' is not a size (write e.g. 128Mi, 4Gi or a number of bytes)"))
        }
        var multiplier: UInt64 = 1
        if !suffix.isEmpty {
            guard let m = suffixes.first(where: { $0.0 == suffix })?.1 else {
                return .failure(ValueError("'\(suffix)' is not a size unit (use Ki, Mi, Gi, Ti or k, M, G, T)"))
            }
            multiplier = m
        }
        if numberPart.contains(".") {
            guard let d = Double(numberPart), d.isFinite else {
                return .failure(ValueError("'\(numberPart)' is not a number"))
            }
            let value = d * Double(multiplier)
            guard value < 1.8e19 else { return .failure(ValueError("size is too large")) }
            guard value == value.rounded() else {
                return .failure(ValueError("'\(trimmed)' is not a whole number of bytes"))
            }
            return .success(ByteSize(bytes: UInt64(value)))
        }
        guard let n = UInt64(numberPart) else { return .failure(ValueError("size is too large")) }
        let (product, overflow) = n.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return .failure(ValueError("size is too large")) }
        return .success(ByteSize(bytes: product))
    }

    /// Canonical text: the largest binary unit that divides exactly, else bytes.
    public var description: String {
        for (suffix, m) in Self.suffixes[0..<5].reversed() where bytes >= m && bytes % m == 0 {
            return "\(bytes / m)\(suffix)"
        }
        return "\(bytes)"
    }

    public static func < (lhs: ByteSize, rhs: ByteSize) -> Bool { lhs.bytes < rhs.bytes }

    public static func kibibytes(_ n: UInt64) -> ByteSize { ByteSize(bytes: n << 10) }
    public static func mebibytes(_ n: UInt64) -> ByteSize { ByteSize(bytes: n << 20) }
    public static func gibibytes(_ n: UInt64) -> ByteSize { ByteSize(bytes: n << 30) }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let n = try? c.decode(UInt64.self) {
            self.bytes = n
            return
        }
        switch Self.parse(try c.decode(String.self)) {
        case .success(let s): self = s
        case .failure(let e):
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: e.message))
        }
    }
}

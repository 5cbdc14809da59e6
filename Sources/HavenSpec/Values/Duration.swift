import Foundation

/// A span of time written like `90s`, `30m`, `24h`, `7d`, `2w` or `1h30m`.
public struct SpecDuration: Hashable, Sendable, Comparable, Codable, CustomStringConvertible {
    public var seconds: Int64

    public init(seconds: Int64) { self.seconds = seconds }

    static let units: [(suffix: Character, seconds: Int64)] = [
        ("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1),
    ]

    /// Parses the text; the error says what is wrong in words a user can act on.
    public static func parse(_ text: String) -> Result<SpecDuration, ValueError> {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { return .failure(ValueError("empty duration")) }
        var total: Int64 = 0
        var digits = ""
        var seenUnits: Set<Character> = []
        for ch in trimmed {
            if ch.isASCII, ch.isNumber {
                digits.append(ch)
                continue
            }
            guard let unit = units.first(where: { $0.suffix == ch }) else {
                return .failure(ValueError("'\(ch)' is not a duration unit (use s, m, h, d or w, e.g. 90s, 30m, 24h, 7d)"))
            }
            guard let n = Int64(digits) else {
                return .failure(ValueError("a number must come before '\(ch)'"))
            }
            guard seenUnits.insert(ch).inserted else {
                return .failure(ValueError("unit '\(ch)' appears twice"))
            }
            let (product, o1) = n.multipliedReportingOverflow(by: unit.seconds)
            let (sum, o2) = total.addingReportingOverflow(product)
            guard !o1, !o2 else { return .failure(ValueError("duration is too large")) }
            total = sum
            digits = ""
        }
        guard digits.isEmpty else {
            return .failure(ValueError("'\(trimmed)' has no unit (write e.g. \(digits)s, \(digits)m or \(digits)h)"))
        }
        return .success(SpecDuration(seconds: total))
    }

    /// Canonical text: the largest units first, e.g. 5400 s -> `1h30m`.
    public var description: String {
        if seconds == 0 { return "0s" }
        var rest = seconds
        var out = ""
        for unit in Self.units where rest >= unit.seconds {
            // Weeks only when exact, so `14d` stays readable as `2w` but `10d` is not `1w3d`.
            if unit.suffix == "w", rest % unit.seconds != 0 { continue }
            out += "\(rest / unit.seconds)\(unit.suffix)"
            rest %= unit.seconds
        }
        return out
    }

    public static func < (lhs: SpecDuration, rhs: SpecDuration) -> Bool { lhs.seconds < rhs.seconds }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        switch Self.parse(text) {
        case .success(let d): self = d
        case .failure(let e):
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: e.message))
        }
    }
}

/// Why a scalar could not be read as the value a field wants.
public struct ValueError: Error, Sendable, Hashable {
    public var message: String
    public init(_ message: String) { self.message = message }
}

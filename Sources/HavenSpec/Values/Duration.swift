import Foundation

/// A span of time written like `90s`, `30m`, `24h`, `7d`, `2w` or `1h30m`.
public struct SpecDuration: Hashable, Sendable, Comparable, TextValue {
    public var seconds: Int64

    public init(seconds: Int64) { self.seconds = seconds }

    static let units: [(suffix: Character, seconds: Int64)] = [
        ("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1),
    ]

    /// Parses the text; the error says what is wrong in words a user can act on.
    public static func parse(_ text: String) -> Result<SpecDuration, ValueError> {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { return .failure(ValueError("empty duration")) }
        if trimmed.contains(where: \.isWhitespace) {
            return .failure(ValueError("write durations without spaces and with a one-letter unit, e.g. 90s, 30m, 24h, 7d or 1h30m"))
        }
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

    /// Canonical text as people write schedules: whole days beyond one day (`2d`, `7d`), else
    /// hours, minutes and seconds (`24h`, `1h30m`, `90s` reads as `1m30s`).
    public var description: String {
        if seconds == 0 { return "0s" }
        if seconds > 86_400, seconds % 86_400 == 0 { return "\(seconds / 86_400)d" }
        var rest = seconds
        var out = ""
        for (suffix, size) in [("h", Int64(3_600)), ("m", 60), ("s", 1)] where rest >= size {
            out += "\(rest / size)\(suffix)"
            rest %= size
        }
        return out
    }

    public static func < (lhs: SpecDuration, rhs: SpecDuration) -> Bool { lhs.seconds < rhs.seconds }

}

/// Why a scalar could not be read as the value a field wants.
public struct ValueError: Error, Sendable, Hashable {
    public var message: String
    public init(_ message: String) { self.message = message }
}

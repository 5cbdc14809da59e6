import Foundation
import HavenSpec

/// A point in time on the command line: ISO 8601 (`2026-05-01T12:00:00Z`), a day (`2026-05-01`,
/// midnight UTC), or an age (`24h`, `7d`: that long before now).
func parseTimeArgument(_ text: String, option: String) throws -> Date {
    let iso = ISO8601DateFormatter()
    if let d = iso.date(from: text) { return d }
    let day = DateFormatter()
    day.locale = Locale(identifier: "en_US_POSIX")
    day.timeZone = TimeZone(identifier: "UTC")
    for format in ["yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd HH:mm", "yyyy-MM-dd"] {
        day.dateFormat = format
        if let d = day.date(from: text) { return d }
    }
    if case .success(let age) = SpecDuration.parse(text) { return currentTime().addingTimeInterval(-Double(age.seconds)) }
    throw CLIError("\(option): '\(text)' is not a time (2026-05-01T12:00:00Z, 2026-05-01, or an age such as 24h or 7d)", code: .usage)
}

let utcMinuteFormatter: DateFormatter = {
    let f = DateFormatter()
    f.locale = Locale(identifier: "en_US_POSIX")
    f.dateFormat = "yyyy-MM-dd HH:mm:ss"
    f.timeZone = TimeZone(identifier: "UTC")
    return f
}()

func jsonText(_ object: Any) throws -> String {
    String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]), as: UTF8.self)
}

func jsonText<T: Encodable>(encodable value: T) throws -> String {
    let e = JSONEncoder()
    e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    e.dateEncodingStrategy = .iso8601
    return String(decoding: try e.encode(value), as: UTF8.self)
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s.padding(toLength: n, withPad: " ", startingAt: 0) }

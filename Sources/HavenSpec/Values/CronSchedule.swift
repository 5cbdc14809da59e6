import Foundation

/// A standard five-field cron expression (`minute hour day-of-month month day-of-week`), with
/// lists, ranges, steps, month and weekday names, and the `@hourly`-style macros.
///
/// Day-of-month and day-of-week follow Vixie cron: when both are restricted, a day matches if
/// either does.
public struct CronSchedule: Hashable, Sendable, TextValue {
    public let expression: String
    let minutes: UInt64
    let hours: UInt64
    let daysOfMonth: UInt64
    let months: UInt64
    let daysOfWeek: UInt64
    let daysOfMonthRestricted: Bool
    let daysOfWeekRestricted: Bool

    static let macros: [String: String] = [
        "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
        "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
    ]
    static let monthNames = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    static let dayNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

    struct FieldDef {
        let name: String
        let range: ClosedRange<Int>
        let names: [String]
        let nameBase: Int
    }

    static let fields: [FieldDef] = [
        FieldDef(name: "minute", range: 0...59, names: [], nameBase: 0),
        FieldDef(name: "hour", range: 0...23, names: [], nameBase: 0),
        FieldDef(name: "day of month", range: 1...31, names: [], nameBase: 1),
        FieldDef(name: "month", range: 1...12, names: monthNames, nameBase: 1),
        // 7 is accepted as Sunday, as in most crons.
        FieldDef(name: "day of week", range: 0...7, names: dayNames, nameBase: 0),
    ]

    public static func parse(_ text: String) -> Result<CronSchedule, ValueError> {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        var source = trimmed
        if trimmed.hasPrefix("@") {
            guard let expanded = macros[trimmed.lowercased()] else {
                let known = macros.keys.sorted().joined(separator: ", ")
                return .failure(ValueError("unknown cron macro '\(trimmed)' (known: \(known))"))
            }
            source = expanded
        }
        let parts = source.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard parts.count == 5 else {
            return .failure(
                ValueError(
                    "cron expression '\(trimmed)' has \(parts.count) field\(parts.count == 1 ? "" : "s"); "
                        + "expected 5 (minute hour day-of-month month day-of-week)"))
        }
        var sets: [UInt64] = []
        for (part, def) in zip(parts, fields) {
            switch parseField(part, def) {
            case .success(let bits): sets.append(bits)
            case .failure(let e): return .failure(e)
            }
        }
        var dow = sets[4]
        if dow & (1 << 7) != 0 { dow = (dow | 1) & ~(1 << 7) }
        // With the day of week unrestricted, only the days of month choose the day: when none of
        // them exists in any chosen month (`31 2`, `30 2`, `31 4,6,9,11`) the schedule never fires.
        // (February counts 29 days: a leap day fires, every four years.)
        if parts[2] != "*" && parts[4] == "*" {
            let lengths = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
            let fires = (1...12).contains { m in
                sets[3] & (1 << UInt64(m)) != 0 && (1...lengths[m - 1]).contains { sets[2] & (1 << UInt64($0)) != 0 }
            }
            if !fires {
                return .failure(ValueError("'\(trimmed)' never fires: none of its days of month occurs in its months"))
            }
        }
        return .success(
            CronSchedule(
                expression: trimmed, minutes: sets[0], hours: sets[1], daysOfMonth: sets[2], months: sets[3],
                daysOfWeek: dow, daysOfMonthRestricted: parts[2] != "*", daysOfWeekRestricted: parts[4] != "*"))
    }

    private static func parseField(_ text: String, _ def: FieldDef) -> Result<UInt64, ValueError> {
        var bits: UInt64 = 0
        for item in text.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
            guard !item.isEmpty else { return .failure(ValueError("empty list item in \(def.name) field '\(text)'")) }
            var rangePart = item
            var step = 1
            if let slash = item.firstIndex(of: "/") {
                rangePart = String(item[..<slash])
                let stepText = item[item.index(after: slash)...]
                guard let s = Int(stepText), s > 0 else {
                    return .failure(ValueError("step '\(stepText)' in \(def.name) field must be a positive number"))
                }
                step = s
            }
            var low = def.range.lowerBound
            var high = def.range.upperBound
            if def.name == "day of week", rangePart == "*" { high = 6 }
            if rangePart != "*" {
                let ends = rangePart.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
                guard ends.count <= 2 else { return .failure(ValueError("'\(item)' is not a valid \(def.name)")) }
                guard let a = value(ends[0], def) else {
                    return .failure(
                        ValueError(
                            "'\(ends[0])' is not a valid \(def.name) (\(def.range.lowerBound)-\(def.range.upperBound))"))
                }
                low = a
                high = a
                if ends.count == 2 {
                    guard let b = value(ends[1], def) else {
                        return .failure(
                            ValueError(
                                "'\(ends[1])' is not a valid \(def.name) (\(def.range.lowerBound)-\(def.range.upperBound))"
                            ))
                    }
                    guard b >= a else {
                        return .failure(ValueError("range '\(rangePart)' in \(def.name) field runs backwards"))
                    }
                    high = b
                } else if item.contains("/") {
                    high = def.range.upperBound
                }
            }
            var v = low
            while v <= high {
                bits |= 1 << UInt64(v)
                v += step
            }
        }
        return .success(bits)
    }

    private static func value(_ text: String, _ def: FieldDef) -> Int? {
        if let n = Int(text), def.range.contains(n) { return n }
        if let i = def.names.firstIndex(of: text.lowercased()) { return i + def.nameBase }
        return nil
    }

    public var description: String { expression }

    /// Whether the schedule fires at the given wall-clock minute.
    public func matches(minute: Int, hour: Int, day: Int, month: Int, weekday: Int) -> Bool {
        guard minutes & (1 << UInt64(minute)) != 0, hours & (1 << UInt64(hour)) != 0,
            months & (1 << UInt64(month)) != 0
        else { return false }
        return dayMatches(day: day, weekday: weekday)
    }

    func dayMatches(day: Int, weekday: Int) -> Bool {
        let domOK = daysOfMonth & (1 << UInt64(day)) != 0
        let dowOK = daysOfWeek & (1 << UInt64(weekday)) != 0
        if daysOfMonthRestricted && daysOfWeekRestricted { return domOK || dowOK }
        return domOK && dowOK
    }

    /// The latest firing time at or before `date`, in `timeZone`; nil when none within ~5 years.
    public func latestFire(notAfter date: Date, in timeZone: TimeZone) -> Date? {
        search(from: date, in: timeZone, forward: false)
    }

    /// The first firing time strictly after `date`, in `timeZone`; nil when none within ~5 years.
    public func nextFire(after date: Date, in timeZone: TimeZone) -> Date? {
        search(from: date.addingTimeInterval(60), in: timeZone, forward: true)
    }

    private func search(from date: Date, in timeZone: TimeZone, forward: Bool) -> Date? {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let start = calendar.dateComponents([.year, .month, .day, .hour, .minute], from: date)
        guard var day = calendar.date(from: DateComponents(year: start.year, month: start.month, day: start.day))
        else { return nil }
        let hourOrder = forward ? Array(0...23) : Array((0...23).reversed())
        let minuteOrder = forward ? Array(0...59) : Array((0...59).reversed())
        for offset in 0..<(366 * 5) {
            let c = calendar.dateComponents([.year, .month, .day, .weekday], from: day)
            let weekday = (c.weekday ?? 1) - 1
            if months & (1 << UInt64(c.month ?? 1)) != 0, dayMatches(day: c.day ?? 1, weekday: weekday) {
                for h in hourOrder where hours & (1 << UInt64(h)) != 0 {
                    if offset == 0 {
                        if forward, h < start.hour ?? 0 { continue }
                        if !forward, h > start.hour ?? 0 { continue }
                    }
                    for m in minuteOrder where minutes & (1 << UInt64(m)) != 0 {
                        if offset == 0, h == start.hour {
                            if forward, m < start.minute ?? 0 { continue }
                            if !forward, m > start.minute ?? 0 { continue }
                        }
                        var comps = DateComponents(year: c.year, month: c.month, day: c.day, hour: h, minute: m)
                        comps.timeZone = timeZone
                        if let fire = calendar.date(from: comps) { return fire }
                    }
                }
            }
            guard let next = calendar.date(byAdding: .day, value: forward ? 1 : -1, to: day) else { return nil }
            day = next
        }
        return nil
    }


    private init(
        expression: String, minutes: UInt64, hours: UInt64, daysOfMonth: UInt64, months: UInt64, daysOfWeek: UInt64,
        daysOfMonthRestricted: Bool, daysOfWeekRestricted: Bool
    ) {
        self.expression = expression
        self.minutes = minutes
        self.hours = hours
        self.daysOfMonth = daysOfMonth
        self.months = months
        self.daysOfWeek = daysOfWeek
        self.daysOfMonthRestricted = daysOfMonthRestricted
        self.daysOfWeekRestricted = daysOfWeekRestricted
    }
}

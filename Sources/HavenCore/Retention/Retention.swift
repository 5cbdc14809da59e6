import Foundation
import HavenSpec

/// Which backups a retention policy keeps, the way Proxmox Backup Server and Xen Orchestra count:
/// `keepLast` newest, then for each of hourly/daily/weekly/monthly/yearly the newest backup of the
/// N most recent periods *that have a backup* (empty periods do not count). A period already
/// covered by a backup kept under an earlier rule does not use up a count. The newest backup is
/// always kept.
public enum Retention {
    public struct Decision: Sendable, Hashable {
        public var keep: Bool
        /// Why: "keepLast 1/7", "daily 2026-11-20", or why it goes.
        public var reason: String
    }

    /// `backups` in any order; returns a decision per backup id.
    public static func decide(_ backups: [(id: String, date: Date)], rules: BackupPolicySpec.Retention, timeZone: TimeZone) -> [String: Decision] {
        let sorted = backups.sorted { $0.date > $1.date }
        var decision: [String: Decision] = [:]
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        for (n, b) in sorted.enumerated() where n < rules.keepLast {
            decision[b.id] = Decision(keep: true, reason: "keepLast \(n + 1)/\(rules.keepLast)")
        }
        let periods: [(String, Int, (Date) -> String)] = [
            ("hourly", rules.hourly, { d in
                let c = calendar.dateComponents([.year, .month, .day, .hour], from: d)
                return String(format: "%04d-%02d-%02d %02dh", c.year!, c.month!, c.day!, c.hour!)
            }),
            ("daily", rules.daily, { d in
                let c = calendar.dateComponents([.year, .month, .day], from: d)
                return String(format: "%04d-%02d-%02d", c.year!, c.month!, c.day!)
            }),
            ("weekly", rules.weekly, { d in
                var iso = Calendar(identifier: .iso8601)
                iso.timeZone = timeZone
                let c = iso.dateComponents([.yearForWeekOfYear, .weekOfYear], from: d)
                return String(format: "%04d-W%02d", c.yearForWeekOfYear!, c.weekOfYear!)
            }),
            ("monthly", rules.monthly, { d in
                let c = calendar.dateComponents([.year, .month], from: d)
                return String(format: "%04d-%02d", c.year!, c.month!)
            }),
            ("yearly", rules.yearly, { d in String(calendar.component(.year, from: d)) }),
        ]
        for (name, count, key) in periods where count > 0 {
            var covered = Set(sorted.filter { decision[$0.id]?.keep == true }.map { key($0.date) })
            var used = 0
            for b in sorted where decision[b.id]?.keep != true {
                let k = key(b.date)
                if covered.contains(k) { continue }
                if used >= count { break }
                covered.insert(k)
                used += 1
                decision[b.id] = Decision(keep: true, reason: "\(name) \(k)")
            }
        }
        if let newest = sorted.first, decision[newest.id]?.keep != true {
            decision[newest.id] = Decision(keep: true, reason: "the newest backup is always kept")
        }
        for b in sorted where decision[b.id] == nil {
            decision[b.id] = Decision(keep: false, reason: "not kept by \(describe(rules))")
        }
        return decision
    }

    public static func describe(_ r: BackupPolicySpec.Retention) -> String {
        let parts = [("keepLast", r.keepLast), ("hourly", r.hourly), ("daily", r.daily), ("weekly", r.weekly), ("monthly", r.monthly),
                     ("yearly", r.yearly)].filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }
        return parts.joined(separator: ", ")
    }
}

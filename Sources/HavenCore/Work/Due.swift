import Foundation
import HavenSpec

/// When a schedule next falls due and whether its RPO is met, given the last good run. One
/// definition for the planner's "due", `haven status` and the daemon's timers.
public enum Due {
    /// The moment the planner plans the next run (never run: `now`, as the planner backs up what
    /// was never backed up); nil when nothing more is scheduled.
    public static func next(_ schedule: Schedule, last: Date?, now: Date) -> Date? {
        guard let last else { return now }
        if let every = schedule.every { return last.addingTimeInterval(Double(every.seconds)) }
        if let cron = schedule.cron { return cron.nextFire(after: last, in: timeZone(schedule)) }
        return nil
    }

    /// Whether the last good run is recent enough: younger than `every`, or taken at or after the
    /// latest cron slot.
    public static func rpoMet(_ schedule: Schedule, last: Date?, now: Date) -> Bool {
        guard let last else { return false }
        if let every = schedule.every { return now.timeIntervalSince(last) < Double(every.seconds) }
        if let cron = schedule.cron { return cron.latestFire(notAfter: now, in: timeZone(schedule)).map { last >= $0 } ?? true }
        return true
    }

    static func timeZone(_ s: Schedule) -> TimeZone { TimeZone(identifier: s.timezone) ?? TimeZone(identifier: "UTC")! }
}

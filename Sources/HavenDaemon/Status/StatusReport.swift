import Foundation
import HavenCatalog
import HavenCore
import HavenSpec

/// Per protected VM: its policy, last attempt, last good backup, next due, RPO — the rows of
/// `haven status --output json` (formatVersion 2), computed the same way, plus the daemon's own
/// view (configuration, last reconcile). Pure: inputs in, report out.
public struct StatusReport: Sendable, Encodable {
    public struct Attempt: Sendable, Encodable {
        public var at: Date
        public var result: String
        public var message: String
        public var run: Int64
        public var backupID: String?
    }

    public struct Row: Sendable, Encodable {
        public var pool, vm, vmUUID, policy: String
        public var suspended: Bool
        public var lastAttempt: Attempt?
        public var lastBackup: Date?
        public var lastBackupID: String?
        public var nextDue: Date?
        public var rpoMet: Bool
        public var versions: Int
    }

    public var formatVersion = 2
    public var time: Date
    public var rpoMissed: Bool
    public var unreachablePools: [String]
    public var vms: [Row]

    /// `observed` holds the pools read; `unreachable` those that could not be, whose VMs are then
    /// taken from the catalog (a disaster is when status matters most).
    public static func make(desired: DesiredState, observed: [String: ObservedPool], unreachable: [String: String], catalog view: CatalogView,
                            attempts: [String: RunActionRecord], now: Date) -> StatusReport {
        var observed = observed
        for name in unreachable.keys {
            var seen: [String: ObservedVM] = [:]
            for b in view.backups where b.pool == name {
                seen[b.vmUUID] = ObservedVM(uuid: b.vmUUID, name: b.vmName, powerState: "unknown", tags: [], disks: [])
            }
            observed[name] = ObservedPool(name: name, apiMajor: 0, apiMinor: 0, cbtLicensed: false, vms: seen.values.sorted { $0.name < $1.name },
                                          snapshots: [], vdis: [:], srs: [:], nbdNetworks: [])
        }
        let fromCatalog = Set(unreachable.keys)
        var rows: [Row] = []
        for p in desired.backupPolicies {
            guard let pool = observed[p.spec.pool.value] else { continue }
            for vm in pool.vms where p.spec.vms.matches(name: vm.name, uuid: vm.uuid, tags: vm.tags)
                || (fromCatalog.contains(pool.name) && view.backups.contains { $0.policy == p.name && $0.vmUUID == vm.uuid }) {
                let mine = view.backups.filter { $0.pool == pool.name && $0.policy == p.name && $0.vmUUID == vm.uuid }
                let newest = mine.max { $0.createdAt < $1.createdAt }
                let (next, met) = Schedule.due(p.spec.schedule, last: newest?.createdAt, now: now)
                let attempt = attempts["\(pool.name)\u{0}\(p.name)\u{0}\(vm.uuid)"].map {
                    Attempt(at: $0.at, result: $0.result, message: $0.message, run: $0.runID, backupID: $0.backupID)
                }
                rows.append(Row(pool: pool.name, vm: vm.name, vmUUID: vm.uuid, policy: p.name, suspended: p.spec.suspend, lastAttempt: attempt,
                                lastBackup: newest?.createdAt, lastBackupID: newest?.id, nextDue: p.spec.suspend ? nil : next, rpoMet: met,
                                versions: mine.count))
            }
        }
        return StatusReport(time: now, rpoMissed: rows.contains { !$0.rpoMet && !$0.suspended }, unreachablePools: fromCatalog.sorted(), vms: rows)
    }

    /// The earliest time a VM of a policy that is not suspended falls due; nil when none is scheduled.
    public var nextDue: Date? { vms.filter { !$0.suspended }.compactMap(\.nextDue).min() }
}

/// When a schedule next falls due, and whether its RPO is met, given the last good backup.
public enum Schedule {
    public static func due(_ schedule: HavenSpec.Schedule, last: Date?, now: Date) -> (next: Date?, rpoMet: Bool) {
        if let every = schedule.every {
            let next = last.map { $0.addingTimeInterval(Double(every.seconds)) } ?? now
            return (next, last.map { now.timeIntervalSince($0) < Double(every.seconds) } ?? false)
        }
        if let cron = schedule.cron {
            let tz = TimeZone(identifier: schedule.timezone) ?? TimeZone(identifier: "UTC")!
            let next = cron.nextFire(after: last ?? now, in: tz)
            let slot = cron.latestFire(notAfter: now, in: tz)
            return (next, last.map { l in slot.map { l >= $0 } ?? true } ?? false)
        }
        return (nil, last != nil)
    }
}

import Foundation
import HavenCatalog
import HavenCore
import HavenSpec

/// What `haven status --output json` prints and the daemon serves at `/api/v1/status`, computed in
/// one place: per protected VM its policy, last attempt, last good backup, next due and RPO; the
/// replicas with their lag. `make` is pure (inputs in, report out); `Engine.status` reads the pools.
public struct StatusReport: Sendable, Encodable {
    public struct Attempt: Sendable, Encodable {
        public var at: Date
        public var result: String
        public var message: String
        public var run: Int64
        public var backupID: String?

        public init(at: Date, result: String, message: String, run: Int64, backupID: String?) {
            self.at = at
            self.result = result
            self.message = message
            self.run = run
            self.backupID = backupID
        }
    }

    public struct Row: Sendable, Encodable {
        public var pool, vm, vmUUID, policy: String
        /// Suspended by the YAML's `suspend: true` or by `haven suspend`.
        public var suspended: Bool
        /// `config` (the YAML) or `command` (`haven suspend`); nil when not suspended.
        public var suspendedBy: String?
        public var lastAttempt: Attempt?
        public var lastBackup: Date?
        public var lastBackupID: String?
        public var nextDue: Date?
        public var rpoMet: Bool
        public var versions: Int

        public init(pool: String, vm: String, vmUUID: String, policy: String, suspended: Bool, suspendedBy: String? = nil, lastAttempt: Attempt?,
                    lastBackup: Date?, lastBackupID: String?, nextDue: Date?, rpoMet: Bool, versions: Int) {
            self.pool = pool
            self.vm = vm
            self.vmUUID = vmUUID
            self.policy = policy
            self.suspended = suspended
            self.suspendedBy = suspendedBy
            self.lastAttempt = lastAttempt
            self.lastBackup = lastBackup
            self.lastBackupID = lastBackupID
            self.nextDue = nextDue
            self.rpoMet = rpoMet
            self.versions = versions
        }
    }

    public var formatVersion = 2
    public var time: Date
    /// An RPO of a policy that is not suspended is missed, or a replica lags.
    public var rpoMissed: Bool
    /// Pools that could not be read: their VMs are shown from the catalog.
    public var unreachablePools: [String]
    public var vms: [Row]
    public var replicas: [ReplicaStatus]
    /// Why each unreachable pool could not be read (said on standard error, not in the JSON).
    public var unreachableReasons: [String: String] = [:]

    enum CodingKeys: String, CodingKey { case formatVersion, time, rpoMissed, unreachablePools, vms, replicas }

    public init(time: Date, rpoMissed: Bool, unreachablePools: [String], vms: [Row], replicas: [ReplicaStatus] = []) {
        self.time = time
        self.rpoMissed = rpoMissed
        self.unreachablePools = unreachablePools
        self.vms = vms
        self.replicas = replicas
    }

    /// `observed` holds the pools read; `unreachable` those that could not be, whose VMs are then
    /// taken from the catalog (a disaster is when status matters most). `policies`: only these
    /// BackupPolicies (`--target`); nil: all.
    public static func make(desired: DesiredState, observed: [String: ObservedPool], unreachable: [String: String], catalog view: CatalogView,
                            attempts: [String: RunActionRecord], replicas: [ReplicaStatus], now: Date, policies: Set<String>? = nil) -> StatusReport {
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
        let byCommand = Set(view.suspensions.map(\.policy))
        let backups = Dictionary(grouping: view.backups) { "\($0.pool)\u{0}\($0.policy)\u{0}\($0.vmUUID)" }
        var rows: [Row] = []
        for p in desired.backupPolicies where policies?.contains(p.name) ?? true {
            guard let pool = observed[p.spec.pool.value] else { continue }
            let suspendedBy: String? = p.spec.suspend ? "config" : byCommand.contains(p.name) ? "command" : nil
            for vm in pool.vms where p.spec.vms.matches(name: vm.name, uuid: vm.uuid, tags: vm.tags)
                || (fromCatalog.contains(pool.name) && backups["\(pool.name)\u{0}\(p.name)\u{0}\(vm.uuid)"] != nil) {
                let mine = backups["\(pool.name)\u{0}\(p.name)\u{0}\(vm.uuid)"] ?? []
                let newest = mine.max { $0.createdAt < $1.createdAt }
                let attempt = attempts["\(pool.name)\u{0}\(p.name)\u{0}\(vm.uuid)"].map {
                    Attempt(at: $0.at, result: $0.result, message: $0.message, run: $0.runID, backupID: $0.backupID)
                }
                rows.append(Row(pool: pool.name, vm: vm.name, vmUUID: vm.uuid, policy: p.name, suspended: suspendedBy != nil, suspendedBy: suspendedBy,
                                lastAttempt: attempt, lastBackup: newest?.createdAt, lastBackupID: newest?.id,
                                nextDue: suspendedBy != nil ? nil : Due.next(p.spec.schedule, last: newest?.createdAt, now: now),
                                rpoMet: Due.rpoMet(p.spec.schedule, last: newest?.createdAt, now: now), versions: mine.count))
            }
        }
        let lagging = replicas.contains { ($0.lagSeconds ?? 0) > 0 && $0.state != "failed over" }
        var report = StatusReport(time: now, rpoMissed: rows.contains { !$0.rpoMet && !$0.suspended } || lagging, unreachablePools: fromCatalog.sorted(),
                                  vms: rows, replicas: replicas)
        report.unreachableReasons = unreachable
        return report
    }

    /// The earliest time a VM of a policy that is not suspended falls due; nil when none is scheduled.
    public var nextDue: Date? { vms.filter { !$0.suspended }.compactMap(\.nextDue).min() }

    /// The one JSON text of a status (sorted keys, ISO 8601 dates): `haven status --output json`
    /// prints it and the daemon serves it, byte for byte the same for the same state and time.
    public func json() throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .iso8601
        return String(decoding: try e.encode(self), as: UTF8.self)
    }
}

extension Engine {
    /// Reads the pools in scope (and the replicas' target pools) and computes the status;
    /// sessions are logged out afterwards.
    public func status(pools: [String]? = nil, policies: Set<String>? = nil, now: Date) async throws -> StatusReport {
        let view = try catalog.view()
        let targets = Set(view.replicas.map(\.targetPool))
        let wanted = Array(Set(pools ?? desired.pools.map(\.name)).union(targets)).sorted()
        let observation = try await withSessions { await observe(pools: wanted) }
        var inScope = observation
        if let pools {
            inScope.pools = observation.pools.filter { pools.contains($0.key) }
            inScope.unreachable = observation.unreachable.filter { pools.contains($0.key) }
        }
        return StatusReport.make(desired: desired, observed: inScope.pools, unreachable: inScope.unreachable, catalog: view,
                                 attempts: (try? catalog.lastBackupAttempts()) ?? [:],
                                 replicas: ReplicaStatus.make(view.replicas, desired: desired, observation: observation, now: now), now: now,
                                 policies: policies)
    }
}

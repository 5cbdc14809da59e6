import Foundation
import HavenSpec

/// The planner: a pure function of (desired state, observed pools, catalog, now) to a plan. No
/// I/O, no clock of its own; tested without sockets.
public struct Planner: Sendable {
    public var instance: String

    public init(instance: String) { self.instance = instance }

    /// `scope`: when set, only these BackupPolicies are planned and nothing is cleaned up (`--target`).
    /// `unreachable`: pools that could not be read, with why; they are reported and left alone.
    /// Pools in neither are outside the plan's scope.
    /// `keys`: when set, only the actions of these (policy, VM) keys (and what they require) are
    /// planned, and clean-up only when it asks for housekeeping: what the daemon's work queue runs.
    /// Policies suspended in the catalog (`haven suspend`) are planned as `suspend: true`.
    public func plan(desired: DesiredState, observed: [String: ObservedPool], unreachable: [String: String] = [:], catalog: CatalogView,
                     now: Date, scope: Set<String>? = nil, force: ForceBackup? = nil, failback: FailbackRequest? = nil,
                     keys: KeyScope? = nil) -> Plan {
        let desired = desired.suspending(catalog.suspensions)
        var ctx = Context(planner: self, desired: desired, observed: observed, catalog: catalog, now: now)
        ctx.scope = scope
        ctx.force = force
        ctx.failback = failback
        ctx.keyScope = keys
        for (pool, why) in unreachable.sorted(by: { $0.key < $1.key }) {
            ctx.warn(.poolUnreachable, pool, "pool-unreachable", resource: "Pool/\(pool)",
                     "pool \(pool) cannot be read: \(why); nothing is planned for it", reason: "the other pools are planned and applied on their own")
        }
        ctx.run()
        var settings: [String: PoolSettings] = [:]
        for p in desired.pools where observed[p.name] != nil {
            settings[p.name] = PoolSettings(snapshots: p.spec.limits.snapshots, transfers: p.spec.limits.transfers,
                                            nbdConnections: p.spec.nbd.connections, nbdRequired: p.spec.nbd.required, nbdNetwork: p.spec.nbd.network,
                                            nbdTLS: observed[p.name]?.nbdTLS ?? true)
        }
        let scopeOut = PlanScope(pools: Array(Set(observed.keys).union(unreachable.keys)).sorted(), policies: scope.map { $0.sorted() })
        return Plan(generatedAt: now, fingerprint: fingerprint(desired: desired, observed: observed, catalog: catalog), scope: scopeOut,
                    pools: settings, appliancePools: ctx.appliancePools, actions: ctx.sortedActions(), warnings: ctx.warnings)
    }

    /// Covers the desired state (canonical, without source locations), every observed pool and
    /// the catalog: a saved plan is refused when any of them changed.
    public func fingerprint(desired: DesiredState, observed: [String: ObservedPool], catalog: CatalogView) -> String {
        var f = Fingerprint()
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.dateEncodingStrategy = .secondsSince1970
        f.add(String(decoding: (try? desired.canonicalEncoding()) ?? Data(), as: UTF8.self))
        for name in observed.keys.sorted() {
            var o = observed[name]!
            o.vms.sort { $0.uuid < $1.uuid }
            o.snapshots.sort { $0.uuid < $1.uuid }
            o.appliances.sort { $0.uuid < $1.uuid }
            f.add(name)
            f.add(String(decoding: (try? encoder.encode(o)) ?? Data(), as: UTF8.self))
        }
        var c = catalog
        c.backups.sort { $0.id < $1.id }
        c.anchors.sort { ($0.pool, $0.snapshotVDI, $0.policy) < ($1.pool, $1.snapshotVDI, $1.policy) }
        c.inventory.sort { ($0.pool, $0.uuid) < ($1.pool, $1.uuid) }
        c.cbtMarks.sort { ($0.pool, $0.vdiUUID) < ($1.pool, $1.vdiUUID) }
        c.appliances.sort { ($0.pool, $0.uuid) < ($1.pool, $1.uuid) }
        c.leases.sort { ($0.pool, $0.uuid) < ($1.pool, $1.uuid) }
        f.add(String(decoding: (try? encoder.encode(c)) ?? Data(), as: UTF8.self))
        return f.hex
    }
}

extension Planner {
    struct Context {
        let planner: Planner
        let desired: DesiredState
        let observed: [String: ObservedPool]
        let catalog: CatalogView
        let now: Date
        var actions: [PlannedAction] = []
        var keys: Set<ActionKey> = []
        var warnings: [PlanWarning] = []
        var warned: Set<String> = []
        /// Per pool, VM uuids some declared policy covers.
        var covered: [String: Set<String>] = [:]
        /// Per pool, VDIs whose CBT some policy still wants.
        var wantedCBT: [String: Set<String>] = [:]
        var scope: Set<String>?
        /// The daemon's (policy, VM) keys: nil plans every VM of the policies in scope.
        var keyScope: KeyScope?
        /// `haven backup now`: backups planned whatever the schedule.
        var force: ForceBackup?
        /// `haven failback`: this replica's fail-back is planned without `reverse: true`.
        var failback: FailbackRequest?
        /// Backup keys planned so far, by "vm uuid \0 policy" (retention and clean-up look them up).
        var plannedBackups: [String: ActionKey] = [:]
        /// Prunes planned, by repository name.
        var prunes: [String: [ActionKey]] = [:]
        var repositoriesByName: [String: RepositoryTarget] = [:]
        /// Per pool and VM uuid: the actions that must come before CBT is switched off.
        var anchorRetirements: [String: [ActionKey]] = [:]
        /// The AppliancePools of observed pools, as execution needs them.
        var appliancePools: [String: AppliancePoolSettings] = [:]

        // Indexes built once: planning 10,000 VMs must not scan the catalog per VM.
        let backupsByKey: [String: [BackupRecord]]
        let anchorsByKey: [String: [Anchor]]
        let inventoryByPool: [String: [OwnedObject]]

        init(planner: Planner, desired: DesiredState, observed: [String: ObservedPool], catalog: CatalogView, now: Date) {
            self.planner = planner
            self.desired = desired
            self.observed = observed
            self.catalog = catalog
            self.now = now
            backupsByKey = Dictionary(grouping: catalog.backups) { "\($0.pool)\u{0}\($0.policy)\u{0}\($0.vmUUID)" }
            anchorsByKey = Dictionary(grouping: catalog.anchors) { "\($0.pool)\u{0}\($0.policy)\u{0}\($0.vmUUID)" }
            inventoryByPool = Dictionary(grouping: catalog.inventory) { $0.pool }
            for r in desired.repositories {
                repositoriesByName[r.name] = RepositoryTarget(
                    name: r.name, path: r.spec.path, chunkSize: Int(r.spec.chunkSize.bytes), compression: r.spec.compression.description,
                    keyFile: r.spec.encryption?.keyFile)
            }
        }

        mutating func warn(_ code: PlanWarning.Code, _ pool: String, _ key: String, resource: String? = nil, _ text: String, reason: String) {
            guard warned.insert("\(pool)\u{0}\(key)").inserted else { return }
            warnings.append(PlanWarning(code, pool: pool, resource: resource, text, reason: reason))
        }

        mutating func add(_ a: PlannedAction) {
            guard keys.insert(a.key).inserted else { return }
            actions.append(a)
        }

        /// Dependencies only on actions of this plan; a person reads actions in kind order per pool and VM.
        func sortedActions() -> [PlannedAction] {
            actions.map { a in
                var a = a
                a.requires = a.requires.filter(keys.contains)
                a.after = a.after.filter(keys.contains)
                return a
            }
        }

        mutating func run() {
            // Every policy protects its VMs, suspended or not, planned now or not: nothing of
            // theirs counts as left behind.
            for policy in desired.backupPolicies {
                guard let pool = observed[policy.spec.pool.value] else { continue }
                let wants = policy.spec.cbt && policy.spec.method != .xva
                for vm in pool.vms where Self.selects(policy.spec.vms, vm) {
                    covered[policy.spec.pool.value, default: []].insert(vm.uuid)
                    if wants && (policy.spec.suspend || !(scope?.contains(policy.name) ?? true)) {
                        for d in vm.disks { wantedCBT[policy.spec.pool.value, default: []].insert(d.vdiUUID) }
                    }
                }
                selectorWarnings(policy, pool)
            }
            for r in desired.replicationPolicies {
                guard let pool = observed[r.spec.source.value] else { continue }
                for vm in pool.vms where Self.selects(r.spec.vms, vm) {
                    covered[pool.name, default: []].insert(vm.uuid)
                    if r.spec.method == .cbt || r.spec.method == .abd { for d in vm.disks { wantedCBT[pool.name, default: []].insert(d.vdiUUID) } }
                }
            }
            for policy in desired.backupPolicies where !policy.spec.suspend && (scope?.contains(policy.name) ?? true) {
                backup(policy)
            }
            for r in desired.replicationPolicies where !r.spec.suspend && (scope?.contains(r.name) ?? true) {
                replication(r)
            }
            if housekeeping { orphanedReplicas() }
            appliances()
            for (repo, list) in prunes.sorted(by: { $0.key < $1.key }) {
                guard let target = repositoriesByName[repo] else { continue }
                let pool = list.first?.pool ?? ""
                // After every backup into the same repository too: GC needs the lock exclusive, and a
                // backup holds it shared until its commit.
                let writers = actions.compactMap { a -> ActionKey? in
                    if case .backup(let b) = a.action, b.repository.name == repo { return a.key }
                    return nil
                }
                add(PlannedAction(key: ActionKey(.gc, pool: pool, subject: repo), action: .gc(GCJob(repository: target, safetyWindowSeconds: 3_600)),
                                  reason: "versions were pruned; their unshared chunks can go", after: list + writers))
            }
            if housekeeping { cleanup() }
        }

        /// Clean-up runs with a whole-pool plan (no `--target` policy), and in the daemon only as
        /// the pool's housekeeping key.
        var housekeeping: Bool { scope == nil && (keyScope?.housekeeping ?? true) }

        /// Whether this VM's actions for this policy are planned now.
        func planned(_ kind: WorkKey.Kind, _ pool: String, _ policy: String, _ vm: String) -> Bool {
            keyScope?.covers(kind, pool: pool, policy: policy, vm: vm) ?? true
        }

        /// A VM another worker of the daemon is acting on: its objects are not the housekeeping's now.
        func busy(_ pool: String, _ vm: String) -> Bool { keyScope?.isBusy(pool: pool, vm: vm) ?? false }

        /// A haven replica is selected by its name or uuid only, never by `all` or a tag: backing up or
        /// replicating the replicas of a pool is never implied.
        static func selects(_ sel: VMSelector, _ vm: ObservedVM) -> Bool {
            guard sel.matches(name: vm.name, uuid: vm.uuid, tags: vm.tags) else { return false }
            if vm.isHavenReplica {
                return sel.names.contains { $0.value == vm.name } || sel.uuids.contains { $0.value.lowercased() == vm.uuid.lowercased() }
            }
            return true
        }

        /// Every name, uuid or tag of a selector that matches nothing in its pool.
        mutating func selectorWarnings(_ policy: BackupPolicy, _ pool: ObservedPool) {
            let sel = policy.spec.vms
            let names = Set(pool.vms.map(\.name))
            let uuids = Set(pool.vms.map { $0.uuid.lowercased() })
            let tags = Set(pool.vms.flatMap(\.tags))
            for n in sel.names where !names.contains(n.value) {
                warn(.noMatch, pool.name, "name-\(policy.name)-\(n.value)", resource: "BackupPolicy/\(policy.name)",
                     "BackupPolicy \(policy.name): no VM named '\(n.value)' in pool \(pool.name) (\(n.location))",
                     reason: "check spec.vms.names; a VM that falls out of a policy loses its CBT anchors")
            }
            for u in sel.uuids where !uuids.contains(u.value.lowercased()) {
                warn(.noMatch, pool.name, "uuid-\(policy.name)-\(u.value)", resource: "BackupPolicy/\(policy.name)",
                     "BackupPolicy \(policy.name): no VM with uuid \(u.value) in pool \(pool.name) (\(u.location))", reason: "check spec.vms.uuids")
            }
            for t in sel.tags where !tags.contains(t.value) {
                warn(.noMatch, pool.name, "tag-\(policy.name)-\(t.value)", resource: "BackupPolicy/\(policy.name)",
                     "BackupPolicy \(policy.name): no VM of pool \(pool.name) carries the tag '\(t.value)' (\(t.location))", reason: "check spec.vms.tags")
            }
            for e in sel.exclude where !names.contains(e.value) && !uuids.contains(e.value.lowercased()) {
                warn(.noMatch, pool.name, "exclude-\(policy.name)-\(e.value)", resource: "BackupPolicy/\(policy.name)",
                     "BackupPolicy \(policy.name): spec.vms.exclude names '\(e.value)', which is no VM of pool \(pool.name) (\(e.location))",
                     reason: "check spec.vms.exclude")
            }
        }

        func dueReason(_ schedule: Schedule, last: Date?) -> String? {
            guard let last else { return "due: never backed up" }
            let age = now.timeIntervalSince(last)
            if let every = schedule.every {
                guard age >= Double(every.seconds) else { return nil }
                return "due: last backup \(Self.ago(age)) ago, schedule every \(every)"
            }
            if let cron = schedule.cron {
                let tz = TimeZone(identifier: schedule.timezone) ?? TimeZone(identifier: "UTC")!
                guard let slot = cron.latestFire(notAfter: now, in: tz), slot > last else { return nil }
                return "due: cron slot '\(cron)' at \(Self.iso(slot)) passed since the last backup \(Self.ago(age)) ago"
            }
            return nil
        }

        static func ago(_ seconds: Double) -> String {
            let s = Int(seconds)
            if s < 120 { return "\(s)s" }
            if s < 7_200 { return "\(s / 60)m" }
            if s < 172_800 { return "\(s / 3_600)h" }
            return "\(s / 86_400)d"
        }

        static func iso(_ d: Date) -> String {
            let f = ISO8601DateFormatter()
            return f.string(from: d)
        }

        /// Longest chain xapi tolerates before snapshots start failing (VHD_MAX_CHAIN in SM is 30).
        static let maxChain = 25

        func chainLength(_ uuid: String, in pool: ObservedPool) -> Int {
            var n = 1
            var current = pool.vdis[uuid]?.vhdParent
            var seen: Set<String> = [uuid]
            while let p = current, !p.isEmpty, seen.insert(p).inserted {
                n += 1
                current = pool.vdis[p]?.vhdParent
            }
            return n
        }

        static func excluded(_ disk: ObservedDisk, _ vdi: ObservedVDI?, by patterns: [String]) -> Bool {
            patterns.contains { $0 == disk.userdevice || $0 == disk.device || $0 == vdi?.name || $0.lowercased() == disk.vdiUUID }
        }

        static func hook(_ h: BackupPolicySpec.Hook?) -> HookJob? {
            h.map { HookJob(command: $0.command, timeoutSeconds: Int($0.timeout.seconds), failOnError: $0.onError == .fail) }
        }

        mutating func backup(_ policy: BackupPolicy) {
            let spec = policy.spec
            let poolName = spec.pool.value
            guard let pool = observed[poolName] else { return }
            guard let repo = repositoriesByName[spec.repository.value] else { return }
            if pool.nbdNetworks.isEmpty && spec.method != .xva && pool.hasCBTAPI {
                warn(.noNBDNetwork, poolName, "nbd", "no network of pool \(poolName) has an NBD purpose: disks are read through /export_raw_vdi (whole disks, slower)",
                     reason: "add purpose nbd to a network (network.add_purpose) to read changed blocks over NBD")
            }
            let wantsCBT = spec.cbt && spec.method != .xva
            // Without CBT, `auto` reads VHD deltas against the previous backup's snapshot.
            let fallback = spec.method == .auto
                ? "backups read VHD deltas against the previous backup's snapshot, kept on the pool" : "every backup is a full read"
            if wantsCBT && !pool.hasCBTAPI {
                warn(.preCBTPool, poolName, "api", "pool \(poolName) speaks XenAPI \(pool.apiVersion), before CBT (2.8): \(fallback)",
                     reason: "CBT needs XenServer 7.3 / XCP-ng 7.4 or later")
            } else if wantsCBT && !pool.cbtLicensed {
                warn(.noCBTLicence, poolName, "licence", "pool \(poolName) has no CBT licence (restrict_cbt): \(fallback)",
                     reason: "CBT needs a licence on XenServer (XCP-ng includes it)")
            }
            let selected = pool.vms.filter { Self.selects(spec.vms, $0) }
                .sorted { ($0.name, $0.uuid) < ($1.name, $1.uuid) }
            if selected.isEmpty {
                warn(.emptySelection, poolName, "empty-\(policy.name)", resource: "BackupPolicy/\(policy.name)",
                     "BackupPolicy \(policy.name) selects no VM of pool \(poolName)", reason: "check spec.vms")
            }
            // An excludeDisks entry that names no disk of any selected VM is most likely a typo.
            for e in spec.excludeDisks where !selected.contains(where: { vm in vm.disks.contains { Self.excluded($0, pool.vdis[$0.vdiUUID], by: [e.value]) } }) {
                warn(.noMatch, poolName, "exclude-disk-\(policy.name)-\(e.value)", resource: "BackupPolicy/\(policy.name)",
                     "BackupPolicy \(policy.name): spec.excludeDisks names '\(e.value)', which is no disk of a selected VM in pool \(poolName) (\(e.location))",
                     reason: "an entry matches a userdevice (\"1\"), a device (\"xvdb\"), a VDI name or a VDI uuid")
            }
            var fullSRs = Set<String>()
            for vm in selected where force?.selects(vm) ?? true {
                var disks: [(ObservedDisk, ObservedVDI)] = []
                var skipped: [String] = []
                for d in vm.disks {
                    guard let vdi = pool.vdis[d.vdiUUID] else { continue }
                    if Self.excluded(d, vdi, by: spec.excludeDisks.map(\.value)) {
                        skipped.append("\(vdi.name) (disk \(d.userdevice))")
                        continue
                    }
                    disks.append((d, vdi))
                    let depth = chainLength(vdi.uuid, in: pool)
                    if depth > Self.maxChain {
                        warn(.longChain, poolName, "chain-\(vdi.uuid)", "VM \(vm.name): disk \(d.userdevice) (\(vdi.name)) sits on a VHD chain of \(depth) images",
                             reason: "xapi refuses snapshots once a chain nears 30 images; let the SR coalesce (haven's snapshots add to the chain until purged)")
                    }
                    if let sr = pool.srs[vdi.srUUID], sr.physicalSize > 0, Double(sr.physicalUtilisation) / Double(sr.physicalSize) > 0.9 {
                        fullSRs.insert(sr.name)
                    }
                }
                let identity = VMIdentity(uuid: vm.uuid, name: vm.name)
                // CBT wanted and possible on every disk: switch it on where it is off.
                let cbtPossible = wantsCBT && pool.hasCBTAPI && pool.cbtLicensed
                    && disks.allSatisfy { pool.srs[$0.1.srUUID]?.supportsCBT == true }
                // Outside the daemon's keys: only what the clean-up must know (the CBT still wanted).
                guard planned(.backup, poolName, policy.name, vm.uuid) else {
                    if cbtPossible { for (_, vdi) in disks { wantedCBT[poolName, default: []].insert(vdi.uuid) } }
                    continue
                }
                var enables: [ActionKey] = []
                if cbtPossible {
                    for (d, vdi) in disks {
                        wantedCBT[poolName, default: []].insert(vdi.uuid)
                        if !vdi.cbtEnabled {
                            let key = ActionKey(.enableCBT, pool: poolName, subject: vdi.uuid, policy: policy.name)
                            enables.append(key)
                            add(PlannedAction(key: key, action: .enableCBT(CBTChange(disk: DiskJob(key: d.userdevice, vdiUUID: vdi.uuid, name: vdi.name, size: vdi.size))),
                                              vm: identity, reason: "BackupPolicy \(policy.name) has cbt: true and the pool supports it"))
                        }
                    }
                } else if wantsCBT && !disks.isEmpty && pool.hasCBTAPI && pool.cbtLicensed {
                    warn(.srWithoutCBT, poolName, "sr-cbt-\(vm.uuid)", "VM \(vm.name): an SR of its disks does not support CBT; its backups are \(spec.method == .auto ? "VHD deltas" : "full reads")",
                         reason: "CBT needs a VHD-based SR (ext, nfs, lvm…)")
                }
                let key = "\(poolName)\u{0}\(policy.name)\u{0}\(vm.uuid)"
                let history = (backupsByKey[key] ?? []).filter { $0.repository == repo.name }
                let last = history.map(\.createdAt).max()
                if let reason = (force?.forces(policy.name) == true ? force?.reason : nil) ?? dueReason(spec.schedule, last: last), !disks.isEmpty {
                    plannedBackup(policy, repo, pool, identity, disks, skipped, cbtPossible: cbtPossible, reason: reason, key: key,
                                  history: history, enables: enables)
                } else if !cbtPossible {
                    // Delta bases stay while VHD deltas are the method; CBT anchors serve nothing now.
                    let deltas = (spec.method == .auto || spec.method == .delta) && spec.snapshotRetention > 0
                    retireAnchors(policy, pool, identity, because: wantsCBT ? "CBT cannot be used for this VM any more" : "the policy no longer uses CBT (cbt: false or method: xva)",
                                  keeping: deltas ? .delta : nil)
                }
                retention(policy, identity, history: history)
                snapshotRetention(policy, pool, identity)
                pendingPurges(policy, pool, identity)
                strayAnchors(owner: policy.name, pool, identity)
            }
            for sr in fullSRs.sorted() {
                warn(.srAlmostFull, poolName, "sr-\(sr)", "SR \(sr) is more than 90% full", reason: "snapshots need room; free space or move disks")
            }
        }

        /// The anchors of a VM that no longer serve an incremental: removed (planned, shown), so no
        /// CBT metadata of haven's is left behind and a later re-enable starts a clean chain.
        mutating func retireAnchors(_ policy: BackupPolicy, _ pool: ObservedPool, _ vm: VMIdentity, because why: String, requires: [ActionKey] = [],
                                    keeping kept: AnchorKind? = nil) {
            for a in anchorsByKey["\(pool.name)\u{0}\(policy.name)\u{0}\(vm.uuid)"] ?? [] where a.kind != kept {
                guard pool.vdis[a.snapshotVDI] != nil, owned(pool.name, "VDI", a.snapshotVDI, in: pool) else { continue }
                // The disk of a snapshot kept by snapshotRetention goes with its snapshot.
                if !a.dataDestroyed && pool.snapshots.contains(where: { $0.uuid == a.snapshotVM }) { continue }
                let key = ActionKey(.retireAnchor, pool: pool.name, subject: a.snapshotVDI, policy: policy.name)
                add(PlannedAction(key: key, action: .retireAnchor(OwnedRemoval(uuid: a.snapshotVDI, label: "\(a.snapshotVDI) (disk \(a.diskKey))")),
                                  vm: vm, reason: why, requires: requires))
                anchorRetirements["\(pool.name)\u{0}\(vm.uuid)", default: []].append(key)
            }
        }

        mutating func plannedBackup(_ policy: BackupPolicy, _ repo: RepositoryTarget, _ pool: ObservedPool, _ vm: VMIdentity,
                                    _ disks: [(ObservedDisk, ObservedVDI)], _ skipped: [String], cbtPossible: Bool, reason: String, key: String,
                                    history: [BackupRecord], enables: [ActionKey]) {
            let spec = policy.spec
            var method: BackupMethod
            var why = reason
            var planned: [DiskJob] = []
            var deltaBases = false
            let anchors = anchorsByKey[key] ?? []
            let backupIDs = Set(history.map(\.id))
            if spec.method == .xva {
                method = .xva
                planned = disks.map { DiskJob(key: $0.0.userdevice, vdiUUID: $0.1.uuid, name: $0.1.name, size: $0.1.size) }
            } else if spec.method == .delta || (spec.method == .auto && !cbtPossible && spec.appliances == nil) {
                // No CBT: a VHD delta against the previous backup's snapshot disk, kept on the
                // pool for it (the delta base).
                // Why not CBT, in a clause ("full, because …") and in a few words ("incremental (VHD delta, …)").
                let (without, short): (String, String)
                if spec.method == .delta { (without, short) = ("method: delta", "method: delta") } else if !spec.cbt {
                    (without, short) = ("cbt: false", "cbt: false")
                } else if !pool.hasCBTAPI {
                    (without, short) = ("the pool predates CBT (API \(pool.apiVersion))", "API \(pool.apiVersion) predates CBT")
                } else if !pool.cbtLicensed {
                    (without, short) = ("CBT is not licensed", "no CBT licence")
                } else { (without, short) = ("an SR does not support CBT", "an SR without CBT") }
                var fullBecause: String?
                if spec.snapshotRetention == 0 {
                    fullBecause = "snapshotRetention is 0, so no snapshot is kept as a delta base"
                }
                planned = Self.diskJobs(disks, .delta, anchors, pool, backupIDs, first: history.isEmpty, fullBecause: &fullBecause)
                if let force, force.full, force.forces(policy.name) { fullBecause = "--full was asked" }
                if let fullBecause {
                    for i in planned.indices {
                        planned[i].anchorVDI = nil
                        planned[i].baseBackup = nil
                    }
                    method = pool.nbdAvailable ? .fullNBD : .fullExport
                    why += spec.method == .delta ? "; full, because \(fullBecause)" : "; full, because \(without) and \(fullBecause)"
                } else {
                    method = .deltaIncremental
                    why += "; incremental (VHD delta, \(short))"
                }
                deltaBases = spec.snapshotRetention > 0
            } else {
                var fullBecause: String?
                if !cbtPossible {
                    if !spec.cbt { fullBecause = "cbt: false" } else if !pool.hasCBTAPI { fullBecause = "the pool predates CBT (API \(pool.apiVersion))" } else if !pool.cbtLicensed {
                        fullBecause = "CBT is not licensed"
                    } else { fullBecause = "an SR does not support CBT" }
                }
                planned = Self.diskJobs(disks, .cbt, anchors, pool, backupIDs, first: history.isEmpty, fullBecause: &fullBecause)
                if let force, force.full, force.forces(policy.name) { fullBecause = "--full was asked" }
                if let fullBecause {
                    for i in planned.indices {
                        planned[i].anchorVDI = nil
                        planned[i].baseBackup = nil
                    }
                    // Through appliances the disks are read by their movers: no NBD network needed.
                    method = spec.appliances != nil ? .fullAppliance : pool.nbdAvailable ? .fullNBD : .fullExport
                    why += "; full, because \(fullBecause)"
                } else if spec.appliances != nil {
                    method = .cbtAppliance
                } else {
                    method = pool.nbdAvailable ? .cbtIncremental : .fullExport
                    if !pool.nbdAvailable { why += "; full, because there is no NBD network to read changed blocks through" }
                }
            }
            let keepAnchors = (cbtPossible && method != .xva) || deltaBases
            if keepAnchors && spec.purgeSnapshotData {
                why += deltaBases ? "; afterwards the snapshot VM is removed and its disks are kept as the next delta's base"
                    : "; afterwards the snapshot's data is destroyed and only its CBT metadata kept"
            }
            let job = BackupJob(method: method, repository: repo, disks: planned, skippedDisks: skipped, keepAnchors: keepAnchors, deltaBases: deltaBases,
                                purgeSnapshotData: spec.purgeSnapshotData, quiesce: spec.quiesce.rawValue,
                                preSnapshot: Self.hook(spec.hooks.preSnapshot), postSnapshot: Self.hook(spec.hooks.postSnapshot),
                                appliances: method == .cbtAppliance || method == .fullAppliance ? spec.appliances?.value : nil)
            let backupKey = ActionKey(.backup, pool: pool.name, subject: vm.uuid, policy: policy.name)
            add(PlannedAction(key: backupKey, action: .backup(job), vm: vm, reason: why, after: enables))
            plannedBackups["\(vm.uuid)\u{0}\(policy.name)"] = backupKey
            // The anchors this backup replaces go once it succeeded; if it fails they stay.
            retireAnchors(policy, pool, vm, because: keepAnchors ? "replaced by the new anchor once the backup succeeds"
                              : "not needed once the backup succeeds (it keeps no anchor)", requires: [backupKey])
        }

        /// The disk jobs of a backup, each on its kept anchor of `kind` while every disk has a usable
        /// one; the first reason one cannot goes into `fullBecause` (then the caller reads whole).
        static func diskJobs(_ disks: [(ObservedDisk, ObservedVDI)], _ kind: AnchorKind, _ anchors: [Anchor], _ pool: ObservedPool,
                             _ backupIDs: Set<String>, first: Bool, fullBecause: inout String?) -> [DiskJob] {
            disks.map { d, vdi in
                var disk = DiskJob(key: d.userdevice, vdiUUID: vdi.uuid, name: vdi.name, size: vdi.size)
                guard fullBecause == nil else { return disk }
                if kind == .cbt && !vdi.cbtEnabled {
                    fullBecause = first ? "first backup with CBT" : "CBT was re-enabled on disk \(d.userdevice) (it was off, so no changed blocks are known)"
                    return disk
                }
                let anchor = anchors.first { $0.diskKey == d.userdevice && $0.kind == kind }
                fullBecause = unusable(anchor, kind, d, vdi, pool, backupIDs, first: first)
                if fullBecause == nil, let a = anchor {
                    disk.anchorVDI = a.snapshotVDI
                    disk.baseBackup = a.backupID
                }
                return disk
            }
        }

        /// Why a disk's kept anchor (a CBT anchor, or a delta base with its data) cannot be the base
        /// of an incremental, in a clause for "full, because …"; nil when it can.
        static func unusable(_ anchor: Anchor?, _ kind: AnchorKind, _ d: ObservedDisk, _ vdi: ObservedVDI, _ pool: ObservedPool,
                             _ backups: Set<String>, first: Bool) -> String? {
            let what = kind == .delta ? "delta base" : "CBT anchor"
            guard let a = anchor else {
                if first { return kind == .delta ? "this is the first backup with VHD deltas" : "first backup with CBT" }
                return "no \(what) is kept for disk \(d.userdevice)"
            }
            guard a.sourceVDI == vdi.uuid else { return "disk \(d.userdevice) is another VDI than at the last backup" }
            guard let kept = pool.vdis[a.snapshotVDI] else { return "the \(what) of disk \(d.userdevice) was deleted" }
            switch kind {
            case .delta:
                if kept.type == "cbt_metadata" { return "the delta base of disk \(d.userdevice) holds no data" }
                if kept.size != vdi.size { return "disk \(d.userdevice) was resized since its delta base" }
            case .cbt:
                if !kept.cbtEnabled { return "the CBT anchor of disk \(d.userdevice) has no CBT metadata" }
            }
            guard backups.contains(a.backupID) else { return "the backup the \(what) of disk \(d.userdevice) belongs to is gone" }
            return nil
        }

        /// Whether an object is haven's: in the inventory and carrying haven's mark on the pool.
        func owned(_ pool: String, _ cls: String, _ uuid: String, in observed: ObservedPool) -> Bool {
            guard (inventoryByPool[pool] ?? []).contains(where: { $0.uuid == uuid && $0.cls == cls }) else { return false }
            if cls == "VM" {
                return observed.snapshots.first { $0.uuid == uuid }?.otherConfig[OwnershipMarks.owner] == planner.instance
            }
            return observed.vdis[uuid]?.otherConfig[OwnershipMarks.owner] == planner.instance
        }

        /// Retention as it will stand after this run: a backup planned now counts as the newest
        /// version (its prunes require that backup to succeed).
        mutating func retention(_ policy: BackupPolicy, _ vm: VMIdentity, history: [BackupRecord]) {
            let backupKey = plannedBackups["\(vm.uuid)\u{0}\(policy.name)"]
            var versions = history.map { (id: $0.id, date: $0.createdAt) }
            if backupKey != nil { versions.append((id: "\u{0}planned", date: now)) }
            guard versions.count > 1 else { return }
            let tz = TimeZone(identifier: policy.spec.schedule.timezone) ?? TimeZone(identifier: "UTC")!
            let decisions = Retention.decide(versions, rules: policy.spec.retention, timeZone: tz)
            for b in history.sorted(by: { $0.createdAt < $1.createdAt }) where decisions[b.id]?.keep == false {
                guard let repo = repositoriesByName[b.repository] else { continue }
                // A version a live anchor still points to is kept until the anchor moves on.
                let key = ActionKey(.prune, pool: policy.spec.pool.value, subject: b.id, policy: policy.name)
                add(PlannedAction(key: key, action: .prune(PruneJob(version: b.id, repository: repo)), vm: vm,
                                  reason: "retention: \(decisions[b.id]!.reason)", requires: backupKey.map { [$0] } ?? []))
                prunes[b.repository, default: []].append(key)
            }
        }

        /// A committed backup whose clean-up did not finish (data_destroy failed): its anchors still
        /// hold the snapshot's full data. Shown and retried until done.
        mutating func pendingPurges(_ policy: BackupPolicy, _ pool: ObservedPool, _ vm: VMIdentity) {
            guard policy.spec.purgeSnapshotData else { return }
            for a in anchorsByKey["\(pool.name)\u{0}\(policy.name)\u{0}\(vm.uuid)"] ?? [] where !a.dataDestroyed && a.kind == .cbt {
                guard let vdi = pool.vdis[a.snapshotVDI], vdi.type != "cbt_metadata", owned(pool.name, "VDI", a.snapshotVDI, in: pool) else { continue }
                // While its snapshot VM is there, the snapshot's removal comes first.
                if pool.snapshots.contains(where: { $0.uuid == a.snapshotVM }) { continue }
                let key = ActionKey(.purgeSnapshotData, pool: pool.name, subject: a.snapshotVDI, policy: policy.name)
                if keys.contains(ActionKey(.retireAnchor, pool: pool.name, subject: a.snapshotVDI, policy: policy.name)) { continue }
                add(PlannedAction(key: key, action: .purgeSnapshotData(OwnedRemoval(uuid: a.snapshotVDI, label: "\(vdi.name) (\(a.snapshotVDI), disk \(a.diskKey))")),
                                  vm: vm, reason: "the clean-up after backup \(a.backupID) did not finish: the disk still holds the snapshot's data"))
            }
        }

        /// Anchors of this VM and owner (a backup policy, or `replication:NAME`) that the catalog no
        /// longer counts as the anchor of any disk, and disks of snapshots that are gone: a run
        /// recorded their replacement, or removed their snapshot, and was killed before it removed
        /// them. Nothing else would ever plan them away.
        mutating func strayAnchors(owner: String, _ pool: ObservedPool, _ vm: VMIdentity) {
            let current = Set((anchorsByKey["\(pool.name)\u{0}\(owner)\u{0}\(vm.uuid)"] ?? []).map(\.snapshotVDI))
            let ofSnapshots = Set(pool.snapshots.flatMap { $0.disks.map(\.vdiUUID) })
            let roles: Set<String> = ["cbt-anchor", "delta-base", "snapshot-disk", "replication-snapshot-disk"]
            for o in inventoryByPool[pool.name] ?? [] where o.cls == "VDI" && o.vmUUID == vm.uuid && o.policy == owner && roles.contains(o.role)
                && !current.contains(o.uuid) && !ofSnapshots.contains(o.uuid) {
                guard let vdi = pool.vdis[o.uuid], owned(pool.name, "VDI", o.uuid, in: pool) else { continue }
                let key = ActionKey(.retireAnchor, pool: pool.name, subject: o.uuid, policy: owner)
                guard !keys.contains(key) else { continue }
                add(PlannedAction(key: key, action: .retireAnchor(OwnedRemoval(uuid: o.uuid, label: "\(o.uuid) (\(vdi.name))")), vm: vm,
                                  reason: "left over: a run replaced this CBT anchor (or removed its snapshot) and stopped before removing it"))
            }
        }

        /// Snapshots kept on the host when their data is not purged: the newest `snapshotRetention`.
        /// When data is purged, a snapshot VM of haven's can only be left over from a backup that
        /// did not finish (a crash): it goes.
        mutating func snapshotRetention(_ policy: BackupPolicy, _ pool: ObservedPool, _ vm: VMIdentity) {
            let mine = pool.snapshots.filter {
                $0.snapshotOf == vm.uuid && $0.otherConfig[OwnershipMarks.policy] == policy.name && owned(pool.name, "VM", $0.uuid, in: pool)
            }.sorted { ($0.otherConfig["haven.created"] ?? "") > ($1.otherConfig["haven.created"] ?? "") }
            let backupKey = plannedBackups["\(vm.uuid)\u{0}\(policy.name)"]
            func remove(_ s: ObservedSnapshot, _ why: String) {
                add(PlannedAction(key: ActionKey(.deleteSnapshot, pool: pool.name, subject: s.uuid, policy: policy.name),
                                  action: .deleteSnapshot(OwnedRemoval(uuid: s.uuid, label: "\(s.name) (\(s.uuid))")), vm: vm, reason: why,
                                  after: backupKey.map { [$0] } ?? []))
            }
            if policy.spec.purgeSnapshotData {
                for s in mine { remove(s, "left over from a backup that did not finish") }
                return
            }
            // A backup planned now adds one; keep room for it.
            let keep = max(0, policy.spec.snapshotRetention - (backupKey == nil ? 0 : 1))
            for s in mine.dropFirst(keep) { remove(s, "snapshotRetention \(policy.spec.snapshotRetention)") }
        }

        /// Snapshots left by runs that died inside `VM.snapshot`: found by the recorded intent (the
        /// VM, the exact name) and removed; a snapshot named like haven's that no intent or mark
        /// proves is haven's is reported, never touched.
        mutating func orphanSnapshots() {
            for (poolName, pool) in observed.sorted(by: { $0.key < $1.key }) {
                let intents = catalog.intents.filter { $0.pool == poolName }
                var adopted = Set<String>()
                for i in intents where !busy(poolName, i.vmUUID) {
                    for s in pool.snapshots where s.snapshotOf == i.vmUUID && s.name == i.name && (s.otherConfig[OwnershipMarks.owner] ?? planner.instance) == planner.instance
                        && !(inventoryByPool[poolName] ?? []).contains(where: { $0.uuid == s.uuid }) {
                        adopted.insert(s.uuid)
                        let vm = pool.vms.first { $0.uuid == i.vmUUID }.map { VMIdentity(uuid: $0.uuid, name: $0.name) }
                        add(PlannedAction(key: ActionKey(.deleteSnapshot, pool: poolName, subject: s.uuid, policy: i.policy),
                                          action: .deleteSnapshot(OwnedRemoval(uuid: s.uuid, label: "\(s.name) (\(s.uuid))", adoptIntent: i.name)), vm: vm,
                                          reason: "left by a run that stopped during VM.snapshot (requested at \(Self.iso(i.requestedAt))); haven's by its recorded intent, so it is adopted and removed"))
                    }
                }
                // Adopted (marked backup-snapshot, in the inventory) for a replication's intent, and
                // the run stopped before removing it: no backup policy's retention and no clean-up
                // looks at a replication's snapshots, so it is removed here (found by the kill sweep).
                for o in inventoryByPool[poolName] ?? [] where o.cls == "VM" && o.role == "backup-snapshot" && o.policy.hasPrefix("replication:")
                    && !busy(poolName, o.vmUUID) {
                    guard let s = pool.snapshots.first(where: { $0.uuid == o.uuid }), s.otherConfig[OwnershipMarks.owner] == planner.instance else { continue }
                    let vm = pool.vms.first { $0.uuid == o.vmUUID }.map { VMIdentity(uuid: $0.uuid, name: $0.name) }
                    add(PlannedAction(key: ActionKey(.deleteSnapshot, pool: poolName, subject: s.uuid, policy: o.policy),
                                      action: .deleteSnapshot(OwnedRemoval(uuid: s.uuid, label: "\(s.name) (\(s.uuid))")), vm: vm,
                                      reason: "adopted from a run that stopped during VM.snapshot, by a run that stopped before removing it"))
                }
                for s in pool.snapshots where s.name.hasPrefix("haven ") && s.otherConfig[OwnershipMarks.owner] == nil && !adopted.contains(s.uuid) {
                    warn(.unprovenSnapshot, poolName, "unproven-\(s.uuid)",
                         "snapshot '\(s.name)' (\(s.uuid)) is named like haven's, but nothing proves it is this haven's: left alone",
                         reason: "delete it by hand if it is a leftover (`xe snapshot-uninstall uuid=\(s.uuid)`)")
                }
            }
        }

        /// What haven made for VMs no policy covers any more, and CBT no policy wants any more.
        mutating func cleanup() {
            orphanSnapshots()
            for (poolName, pool) in observed.sorted(by: { $0.key < $1.key }) {
                let covers = covered[poolName] ?? []
                // Replicas, their restore points and replication's anchors are the replication's own business.
                for o in (inventoryByPool[poolName] ?? []) where !covers.contains(o.vmUUID) && !o.policy.hasPrefix("replication:")
                    && !o.policy.hasPrefix("appliance:") && !busy(poolName, o.vmUUID) {
                    guard owned(poolName, o.cls, o.uuid, in: pool) else { continue }
                    let vm = VMIdentity(uuid: o.vmUUID, name: pool.vms.first { $0.uuid == o.vmUUID }?.name ?? o.vmUUID)
                    let why = "the VM is no longer covered by any backup policy (its backups stay until retention or `haven backups forget`)"
                    if o.cls == "VM" {
                        add(PlannedAction(key: ActionKey(.deleteSnapshot, pool: poolName, subject: o.uuid, policy: o.policy),
                                          action: .deleteSnapshot(OwnedRemoval(uuid: o.uuid, label: "snapshot \(o.uuid)")), vm: vm, reason: why))
                    } else {
                        let key = ActionKey(.retireAnchor, pool: poolName, subject: o.uuid, policy: o.policy)
                        add(PlannedAction(key: key, action: .retireAnchor(OwnedRemoval(uuid: o.uuid, label: o.uuid)), vm: vm, reason: why))
                        anchorRetirements["\(poolName)\u{0}\(o.vmUUID)", default: []].append(key)
                    }
                }
                for mark in catalog.cbtMarks where mark.pool == poolName && !(wantedCBT[poolName] ?? []).contains(mark.vdiUUID) {
                    guard let vdi = pool.vdis[mark.vdiUUID], vdi.cbtEnabled, !vdi.isSnapshot, vdi.otherConfig[OwnershipMarks.cbt] == planner.instance else { continue }
                    let owner = pool.vms.first { $0.disks.contains { $0.vdiUUID == vdi.uuid } }
                    if let owner, busy(poolName, owner.uuid) { continue }
                    let vm = owner.map { VMIdentity(uuid: $0.uuid, name: $0.name) }
                    let disk = DiskJob(key: owner?.disks.first { $0.vdiUUID == vdi.uuid }?.userdevice ?? "", vdiUUID: vdi.uuid, name: vdi.name, size: vdi.size)
                    // Anchors go first: switching CBT off breaks their chain anyway.
                    let before = vm.flatMap { anchorRetirements["\(poolName)\u{0}\($0.uuid)"] } ?? []
                    add(PlannedAction(key: ActionKey(.disableCBT, pool: poolName, subject: vdi.uuid, policy: mark.policy),
                                      action: .disableCBT(CBTChange(disk: disk)), vm: vm,
                                      reason: "haven enabled CBT here and no policy wants it any more", after: before))
                }
            }
        }
    }
}

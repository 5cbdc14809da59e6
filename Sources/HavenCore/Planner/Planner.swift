import Foundation
import HavenSpec

/// The planner: a pure function of (desired state, observed pools, catalog, now) to a plan. No
/// I/O, no clock of its own; tested without sockets.
public struct Planner: Sendable {
    public var instance: String

    public init(instance: String) { self.instance = instance }

    /// `scope`: when set, only these BackupPolicies are planned and nothing is cleaned up (`--target`).
    /// Pools outside `observed` are left alone.
    public func plan(desired: DesiredState, observed: [String: ObservedPool], catalog: CatalogView, now: Date,
                     scope: Set<String>? = nil) -> Plan {
        var ctx = Context(planner: self, desired: desired, observed: observed, catalog: catalog, now: now)
        ctx.scope = scope
        ctx.run()
        return Plan(generatedAt: now, fingerprint: fingerprint(desired: desired, observed: observed, catalog: catalog), actions: ctx.actions)
    }

    public func fingerprint(desired: DesiredState, observed: [String: ObservedPool], catalog: CatalogView) -> String {
        var f = Fingerprint()
        for p in observed.keys.sorted() {
            let o = observed[p]!
            f.add(p)
            f.add(o.cbtLicensed)
            f.add(o.apiVersion)
            for vm in o.vms.sorted(by: { $0.uuid < $1.uuid }) {
                f.add(vm.uuid)
                f.add(vm.name)
                f.add(vm.tags.joined(separator: ","))
                for d in vm.disks { f.add(d.userdevice + d.vdiUUID) }
            }
            for s in o.snapshots.sorted(by: { $0.uuid < $1.uuid }) { f.add(s.uuid) }
            for uuid in o.vdis.keys.sorted() {
                let v = o.vdis[uuid]!
                f.add(uuid)
                f.add(v.cbtEnabled)
                f.add(v.type)
            }
            f.add(o.nbdNetworks.sorted().joined(separator: ","))
        }
        for b in catalog.backups.sorted(by: { $0.id < $1.id }) { f.add(b.id) }
        for a in catalog.anchors { f.add(a.snapshotVDI + (a.dataDestroyed ? "d" : "")) }
        for o in catalog.inventory { f.add(o.uuid) }
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
        var actions: [PlanAction] = []
        var warnedPools: Set<String> = []
        /// Per pool, VM uuids some active policy covers.
        var covered: [String: Set<String>] = [:]
        /// Per pool, (policy, vdi) pairs whose CBT some policy still wants.
        var wantedCBT: [String: Set<String>] = [:]
        var prunedRepositories: Set<String> = []
        var scope: Set<String>?
        /// "vm uuid \0 policy" of every backup planned so far (retention looks it up per VM).
        var plannedBackups: Set<String> = []

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
        }

        mutating func warn(_ pool: String, _ key: String, _ text: String, reason: String) {
            guard warnedPools.insert("\(pool)\u{0}\(key)").inserted else { return }
            actions.append(PlanAction(kind: .warning, pool: pool, reason: reason, target: text))
        }

        mutating func run() {
            // Every policy protects its VMs, suspended or not, planned now or not: nothing of
            // theirs counts as left behind.
            for policy in desired.backupPolicies {
                guard let pool = observed[policy.spec.pool.value] else { continue }
                for vm in pool.vms where policy.spec.vms.matches(name: vm.name, uuid: vm.uuid, tags: vm.tags) {
                    covered[policy.spec.pool.value, default: []].insert(vm.uuid)
                    if policy.spec.cbt && policy.spec.method != .xva && policy.spec.suspend {
                        for d in vm.disks { wantedCBT[policy.spec.pool.value, default: []].insert(d.vdiUUID) }
                    }
                }
            }
            for policy in desired.backupPolicies where !policy.spec.suspend && (scope?.contains(policy.name) ?? true) {
                backup(policy)
            }
            for repo in prunedRepositories.sorted() {
                let pool = actions.first { $0.kind == .prune && $0.repository == repo }?.pool ?? ""
                actions.append(PlanAction(kind: .gc, pool: pool, reason: "versions were pruned; their unshared chunks can go",
                                          target: repo, repository: repo))
            }
            if scope == nil { cleanup() }
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

        mutating func backup(_ policy: BackupPolicy) {
            let spec = policy.spec
            let poolName = spec.pool.value
            guard let pool = observed[poolName] else {
                warn(poolName, "unobserved", "pool \(poolName) was not observed; nothing planned for it", reason: "the pool could not be read")
                return
            }
            let repo = spec.repository.value
            if pool.nbdNetworks.isEmpty && spec.method != .xva && pool.hasCBTAPI {
                warn(poolName, "nbd", "no network of pool \(poolName) has an NBD purpose: disks are read through /export_raw_vdi (whole disks, slower)",
                     reason: "add purpose nbd to a network (network.add_purpose) to read changed blocks over NBD")
            }
            let wantsCBT = spec.cbt && spec.method != .xva
            if wantsCBT && !pool.hasCBTAPI {
                warn(poolName, "api", "pool \(poolName) speaks XenAPI \(pool.apiVersion), before CBT (2.8): every backup is a full read",
                     reason: "CBT needs XenServer 7.3 / XCP-ng 7.4 or later")
            } else if wantsCBT && !pool.cbtLicensed {
                warn(poolName, "licence", "pool \(poolName) has no CBT licence (restrict_cbt): every backup is a full read",
                     reason: "CBT needs a licence on XenServer (XCP-ng includes it)")
            }
            let selected = pool.vms.filter { spec.vms.matches(name: $0.name, uuid: $0.uuid, tags: $0.tags) }
                .sorted { ($0.name, $0.uuid) < ($1.name, $1.uuid) }
            if selected.isEmpty {
                warn(poolName, "empty-\(policy.name)", "BackupPolicy \(policy.name) selects no VM of pool \(poolName)", reason: "check spec.vms")
            }
            var fullSRs = Set<String>()
            for vm in selected {
                var disks: [(ObservedDisk, ObservedVDI)] = []
                var skipped: [String] = []
                for d in vm.disks {
                    guard let vdi = pool.vdis[d.vdiUUID] else { continue }
                    if Self.excluded(d, vdi, by: spec.excludeDisks) {
                        skipped.append("\(vdi.name) (disk \(d.userdevice))")
                        continue
                    }
                    disks.append((d, vdi))
                    let depth = chainLength(vdi.uuid, in: pool)
                    if depth > Self.maxChain {
                        warn(poolName, "chain-\(vdi.uuid)", "VM \(vm.name): disk \(d.userdevice) (\(vdi.name)) sits on a VHD chain of \(depth) images",
                             reason: "xapi refuses snapshots once a chain nears 30 images; let the SR coalesce (haven's snapshots add to the chain until purged)")
                    }
                    if let sr = pool.srs[vdi.srUUID], sr.physicalSize > 0, Double(sr.physicalUtilisation) / Double(sr.physicalSize) > 0.9 {
                        fullSRs.insert(sr.name)
                    }
                }
                // CBT wanted and possible on every disk: switch it on where it is off.
                let cbtPossible = wantsCBT && pool.hasCBTAPI && pool.cbtLicensed
                    && disks.allSatisfy { pool.srs[$0.1.srUUID]?.supportsCBT == true }
                if cbtPossible {
                    for (d, vdi) in disks {
                        wantedCBT[poolName, default: []].insert(vdi.uuid)
                        if !vdi.cbtEnabled {
                            actions.append(PlanAction(
                                kind: .enableCBT, pool: poolName, vm: vm.name, vmUUID: vm.uuid, policy: policy.name,
                                reason: "BackupPolicy \(policy.name) has cbt: true and the pool supports it", target: "\(vdi.name) (disk \(d.userdevice))",
                                disks: [PlanAction.Disk(key: d.userdevice, vdiUUID: vdi.uuid, name: vdi.name, size: vdi.size)]))
                        }
                    }
                } else if wantsCBT && !disks.isEmpty && pool.hasCBTAPI && pool.cbtLicensed {
                    warn(poolName, "sr-cbt-\(vm.uuid)", "VM \(vm.name): an SR of its disks does not support CBT; its backups are full reads",
                         reason: "CBT needs a VHD-based SR (ext, nfs, lvm…)")
                }
                let key = "\(poolName)\u{0}\(policy.name)\u{0}\(vm.uuid)"
                let history = (backupsByKey[key] ?? []).filter { $0.repository == repo }
                let last = history.map(\.createdAt).max()
                if let reason = dueReason(spec.schedule, last: last), !disks.isEmpty {
                    plannedBackup(policy, pool, vm, disks, skipped, cbtPossible: cbtPossible, reason: reason, key: key)
                }
                retention(policy, vm, history: history)
                snapshotRetention(policy, pool, vm)
            }
            for sr in fullSRs.sorted() {
                warn(poolName, "sr-\(sr)", "SR \(sr) is more than 90% full", reason: "snapshots need room; free space or move disks")
            }
        }

        mutating func plannedBackup(_ policy: BackupPolicy, _ pool: ObservedPool, _ vm: ObservedVM, _ disks: [(ObservedDisk, ObservedVDI)],
                                    _ skipped: [String], cbtPossible: Bool, reason: String, key: String) {
            let spec = policy.spec
            var method: PlanAction.Method
            var why = reason
            var planned: [PlanAction.Disk] = []
            let anchors = anchorsByKey[key] ?? []
            let backupIDs = Set((backupsByKey[key] ?? []).map(\.id))
            if spec.method == .xva {
                method = .xva
                planned = disks.map { PlanAction.Disk(key: $0.0.userdevice, vdiUUID: $0.1.uuid, name: $0.1.name, size: $0.1.size) }
            } else {
                var fullBecause: String?
                if !cbtPossible {
                    if !spec.cbt { fullBecause = "cbt: false" } else if !pool.hasCBTAPI { fullBecause = "the pool predates CBT (API \(pool.apiVersion))" } else if !pool.cbtLicensed {
                        fullBecause = "CBT is not licensed"
                    } else { fullBecause = "an SR does not support CBT" }
                }
                for (d, vdi) in disks {
                    var disk = PlanAction.Disk(key: d.userdevice, vdiUUID: vdi.uuid, name: vdi.name, size: vdi.size)
                    if fullBecause == nil {
                        let anchor = anchors.first { $0.diskKey == d.userdevice }
                        if anchor == nil {
                            fullBecause = "first backup with CBT"
                        } else if let a = anchor, a.sourceVDI != vdi.uuid {
                            fullBecause = "disk \(d.userdevice) is another VDI than at the last backup"
                        } else if let a = anchor, pool.vdis[a.snapshotVDI] == nil {
                            fullBecause = "the CBT anchor of disk \(d.userdevice) was deleted"
                        } else if let a = anchor, pool.vdis[a.snapshotVDI]?.cbtEnabled != true {
                            fullBecause = "the CBT anchor of disk \(d.userdevice) has no CBT metadata"
                        } else if !vdi.cbtEnabled {
                            fullBecause = "CBT was disabled on disk \(d.userdevice) since the last backup (it is switched on again)"
                        } else if let a = anchor, !backupIDs.contains(a.backupID) {
                            fullBecause = "the backup the anchor of disk \(d.userdevice) belongs to is gone"
                        } else if let a = anchor {
                            disk.anchorVDI = a.snapshotVDI
                            disk.baseBackup = a.backupID
                        }
                    }
                    planned.append(disk)
                }
                if let fullBecause {
                    for i in planned.indices {
                        planned[i].anchorVDI = nil
                        planned[i].baseBackup = nil
                    }
                    method = pool.nbdAvailable ? .fullNBD : .fullExport
                    why += "; full, because \(fullBecause)"
                    if spec.method == .delta { why += " (method delta reads whole disks: the rolling-snapshot VHD delta path is not built yet)" }
                } else {
                    method = pool.nbdAvailable ? .cbtIncremental : .fullExport
                    if !pool.nbdAvailable { why += "; full, because there is no NBD network to read changed blocks through" }
                }
            }
            if cbtPossible && spec.purgeSnapshotData && method != .xva {
                why += "; afterwards the snapshot's data is destroyed and only its CBT metadata kept"
            }
            actions.append(PlanAction(
                kind: .backup, pool: pool.name, vm: vm.name, vmUUID: vm.uuid, policy: policy.name, reason: why, target: vm.name, method: method,
                repository: spec.repository.value, disks: planned, skippedDisks: skipped))
            plannedBackups.insert("\(vm.uuid)\u{0}\(policy.name)")
            // The anchors this backup replaces: their CBT metadata goes once it is done.
            if method == .cbtIncremental || (cbtPossible && method == .fullNBD) {
                for a in anchors where pool.vdis[a.snapshotVDI] != nil && owned(pool.name, "VDI", a.snapshotVDI, in: pool) {
                    actions.append(PlanAction(
                        kind: .deleteSnapshot, pool: pool.name, vm: vm.name, vmUUID: vm.uuid, policy: policy.name,
                        reason: "replaced by the new anchor once the backup succeeds", target: "CBT anchor \(a.snapshotVDI) (disk \(a.diskKey))",
                        disks: [PlanAction.Disk(key: a.diskKey, vdiUUID: a.snapshotVDI, name: "anchor", size: 0)],
                        objectUUID: a.snapshotVDI, objectClass: "VDI"))
                }
            }
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
        /// version (the executor prunes only once that backup succeeded).
        mutating func retention(_ policy: BackupPolicy, _ vm: ObservedVM, history: [BackupRecord]) {
            let planned = plannedBackups.contains("\(vm.uuid)\u{0}\(policy.name)")
            var versions = history.map { (id: $0.id, date: $0.createdAt) }
            if planned { versions.append((id: "\u{0}planned", date: now)) }
            guard versions.count > 1 else { return }
            let tz = TimeZone(identifier: policy.spec.schedule.timezone) ?? TimeZone(identifier: "UTC")!
            let decisions = Retention.decide(versions, rules: policy.spec.retention, timeZone: tz)
            for b in history.sorted(by: { $0.createdAt < $1.createdAt }) where decisions[b.id]?.keep == false {
                // A version a live anchor still points to is kept until the anchor moves on.
                actions.append(PlanAction(
                    kind: .prune, pool: policy.spec.pool.value, vm: vm.name, vmUUID: vm.uuid, policy: policy.name,
                    reason: "retention: \(decisions[b.id]!.reason)", target: b.id, repository: b.repository))
                prunedRepositories.insert(b.repository)
            }
        }

        /// Snapshots kept on the host when their data is not purged: the newest `snapshotRetention`.
        /// When data is purged, a snapshot VM of haven's can only be left over from a backup that
        /// did not finish (a crash): it goes.
        mutating func snapshotRetention(_ policy: BackupPolicy, _ pool: ObservedPool, _ vm: ObservedVM) {
            let mine = pool.snapshots.filter {
                $0.snapshotOf == vm.uuid && $0.otherConfig[OwnershipMarks.policy] == policy.name && owned(pool.name, "VM", $0.uuid, in: pool)
            }.sorted { ($0.otherConfig["haven.created"] ?? "") > ($1.otherConfig["haven.created"] ?? "") }
            if policy.spec.purgeSnapshotData {
                for s in mine {
                    actions.append(PlanAction(
                        kind: .deleteSnapshot, pool: pool.name, vm: vm.name, vmUUID: vm.uuid, policy: policy.name,
                        reason: "left over from a backup that did not finish", target: "\(s.name) (\(s.uuid))", objectUUID: s.uuid, objectClass: "VM"))
                }
                return
            }
            // A backup planned now adds one; keep room for it.
            let planned = plannedBackups.contains("\(vm.uuid)\u{0}\(policy.name)") ? 1 : 0
            let keep = max(0, policy.spec.snapshotRetention - planned)
            for s in mine.dropFirst(keep) {
                actions.append(PlanAction(
                    kind: .deleteSnapshot, pool: pool.name, vm: vm.name, vmUUID: vm.uuid, policy: policy.name,
                    reason: "snapshotRetention \(policy.spec.snapshotRetention)", target: "\(s.name) (\(s.uuid))", objectUUID: s.uuid, objectClass: "VM"))
            }
        }

        /// What haven made for VMs no policy covers any more, and CBT no policy wants any more.
        mutating func cleanup() {
            for (poolName, pool) in observed.sorted(by: { $0.key < $1.key }) {
                let covers = covered[poolName] ?? []
                for o in (inventoryByPool[poolName] ?? []) where !covers.contains(o.vmUUID) {
                    guard owned(poolName, o.cls, o.uuid, in: pool) else { continue }
                    let vmName = pool.vms.first { $0.uuid == o.vmUUID }?.name ?? o.vmUUID
                    actions.append(PlanAction(
                        kind: .deleteSnapshot, pool: poolName, vm: vmName, vmUUID: o.vmUUID, policy: o.policy,
                        reason: "the VM is no longer covered by any backup policy (its backups stay until retention or `haven backups forget`)",
                        target: o.cls == "VM" ? "snapshot \(o.uuid)" : "CBT anchor \(o.uuid)", objectUUID: o.uuid, objectClass: o.cls))
                }
                for mark in catalog.cbtMarks where mark.pool == poolName && !(wantedCBT[poolName] ?? []).contains(mark.vdiUUID) {
                    guard let vdi = pool.vdis[mark.vdiUUID], vdi.cbtEnabled, !vdi.isSnapshot, vdi.otherConfig[OwnershipMarks.cbt] == planner.instance else { continue }
                    let vm = pool.vms.first { $0.disks.contains { $0.vdiUUID == vdi.uuid } }
                    actions.append(PlanAction(
                        kind: .disableCBT, pool: poolName, vm: vm?.name, vmUUID: vm?.uuid, policy: mark.policy,
                        reason: "haven enabled CBT here and no policy wants it any more", target: vdi.name,
                        disks: [PlanAction.Disk(key: vm?.disks.first { $0.vdiUUID == vdi.uuid }?.userdevice ?? "", vdiUUID: vdi.uuid, name: vdi.name, size: vdi.size)],
                        objectUUID: vdi.uuid, objectClass: "VDI"))
                }
            }
        }
    }
}

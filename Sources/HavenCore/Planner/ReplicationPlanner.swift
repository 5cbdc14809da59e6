import Foundation
import HavenSpec

extension Planner.Context {
    /// One ReplicationPolicy: per source VM, create the replica (initial sync) or send what changed,
    /// never writing a replica that runs or was failed over.
    mutating func replication(_ r: ReplicationPolicy) {
        let spec = r.spec
        let resource = "ReplicationPolicy/\(r.name)"
        let sourceName = spec.source.value
        guard let source = observed[sourceName] else { return }
        guard let target = observed[spec.target.pool.value] else { return }
        var route: ApplianceRoute?
        if spec.method == .abd {
            guard let from = spec.appliances.source?.value, let to = spec.appliances.target?.value else {
                warn(.replicationRoute, sourceName, "abd-\(r.name)", resource: resource,
                     "ReplicationPolicy \(r.name): method abd moves the blocks from an appliance on the source pool to one on the target pool, but spec.appliances.\(spec.appliances.source == nil ? "source" : "target") is not set",
                     reason: "name an AppliancePool of pool \(spec.appliances.source == nil ? sourceName : spec.target.pool.value) there; nothing is replicated for this policy meanwhile")
                return
            }
            guard from != to else {
                warn(.replicationRoute, sourceName, "abd-\(r.name)", resource: resource,
                     "ReplicationPolicy \(r.name): spec.appliances.source and spec.appliances.target both name AppliancePool \(from); a sync holds one appliance on each side at once",
                     reason: "declare a second AppliancePool for the target side; nothing is replicated for this policy meanwhile")
                return
            }
            if spec.singlePass != nil {
                warn(.replicationRoute, sourceName, "abd-\(r.name)", resource: resource,
                     "ReplicationPolicy \(r.name): singlePass needs haven to read the blocks, but with method abd they go from appliance to appliance",
                     reason: "use method: cbt for singlePass, or back the VMs up with a BackupPolicy; nothing is replicated for this policy meanwhile")
                return
            }
            if !(source.hasCBTAPI && source.cbtLicensed) {
                warn(.notBuilt, sourceName, "cbt-\(r.name)", resource: resource,
                     "ReplicationPolicy \(r.name): method abd sends the blocks CBT reports changed, and pool \(sourceName) has no CBT (API 2.8+, licensed)",
                     reason: "use method: xva on this pool (the whole VM is copied each run)")
                return
            }
            route = ApplianceRoute(direction: spec.direction == .pull ? .pull : .push, source: from, target: to)
        } else if spec.direction == .pull {
            warn(.replicationRoute, sourceName, "pull-\(r.name)", resource: resource,
                 "ReplicationPolicy \(r.name): direction pull has the target side fetch the blocks, which only appliances do (method abd)",
                 reason: "set method: abd with spec.appliances, or direction: push; nothing is replicated for this policy meanwhile")
            return
        } else if spec.appliances.source != nil || spec.appliances.target != nil {
            warn(.replicationRoute, sourceName, "abd-\(r.name)", resource: resource,
                 "ReplicationPolicy \(r.name): spec.appliances is set but method is \(spec.method.rawValue); only method abd moves data through appliances",
                 reason: "set method: abd, or remove spec.appliances; nothing is replicated for this policy meanwhile")
            return
        }
        var singlePass: RepositoryTarget?
        if let sp = spec.singlePass {
            guard let repo = repositoriesByName[sp.repository.value] else {
                warn(.noTargetSR, sourceName, "single-\(r.name)", resource: resource,
                     "ReplicationPolicy \(r.name): spec.singlePass.repository '\(sp.repository.value)' is not a declared Repository", reason: "declare it, or remove singlePass")
                return
            }
            singlePass = repo
        }
        if spec.method == .cbt && !(source.hasCBTAPI && source.cbtLicensed && source.nbdAvailable) {
            warn(.notBuilt, sourceName, "cbt-\(r.name)", resource: resource,
                 "ReplicationPolicy \(r.name): method cbt needs CBT (API 2.8+, licensed) and an NBD network on pool \(sourceName)",
                 reason: "use method: xva on this pool (the whole VM is copied each run)")
            return
        }
        let srUUID: String?
        if let name = spec.target.sr {
            srUUID = target.srs.values.first { $0.name == name }?.uuid
        } else {
            srUUID = target.defaultSR
        }
        guard let srUUID, let sr = target.srs[srUUID] else {
            warn(.noTargetSR, target.name, "sr-\(r.name)", resource: resource,
                 spec.target.sr.map { "ReplicationPolicy \(r.name): pool \(target.name) has no SR named '\($0)'" }
                    ?? "ReplicationPolicy \(r.name): pool \(target.name) has no default SR; set spec.target.sr",
                 reason: "replicas need an SR on the target")
            return
        }
        let owner = replicationOwnerKey(r.name)
        let selected = source.vms.filter { Self.selects(spec.vms, $0) }.sorted { ($0.name, $0.uuid) < ($1.name, $1.uuid) }
        if selected.isEmpty {
            warn(.emptySelection, sourceName, "empty-\(r.name)", resource: resource, "ReplicationPolicy \(r.name) selects no VM of pool \(sourceName)", reason: "check spec.vms")
        }
        let records = catalog.replicas.filter { $0.policy == r.name && $0.sourcePool == sourceName }
        // A sync removes its source snapshot as soon as the replica holds it: one found now was left
        // by a sync that stopped (a crash, a kill); it goes.
        for snap in source.snapshots where snap.otherConfig[OwnershipMarks.policy] == owner && snap.otherConfig[OwnershipMarks.role] == "replication-snapshot"
            && owned(sourceName, "VM", snap.uuid, in: source) && ((housekeeping && !busy(sourceName, snap.snapshotOf)) || planned(.replication, sourceName, r.name, snap.snapshotOf)) {
            let vm = source.vms.first { $0.uuid == snap.snapshotOf }.map { VMIdentity(uuid: $0.uuid, name: $0.name) }
            add(PlannedAction(key: ActionKey(.deleteSnapshot, pool: sourceName, subject: snap.uuid, policy: owner),
                              action: .deleteSnapshot(OwnedRemoval(uuid: snap.uuid, label: "\(snap.name) (\(snap.uuid))")), vm: vm,
                              reason: "left over from a replication sync that did not finish"))
        }
        for vm in selected where planned(.replication, sourceName, r.name, vm.uuid) {
            let record = records.first { $0.sourceVM == vm.uuid }
            let identity = VMIdentity(uuid: vm.uuid, name: vm.name)
            // `haven failback`: that fail-back only.
            if let fb = failback, fb.policy != r.name || (fb.vm != vm.name && fb.vm.lowercased() != vm.uuid.lowercased()) || record?.failedOverAt == nil { continue }
            if let record, let at = record.failedOverAt {
                let asked = failback.map { $0.policy == r.name && ($0.vm == vm.name || $0.vm.lowercased() == vm.uuid.lowercased()) } ?? false
                if spec.reverse || asked {
                    planFailback(r, record: record, vm: vm, source: source, target: target, asked: asked, failedOverAt: at)
                } else {
                    warn(.replicaFailedOver, sourceName, "fo-\(r.name)-\(vm.uuid)", resource: resource,
                         "replica of \(vm.name) was failed over at \(Self.iso(at)); it is never written from now on",
                         reason: "fail back with `haven failback \(r.name) \(vm.name)` (or `reverse: true`) once \(vm.name) is shut down, or `haven replicas delete \(r.name) \(vm.name)` once the replica is the VM of record")
                }
                continue
            }
            // Networks: mapped, or a same-named network on the target.
            var networks: [String: String] = [:]
            var missing: [String] = []
            for n in Set(vm.networks) {
                if let m = spec.target.networkMap[n] {
                    if target.networks.contains(m) { networks[n] = m } else { missing.append("\(n) → \(m) (no such network on \(target.name))") }
                } else if target.networks.contains(n) {
                    networks[n] = n
                } else {
                    missing.append(n)
                }
            }
            if !missing.isEmpty {
                warn(.missingNetworkMapping, sourceName, "net-\(r.name)-\(vm.uuid)", resource: resource,
                     "ReplicationPolicy \(r.name): VM \(vm.name) is on network \(missing.sorted().joined(separator: ", ")), which has no mapping in spec.target.networkMap and no network of that name on pool \(target.name)",
                     reason: "add the network to spec.target.networkMap; \(vm.name) is not replicated until then")
                continue
            }
            let replica = record.flatMap { rec in target.vms.first { $0.uuid == rec.replicaUUID } }
            // A replica counts as the replica of record only once its disks were recorded.
            let complete = record.map { rec in !rec.diskMap.isEmpty && rec.diskMap.values.allSatisfy { target.vdis[$0] != nil } } ?? false
            let removals = leftoverReplicas(r, vm: vm, identity: identity, target: target, keep: complete ? record?.replicaUUID : nil, record: record)
            if let replica, replica.powerState.lowercased() != "halted" {
                warn(.replicaRunning, target.name, "run-\(r.name)-\(vm.uuid)", resource: resource,
                     "replica \(replica.name) of \(vm.name) is \(replica.powerState.lowercased()) on \(target.name): a running replica is never written",
                     reason: "shut it down to let the next sync resynchronise it, or `haven failover` to make it the VM of record")
                continue
            }
            var enables: [ActionKey] = []
            for d in vm.disks where spec.method == .cbt || spec.method == .abd {
                guard let vdi = source.vdis[d.vdiUUID], !vdi.cbtEnabled else { continue }
                let key = ActionKey(.enableCBT, pool: sourceName, subject: vdi.uuid, policy: owner)
                enables.append(key)
                add(PlannedAction(key: key, action: .enableCBT(CBTChange(disk: DiskJob(key: d.userdevice, vdiUUID: vdi.uuid, name: vdi.name, size: vdi.size))),
                                  vm: identity, reason: "ReplicationPolicy \(r.name) reads changed blocks"))
            }
            strayAnchors(owner: owner, source, identity)
            // A fail-back killed after it closed the failover and before it retired the failover
            // anchors leaves them recorded under `failover:NAME`; no failover is open, so they go.
            for a in anchorsByKey["\(target.name)\u{0}\(failoverAnchorKey(r.name))\u{0}\(vm.uuid)"] ?? [] {
                let key = ActionKey(.retireAnchor, pool: target.name, subject: a.snapshotVDI, policy: failoverAnchorKey(r.name))
                guard !keys.contains(key) else { continue }
                let name = target.vdis[a.snapshotVDI]?.name ?? "gone"
                add(PlannedAction(key: key, action: .retireAnchor(OwnedRemoval(uuid: a.snapshotVDI, label: "\(a.snapshotVDI) (\(name))")), vm: identity,
                                  reason: "a failover anchor of \(vm.name) left by a fail-back that stopped before retiring it"))
            }
            // The snapshot a failover takes of the replica to make its anchors, left by a failover
            // killed before it removed it (its disks' data is not yet destroyed).
            for o in inventoryByPool[target.name] ?? [] where o.cls == "VM" && o.role == "failover-anchor" && o.policy == owner && o.vmUUID == vm.uuid {
                guard let snap = target.snapshots.first(where: { $0.uuid == o.uuid }), owned(target.name, "VM", o.uuid, in: target) else { continue }
                let key = ActionKey(.deleteSnapshot, pool: target.name, subject: o.uuid, policy: owner)
                guard !keys.contains(key) else { continue }
                add(PlannedAction(key: key, action: .deleteSnapshot(OwnedRemoval(uuid: o.uuid, label: "\(snap.name) (\(o.uuid))")), vm: identity,
                                  reason: "left by a failover that stopped before removing it"))
            }
            // Its disks, once that snapshot went and before they were recorded as anchors.
            let ofSnapshots = Set(target.snapshots.flatMap { $0.disks.map(\.vdiUUID) })
            for o in inventoryByPool[target.name] ?? [] where o.cls == "VDI" && o.role == "failover-anchor" && o.policy == owner && o.vmUUID == vm.uuid
                && !ofSnapshots.contains(o.uuid) {
                guard let vdi = target.vdis[o.uuid], owned(target.name, "VDI", o.uuid, in: target) else { continue }
                let key = ActionKey(.retireAnchor, pool: target.name, subject: o.uuid, policy: owner)
                guard !keys.contains(key), !keys.contains(ActionKey(.retireAnchor, pool: target.name, subject: o.uuid, policy: failoverAnchorKey(r.name))) else { continue }
                add(PlannedAction(key: key, action: .retireAnchor(OwnedRemoval(uuid: o.uuid, label: "\(o.uuid) (\(vdi.name))")), vm: identity,
                                  reason: "a disk of a failover's anchor snapshot, left by a failover that stopped before recording it"))
            }
            guard let reason = dueReason(spec.schedule, last: record?.lastSync).map({ $0.replacingOccurrences(of: "never backed up", with: "never replicated").replacingOccurrences(of: "last backup", with: "last sync") }) else { continue }
            let anchors = anchorsByKey["\(sourceName)\u{0}\(owner)\u{0}\(vm.uuid)"] ?? []
            let replicaDisks = record?.diskMap ?? [:]
            var disks: [ReplicaDiskJob] = []
            var mode: ReplicationJob.Mode = .incremental
            var why = reason
            if record == nil || replica == nil {
                mode = .initial
                why += record == nil ? "; initial sync: no replica yet" : "; initial sync: the replica \(record!.replicaUUID) is gone from \(target.name)"
            } else if !complete && spec.method != .xva {
                mode = .initial
                why += "; initial sync: the replica \(record!.replicaUUID) was never completed (a sync stopped before its disks were recorded); it is removed"
            }
            if spec.method == .xva {
                let replicaUUID = replica == nil ? nil : record?.replicaUUID
                let disks = vm.disks.compactMap { d in source.vdis[d.vdiUUID].map { ReplicaDiskJob(key: d.userdevice, sourceVDI: $0.uuid, name: $0.name, size: $0.size) } }
                why += replicaUUID == nil ? "; method xva: the VM is exported whole and imported as the replica"
                    : "; method xva: the VM is exported whole and imported as a new replica, which replaces \(replicaUUID!) only once it imported completely"
                if singlePass != nil { why += "; singlePass: the same export is recorded as a backup version (XVA) in \(singlePass!.name)" }
                let job = ReplicationJob(mode: replicaUUID == nil ? .initial : .full, targetPool: target.name, targetSR: sr.uuid, targetSRName: sr.name,
                                         replicaName: spec.target.namePrefix + vm.name, networks: networks, keep: spec.keep, trustDestination: true, disks: disks,
                                         replicaUUID: replicaUUID, xva: true, singlePass: singlePass.map { SinglePassJob(repository: $0, baseBackup: nil) })
                add(PlannedAction(key: ActionKey(.replicate, pool: sourceName, subject: vm.uuid, policy: r.name), action: .replicate(job), vm: identity,
                                  reason: why, after: removals))
                continue
            }
            for d in vm.disks {
                guard let vdi = source.vdis[d.vdiUUID] else { continue }
                var job = ReplicaDiskJob(key: d.userdevice, sourceVDI: vdi.uuid, name: vdi.name, size: vdi.size)
                if mode != .initial {
                    job.replicaVDI = replicaDisks[d.userdevice]
                    let anchor = anchors.first { $0.diskKey == d.userdevice }
                    if job.replicaVDI == nil || target.vdis[job.replicaVDI!] == nil {
                        mode = .initial
                        why += "; initial sync: the replica has no disk \(d.userdevice)"
                    } else if target.vdis[job.replicaVDI!]?.size != vdi.size {
                        mode = .initial
                        why += "; initial sync: disk \(d.userdevice) changed size"
                    } else if let a = anchor, a.sourceVDI == vdi.uuid, source.vdis[a.snapshotVDI]?.cbtEnabled == true, vdi.cbtEnabled {
                        job.anchorVDI = a.snapshotVDI
                    } else if mode == .incremental {
                        mode = .full
                        why += "; every block, because the CBT anchor of disk \(d.userdevice) is \(anchor == nil ? "missing" : "unusable")"
                    }
                }
                disks.append(job)
            }
            if mode == .initial { for i in disks.indices { disks[i].anchorVDI = nil; disks[i].replicaVDI = nil } }
            if mode == .full { for i in disks.indices { disks[i].anchorVDI = nil } }
            if !spec.trustDestination && mode != .initial {
                why += "; the replica is checked first (halted, not written since the last sync, else the written blocks are rewritten)"
            } else if spec.trustDestination && mode != .initial {
                why += "; trustDestination: the replica is not checked"
            }
            var pass: SinglePassJob?
            if let repo = singlePass {
                // The incremental version patches the one the last sync committed (its id is on the anchors).
                let ids = Set(disks.compactMap { d in d.anchorVDI.flatMap { a in anchors.first { $0.snapshotVDI == a }?.backupID } })
                var base: String?
                if mode == .incremental, ids.count == 1, let id = ids.first, !id.isEmpty,
                   disks.allSatisfy({ $0.anchorVDI != nil }), catalog.backups.contains(where: { $0.id == id && $0.repository == repo.name }) {
                    base = id
                }
                why += base.map { "; singlePass: the same read commits an incremental backup version to \(repo.name) on top of \($0)" }
                    ?? "; singlePass: the same read commits a backup version to \(repo.name) (every block is read for it: no version of the last sync to patch)"
                pass = SinglePassJob(repository: repo, baseBackup: base)
            }
            let job = ReplicationJob(mode: mode, targetPool: target.name, targetSR: sr.uuid, targetSRName: sr.name, replicaName: spec.target.namePrefix + vm.name,
                                     networks: networks, keep: spec.keep, trustDestination: spec.trustDestination, disks: disks,
                                     replicaUUID: mode == .initial ? nil : record?.replicaUUID, singlePass: pass, abd: route)
            add(PlannedAction(key: ActionKey(.replicate, pool: sourceName, subject: vm.uuid, policy: r.name), action: .replicate(job), vm: identity,
                              reason: why, after: enables + removals))
        }
    }

    /// Replicas of this source VM that haven made and that are not the replica of record: left by an
    /// initial sync stopped before its disks were recorded, or by an xva run stopped between importing
    /// the new replica and removing the old one; and replica disks never attached to a VM. Proven
    /// haven's by the marks VM.create / VDI.create wrote plus the catalog (inventory or intent).
    mutating func leftoverReplicas(_ r: ReplicationPolicy, vm: ObservedVM, identity: VMIdentity, target: ObservedPool, keep: String?,
                                   record: ReplicaRecord?) -> [ActionKey] {
        let owner = replicationOwnerKey(r.name)
        let inventory = inventoryByPool[target.name] ?? []
        let intents = catalog.intents.filter { $0.pool == target.name && $0.policy == owner && $0.vmUUID == vm.uuid && $0.name.hasPrefix(replicaIntentPrefix) }
        let intent = intents.first
        // Each run's intent ends with its start time, as does the name of the import it made: a
        // leftover is removed under its own intent (several killed runs leave several of each).
        func intentOf(_ name: String) -> SnapshotIntent? {
            intents.first { i in i.name.split(separator: " ").last.map { name.hasSuffix(" " + $0) } ?? false } ?? intent
        }
        func ours(_ marks: [String: String]) -> Bool {
            marks[OwnershipMarks.owner] == planner.instance && marks[OwnershipMarks.policy] == owner
        }
        var keys: [ActionKey] = []
        var attached = Set<String>()
        for v in target.vms { for d in v.disks { attached.insert(d.vdiUUID) } }
        for s in target.snapshots { for d in s.disks { attached.insert(d.vdiUUID) } }
        // An xva run stopped between `/import` and the end of making the import a replica leaves a
        // template carrying its source snapshot's marks (role replication-snapshot), or a role
        // being rewritten (none), or already `replica`: haven's while the intent recorded before
        // the import is open, or once the inventory holds it (recorded as the replica just before
        // it stopped being a template).
        let imports = target.havenTemplates.filter { t in
            [nil, "replication-snapshot", "replica"].contains(t.otherConfig[OwnershipMarks.role])
                && (intent != nil || inventory.contains { $0.uuid == t.uuid && $0.cls == "VM" })
        }
        for candidate in target.vms.filter(\.isHavenReplica) + imports where candidate.uuid != keep && ours(candidate.otherConfig)
            && candidate.otherConfig[OwnershipMarks.source] == vm.uuid {
            let known = inventory.contains { $0.uuid == candidate.uuid && $0.cls == "VM" }
            guard known || intent != nil else {
                warn(.unprovenReplica, target.name, "unproven-\(candidate.uuid)", resource: "ReplicationPolicy/\(r.name)",
                     "VM \(candidate.name) (\(candidate.uuid)) carries haven's replica marks for \(vm.name), but the catalog does not know it: left alone",
                     reason: "delete it by hand if it is a leftover")
                continue
            }
            let why = imports.contains(candidate)
                ? "an xva import of \(vm.name) left by a sync that stopped before making it the replica (haven's by its marks and the recorded intent)"
                : candidate.uuid == record?.replicaUUID
                ? "the replica \(candidate.uuid) was never completed: the initial sync that created it stopped before its disks were recorded; a new initial sync replaces it"
                : keep == nil ? "a replica of \(vm.name) left by a sync that stopped before it was recorded (haven's by its marks and \(known ? "the inventory" : "the recorded intent"))"
                : "an older replica of \(vm.name): the replica of record is \(keep!) (a run stopped between importing the new replica and removing this one)"
            let key = ActionKey(.removeReplica, pool: target.name, subject: candidate.uuid, policy: owner)
            add(PlannedAction(key: key, action: .removeReplica(ReplicaRemoval(pool: target.name, vmUUID: candidate.uuid, vdis: [],
                                                                               label: "replica \(candidate.name) (\(candidate.uuid)) on \(target.name)", intent: known ? nil : intentOf(candidate.name)?.name)),
                              vm: identity, reason: why))
            keys.append(key)
        }
        let sourceDisks = Set(vm.disks.map(\.vdiUUID))
        let recorded = Set(record?.diskMap.values.map { $0 } ?? [])
        let loose = target.vdis.values.filter { v in
            // An xva replica's disks name the source snapshot's disks (gone since): the inventory,
            // which records the source VM, says whose they are.
            !v.isSnapshot && v.otherConfig[OwnershipMarks.role] == "replica-disk" && ours(v.otherConfig)
                && (sourceDisks.contains(v.otherConfig[OwnershipMarks.source] ?? "") || inventory.contains { $0.uuid == v.uuid && $0.vmUUID == vm.uuid })
                && !attached.contains(v.uuid) && !recorded.contains(v.uuid)
                && (inventory.contains { $0.uuid == v.uuid } || intent != nil)
        }.map(\.uuid).sorted()
        if !loose.isEmpty {
            let key = ActionKey(.removeReplica, pool: target.name, subject: loose[0], policy: owner)
            add(PlannedAction(key: key, action: .removeReplica(ReplicaRemoval(pool: target.name, vmUUID: nil, vdis: loose,
                                                                               label: "replica disk\(loose.count == 1 ? "" : "s") \(loose.joined(separator: ", ")) on \(target.name), attached to no VM", intent: intent?.name)),
                              vm: identity, reason: "left by an initial sync of \(vm.name) that stopped before attaching them"))
            keys.append(key)
        }
        return keys
    }

    /// The fail-back of a failed-over replica: planned with `reverse: true` or `haven failback`;
    /// waits (and says so) while the original VM runs — a running original is never written.
    mutating func planFailback(_ r: ReplicationPolicy, record: ReplicaRecord, vm: ObservedVM, source: ObservedPool, target: ObservedPool, asked: Bool,
                               failedOverAt: Date) {
        let resource = "ReplicationPolicy/\(r.name)"
        let owner = replicationOwnerKey(r.name)
        guard let replica = target.vms.first(where: { $0.uuid == record.replicaUUID }) else {
            warn(.replicaFailedOver, source.name, "fb-gone-\(r.name)-\(vm.uuid)", resource: resource,
                 "cannot fail back \(vm.name): its replica \(record.replicaUUID) is gone from \(target.name)",
                 reason: "`haven replicas delete \(r.name) \(vm.name)` forgets it; the next sync makes a new replica")
            return
        }
        guard vm.powerState.lowercased() == "halted" else {
            warn(.failbackWaiting, source.name, "fb-wait-\(r.name)-\(vm.uuid)", resource: resource,
                 "fail-back of \(vm.name) from \(replica.name) waits: \(vm.name) is \(vm.powerState.lowercased()) on \(source.name), and a running original is never written",
                 reason: "shut \(vm.name) down; the next plan sends the replica's changes back")
            return
        }
        // The replica's blocks are read over NBD on the target pool: without an NBD network there
        // it is an error now, before the original is touched, not a failure half-way.
        guard target.nbdAvailable else {
            warn(.failbackNeedsNBD, target.name, "fb-nbd-\(r.name)-\(vm.uuid)", resource: resource,
                 "cannot fail back \(vm.name) from \(replica.name): the fail-back reads the replica's disks over NBD and pool \(target.name) has no network with purpose nbd or insecure_nbd",
                 reason: "add purpose nbd to a network of \(target.name) (network.add_purpose), then fail back again; \(vm.name) is not written until then")
            return
        }
        let failoverAnchors = anchorsByKey["\(target.name)\u{0}\(failoverAnchorKey(r.name))\u{0}\(vm.uuid)"] ?? []
        let sourceAnchors = anchorsByKey["\(source.name)\u{0}\(owner)\u{0}\(vm.uuid)"] ?? []
        let behind = replica.otherConfig[failoverBehindMark] != nil
        var disks: [FailbackDiskJob] = []
        var notes: [String] = []
        for d in vm.disks {
            guard let original = source.vdis[d.vdiUUID] else { continue }
            guard let rd = replica.disks.first(where: { $0.userdevice == d.userdevice }), let rv = target.vdis[rd.vdiUUID] else {
                warn(.replicaFailedOver, source.name, "fb-disk-\(r.name)-\(vm.uuid)", resource: resource,
                     "cannot fail back \(vm.name): its replica \(replica.name) has no disk \(d.userdevice)", reason: "fail back by hand")
                return
            }
            guard rv.size == original.size else {
                warn(.replicaFailedOver, source.name, "fb-size-\(r.name)-\(vm.uuid)", resource: resource,
                     "cannot fail back \(vm.name): disk \(d.userdevice) is \(rv.size) bytes on the replica and \(original.size) on the original", reason: "fail back by hand")
                return
            }
            var fa = failoverAnchors.first { $0.diskKey == d.userdevice && target.vdis[$0.snapshotVDI] != nil }?.snapshotVDI
            var sa = sourceAnchors.first { $0.diskKey == d.userdevice && $0.sourceVDI == original.uuid && source.vdis[$0.snapshotVDI]?.cbtEnabled == true }?.snapshotVDI
            if fa == nil { notes.append("disk \(d.userdevice): every block, because the failover recorded no CBT anchor of the replica's disk") }
            if sa == nil || !original.cbtEnabled {
                notes.append("disk \(d.userdevice): every block, because the original's CBT anchor of the last sync is \(sa == nil ? "missing" : "unusable")")
                sa = nil
            }
            if behind {
                fa = nil
                sa = nil
            }
            disks.append(FailbackDiskJob(key: d.userdevice, name: original.name, size: original.size, originalVDI: original.uuid, replicaVDI: rv.uuid,
                                         failoverAnchorVDI: fa, sourceAnchorVDI: sa))
        }
        if behind { notes.append("every block, because the failover went to an older restore point than the last sync") }
        var why = (asked ? "asked (`haven failback \(r.name) \(vm.name)`)" : "reverse: true") + "; the replica was failed over at \(Self.iso(failedOverAt))"
        why += "; steps: (1) snapshot the replica \(replica.name) (it becomes its newest restore point)"
        why += ", (2) send onto the halted \(vm.name) the blocks the replica changed since the failover and those \(vm.name) wrote after the last sync (CBT on both sides)"
        if !notes.isEmpty { why += " — " + notes.joined(separator: "; ") }
        why += ", (3) snapshot \(vm.name) as the next sync's CBT anchor, (4) block the replica again and close the failover: syncs resume \(target.name == source.name ? "" : "from \(source.name) ")in the normal direction"
        if replica.powerState.lowercased() != "halted" {
            why += "; the replica is \(replica.powerState.lowercased()): what it writes after the snapshot of step 1 is not sent and is overwritten by the first sync after it is shut down — shut it down first to lose nothing"
        }
        let job = FailbackJob(targetPool: target.name, replicaUUID: replica.uuid, replicaName: replica.name, keep: r.spec.keep, disks: disks)
        add(PlannedAction(key: ActionKey(.failback, pool: source.name, subject: vm.uuid, policy: r.name), action: .failback(job),
                          vm: VMIdentity(uuid: vm.uuid, name: vm.name), reason: why))
    }

    /// Replicas whose policy is gone are kept (a DR copy is never deleted implicitly), and said.
    mutating func orphanedReplicas() {
        let declared = Set(desired.replicationPolicies.map(\.name))
        for rec in catalog.replicas where !declared.contains(rec.policy) {
            warn(.replicaKept, rec.targetPool, "kept-\(rec.replicaUUID)", resource: "ReplicationPolicy/\(rec.policy)",
                 "replica \(rec.replicaUUID) of \(rec.sourceName) (ReplicationPolicy \(rec.policy), no longer declared) is kept on \(rec.targetPool)",
                 reason: "a DR copy is never deleted implicitly; delete it with `haven replicas delete \(rec.policy) \(rec.sourceName)`")
        }
    }
}

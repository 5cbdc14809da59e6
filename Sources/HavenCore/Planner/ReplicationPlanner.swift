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
        if spec.method == .abd || spec.direction == .pull || spec.appliances.source != nil || spec.appliances.target != nil {
            warn(.notBuilt, sourceName, "abd-\(r.name)", resource: resource,
                 "ReplicationPolicy \(r.name): \(spec.method == .abd ? "method abd" : "direction pull") moves data through data-mover appliances (AppliancePool, `haven mover`), which are not built yet",
                 reason: "use method: cbt with direction: push; nothing is replicated for this policy meanwhile")
            return
        }
        if spec.method == .xva {
            warn(.notBuilt, sourceName, "xva-\(r.name)", resource: resource,
                 "ReplicationPolicy \(r.name): method xva is not built yet", reason: "use method: cbt; nothing is replicated for this policy meanwhile")
            return
        }
        if spec.reverse {
            warn(.notBuilt, sourceName, "reverse-\(r.name)", resource: resource,
                 "ReplicationPolicy \(r.name): reverse (fail-back) is not built yet", reason: "after `haven failover`, copy the VM back by hand; the replica is never written while failed over")
            return
        }
        if spec.singlePass != nil {
            warn(.notBuilt, sourceName, "single-\(r.name)", resource: resource,
                 "ReplicationPolicy \(r.name): singlePass is not built yet: no backup version is recorded by the replication",
                 reason: "protect these VMs with a BackupPolicy as well")
        }
        if !(source.hasCBTAPI && source.cbtLicensed && source.nbdAvailable) {
            warn(.notBuilt, sourceName, "cbt-\(r.name)", resource: resource,
                 "ReplicationPolicy \(r.name): method cbt needs CBT (API 2.8+, licensed) and an NBD network on pool \(sourceName)",
                 reason: "replication without CBT is not built yet")
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
            if let record, let at = record.failedOverAt {
                warn(.replicaFailedOver, sourceName, "fo-\(r.name)-\(vm.uuid)", resource: resource,
                     "replica of \(vm.name) was failed over at \(Self.iso(at)); it is never written from now on",
                     reason: "fail back, or remove the replica from the catalog once it is the VM of record")
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
            if let replica, replica.powerState.lowercased() != "halted" {
                warn(.replicaRunning, target.name, "run-\(r.name)-\(vm.uuid)", resource: resource,
                     "replica \(replica.name) of \(vm.name) is \(replica.powerState.lowercased()) on \(target.name): a running replica is never written",
                     reason: "shut it down to let the next sync resynchronise it, or `haven failover` to make it the VM of record")
                continue
            }
            var enables: [ActionKey] = []
            for d in vm.disks {
                guard let vdi = source.vdis[d.vdiUUID], !vdi.cbtEnabled else { continue }
                let key = ActionKey(.enableCBT, pool: sourceName, subject: vdi.uuid, policy: owner)
                enables.append(key)
                add(PlannedAction(key: key, action: .enableCBT(CBTChange(disk: DiskJob(key: d.userdevice, vdiUUID: vdi.uuid, name: vdi.name, size: vdi.size))),
                                  vm: identity, reason: "ReplicationPolicy \(r.name) reads changed blocks"))
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
            let job = ReplicationJob(mode: mode, targetPool: target.name, targetSR: sr.uuid, targetSRName: sr.name, replicaName: spec.target.namePrefix + vm.name,
                                     networks: networks, keep: spec.keep, trustDestination: spec.trustDestination, disks: disks,
                                     replicaUUID: mode == .initial ? nil : record?.replicaUUID)
            add(PlannedAction(key: ActionKey(.replicate, pool: sourceName, subject: vm.uuid, policy: r.name), action: .replicate(job), vm: identity,
                              reason: why, after: enables))
        }
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

import Foundation
import HavenCatalog
import HavenCore
import HavenData
import HavenMover
import HavenSpec
import XenAPI

/// Rebuilds the catalog from what cannot be lost: the repositories' manifests (the backups) and
/// the pools' ownership marks (snapshots, replicas and their disks, CBT anchors of backups and of
/// replications, delta bases, CBT haven enabled, appliances and their disks).
public enum CatalogRebuild {
    public static func rebuild(engine: Engine, repositories: [String: BackupRepository]) async throws -> CatalogView {
        var view = CatalogView()
        for (name, repo) in repositories.sorted(by: { $0.key < $1.key }) {
            for m in try repo.manifests() {
                view.backups.append(BackupRecord(id: m.id, repository: name, pool: m.pool, policy: m.policy, vmUUID: m.vmUUID, vmName: m.vmName,
                                                 createdAt: m.createdAt, kind: m.kind.rawValue, size: m.totalSize, storedBytes: m.storedBytes))
            }
        }
        let byID = Dictionary(uniqueKeysWithValues: view.backups.map { ($0.id, $0) })
        struct PoolRecords {
            var vms: [VMRef: VMRecord]
            var vdis: [VDIRef: VDIRecord]
            var vbds: [VBDRef: VBDRecord]
        }
        // Intents are not rebuilt (`replaceAll` keeps them): what they name is found through them.
        let intents = (try? engine.catalog.view().intents) ?? []
        var pools: [(String, PoolRecords)] = []
        for pool in engine.desired.pools {
            guard let client = engine.clients[pool.name] else { continue }
            pools.append((pool.name, PoolRecords(vms: try await client.records(VMRecord.self), vdis: try await client.records(VDIRecord.self),
                                                 vbds: try await client.records(VBDRecord.self))))
        }
        // Replicas name their source VM and their policy (`replication:NAME`); they may live on
        // another pool than their source, so every pool is read before any is rebuilt.
        var replicationOf: [String: String] = [:]
        for (_, p) in pools {
            for vm in p.vms.values where vm.otherConfig[OwnershipMarks.owner] == engine.instance && !vm.isASnapshot
                && vm.otherConfig[OwnershipMarks.role] == "replica" {
                if let source = vm.otherConfig[OwnershipMarks.source], let policy = vm.otherConfig[OwnershipMarks.policy] { replicationOf[source] = policy }
            }
        }
        for (poolName, p) in pools {
            let (vms, vdis, vbds) = (p.vms, p.vdis, p.vbds)
            let vdiUUID = Dictionary(uniqueKeysWithValues: vdis.map { ($0.key, $0.value.uuid) })
            // haven's snapshots, and its replicas (VMs, not snapshots, that carry its mark). A
            // snapshot a recorded intent names (a run died between VM.snapshot and recording it;
            // a restore point carries the replica's copied marks) stays out: in the inventory, the
            // intent no longer adopted it and nothing planned it away (kill sweep: a restore
            // point with haven's mark and no role, and its disks, stayed for good).
            let pending = Set(intents.filter { $0.pool == poolName }.map { "\($0.vmUUID)\u{0}\($0.name)" })
            for (_, vm) in vms where vm.otherConfig[OwnershipMarks.owner] == engine.instance
                && (vm.isASnapshot || vm.otherConfig[OwnershipMarks.role] == "replica")
                && !(vm.isASnapshot && pending.contains("\(vms[vm.snapshotOf]?.uuid ?? "")\u{0}\(vm.nameLabel)")) {
                view.inventory.append(OwnedObject(pool: poolName, cls: "VM", uuid: vm.uuid, role: vm.otherConfig[OwnershipMarks.role] ?? "",
                                                  policy: vm.otherConfig[OwnershipMarks.policy] ?? "", vmUUID: vm.otherConfig[OwnershipMarks.source] ?? "",
                                                  createdAt: ISO8601DateFormatter().date(from: vm.otherConfig["haven.created"] ?? "") ?? Date()))
            }
            // Appliances: the VM, its own disks, and the pin of the certificate haven handed to it (public, in xenstore_data).
            var applianceDisks = Set<String>()
            for (_, vm) in vms where vm.isRealVM && vm.otherConfig[OwnershipMarks.owner] == engine.instance
                && vm.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceRole {
                let ap = vm.otherConfig[OwnershipMarks.appliancePool] ?? ""
                let created = ISO8601DateFormatter().date(from: vm.otherConfig["haven.created"] ?? "") ?? Date()
                view.inventory.append(OwnedObject(pool: poolName, cls: "VM", uuid: vm.uuid, role: OwnershipMarks.applianceRole, policy: applianceOwnerKey(ap),
                                                  vmUUID: vm.uuid, createdAt: created))
                for vbd in vm.vbds.compactMap({ vbds[$0] }) where !vbd.vdi.isNull {
                    guard let v = vdis[vbd.vdi], v.otherConfig[OwnershipMarks.owner] == engine.instance,
                          v.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceDiskRole else { continue }
                    applianceDisks.insert(v.uuid)
                    view.inventory.append(OwnedObject(pool: poolName, cls: "VDI", uuid: v.uuid, role: OwnershipMarks.applianceDiskRole,
                                                      policy: applianceOwnerKey(ap), vmUUID: vm.uuid, createdAt: created))
                }
                let pin = vm.xenstoreData[MoverXenstore.certificate].flatMap { try? CertificatePin(certificatePEM: $0) }?.description ?? ""
                view.appliances.append(ApplianceRecord(pool: poolName, uuid: vm.uuid, name: vm.nameLabel, appliancePool: ap,
                                                       staticAddress: vm.xenstoreData[MoverXenstore.ip] ?? "", pin: pin, createdAt: created))
            }
            for (ref, vdi) in vdis where !applianceDisks.contains(vdi.uuid) {
                // The VM a disk belongs to (the disk's current VBD on a VM that is not a snapshot).
                let diskOf = { (uuid: String) in vbds.values.first { vdiUUID[$0.vdi] == uuid && vms[$0.vm]?.isRealVM == true } }
                if vdi.otherConfig[OwnershipMarks.cbt] == engine.instance && !vdi.isASnapshot && vdi.type != "cbt_metadata" {
                    let vmUUID = diskOf(vdi.uuid).flatMap { vms[$0.vm]?.uuid } ?? ""
                    let policy = replicationOf[vmUUID]
                        ?? engine.desired.backupPolicies.first { $0.spec.pool.value == poolName && $0.spec.cbt }?.name ?? ""
                    view.cbtMarks.append(CBTMark(pool: poolName, vdiUUID: vdi.uuid, policy: policy))
                }
                guard vdi.otherConfig[OwnershipMarks.owner] == engine.instance else { continue }
                if vdi.otherConfig[OwnershipMarks.role] == "replica-disk" {
                    // A replica's own disk; a restore point's disks (snapshots) go with the restore point.
                    guard !vdi.isASnapshot, let vbd = vbds.values.first(where: { $0.vdi == ref }), let replica = vms[vbd.vm] else { continue }
                    view.inventory.append(OwnedObject(pool: poolName, cls: "VDI", uuid: vdi.uuid, role: "replica-disk",
                                                      policy: vdi.otherConfig[OwnershipMarks.policy] ?? replica.otherConfig[OwnershipMarks.policy] ?? "",
                                                      vmUUID: replica.otherConfig[OwnershipMarks.source] ?? "", createdAt: Date()))
                    continue
                }
                let sourceUUID = vdiUUID[vdi.snapshotOf] ?? ""
                // Which VM and disk the snapshot came from: the source VDI's current VBD.
                let vbd = diskOf(sourceUUID)
                let vmUUID = vbd.flatMap { vms[$0.vm]?.uuid } ?? ""
                // The newest backup of that VM whose disk was read from this snapshot VDI; else,
                // when the VM is replicated, the replication's anchor.
                var backupID = ""
                var policy = ""
                for (id, b) in byID where b.vmUUID == vmUUID {
                    if let repo = repositories[b.repository], let m = try? repo.manifest(id), m.disks.contains(where: { $0.sourceSnapshotVDI == vdi.uuid }) {
                        backupID = id
                        policy = b.policy
                    }
                }
                if backupID.isEmpty, let replication = replicationOf[vmUUID] { policy = replication }
                // A single-pass version is recorded under the replication's name; the snapshot it
                // was read from is the replication's anchor (kill sweep: recorded under the bare
                // name, it was an anchor no plan retired, beside the replication's own).
                if let replication = replicationOf[vmUUID], replication == replicationOwnerKey(policy) { policy = replication }
                view.inventory.append(OwnedObject(pool: poolName, cls: "VDI", uuid: vdi.uuid, role: vdi.otherConfig[OwnershipMarks.role] ?? "",
                                                  policy: policy, vmUUID: vmUUID, createdAt: Date()))
                if vdi.otherConfig[OwnershipMarks.role] == "delta-base", vdi.type != "cbt_metadata", !backupID.isEmpty, let vbd {
                    let snapshotVM = vbds.values.first { vdiUUID[$0.vdi] == vdi.uuid && vms[$0.vm]?.isASnapshot == true }.flatMap { vms[$0.vm]?.uuid } ?? ""
                    view.anchors.append(Anchor(pool: poolName, policy: policy, vmUUID: vmUUID, diskKey: vbd.userdevice, sourceVDI: sourceUUID,
                                               snapshotVM: snapshotVM, snapshotVDI: vdi.uuid, backupID: backupID, dataDestroyed: false, kind: .delta))
                } else if vdi.cbtEnabled, !policy.isEmpty, let vbd {
                    view.anchors.append(Anchor(pool: poolName, policy: policy, vmUUID: vmUUID, diskKey: vbd.userdevice, sourceVDI: sourceUUID,
                                               snapshotVM: "", snapshotVDI: vdi.uuid, backupID: backupID, dataDestroyed: vdi.type == "cbt_metadata"))
                }
            }
        }
        // One anchor per disk: the newest backup's.
        var newest: [String: Anchor] = [:]
        for a in view.anchors {
            let key = "\(a.pool)\u{0}\(a.policy)\u{0}\(a.vmUUID)\u{0}\(a.diskKey)"
            if let old = newest[key], (byID[old.backupID]?.createdAt ?? .distantPast) >= (byID[a.backupID]?.createdAt ?? .distantPast) { continue }
            newest[key] = a
        }
        view.anchors = Array(newest.values)
        try engine.catalog.replaceAll(with: view)
        return view
    }
}

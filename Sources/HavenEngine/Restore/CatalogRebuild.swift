import Foundation
import HavenCatalog
import HavenCore
import HavenData
import HavenMover
import HavenSpec
import XenAPI

/// Rebuilds the catalog from what cannot be lost: the repositories' manifests (the backups) and
/// the pools' ownership marks (snapshots, CBT anchors, CBT haven enabled, appliances).
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
        for pool in engine.desired.pools {
            guard let client = engine.clients[pool.name] else { continue }
            let vms = try await client.records(VMRecord.self)
            let vdis = try await client.records(VDIRecord.self)
            let vbds = try await client.records(VBDRecord.self)
            let vdiUUID = Dictionary(uniqueKeysWithValues: vdis.map { ($0.key, $0.value.uuid) })
            for (_, vm) in vms where vm.otherConfig[OwnershipMarks.owner] == engine.instance && vm.isASnapshot {
                view.inventory.append(OwnedObject(pool: pool.name, cls: "VM", uuid: vm.uuid, role: vm.otherConfig[OwnershipMarks.role] ?? "",
                                                  policy: vm.otherConfig[OwnershipMarks.policy] ?? "", vmUUID: vm.otherConfig[OwnershipMarks.source] ?? "",
                                                  createdAt: ISO8601DateFormatter().date(from: vm.otherConfig["haven.created"] ?? "") ?? Date()))
            }
            // Appliances: the VM, its own disks, and the pin of the certificate haven handed to it (public, in xenstore_data).
            var applianceDisks = Set<String>()
            for (_, vm) in vms where vm.isRealVM && vm.otherConfig[OwnershipMarks.owner] == engine.instance
                && vm.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceRole {
                let ap = vm.otherConfig[OwnershipMarks.appliancePool] ?? ""
                let created = ISO8601DateFormatter().date(from: vm.otherConfig["haven.created"] ?? "") ?? Date()
                view.inventory.append(OwnedObject(pool: pool.name, cls: "VM", uuid: vm.uuid, role: OwnershipMarks.applianceRole, policy: applianceOwnerKey(ap),
                                                  vmUUID: vm.uuid, createdAt: created))
                for vbd in vm.vbds.compactMap({ vbds[$0] }) where !vbd.vdi.isNull {
                    guard let v = vdis[vbd.vdi], v.otherConfig[OwnershipMarks.owner] == engine.instance,
                          v.otherConfig[OwnershipMarks.role] == OwnershipMarks.applianceDiskRole else { continue }
                    applianceDisks.insert(v.uuid)
                    view.inventory.append(OwnedObject(pool: pool.name, cls: "VDI", uuid: v.uuid, role: OwnershipMarks.applianceDiskRole,
                                                      policy: applianceOwnerKey(ap), vmUUID: vm.uuid, createdAt: created))
                }
                let pin = vm.xenstoreData[MoverXenstore.certificate].flatMap { try? CertificatePin(certificatePEM: $0) }?.description ?? ""
                view.appliances.append(ApplianceRecord(pool: pool.name, uuid: vm.uuid, name: vm.nameLabel, appliancePool: ap,
                                                       staticAddress: vm.xenstoreData[MoverXenstore.ip] ?? "", pin: pin, createdAt: created))
            }
            for (_, vdi) in vdis where !applianceDisks.contains(vdi.uuid) {
                if vdi.otherConfig[OwnershipMarks.cbt] == engine.instance && !vdi.isASnapshot {
                    let policy = engine.desired.backupPolicies.first { $0.spec.pool.value == pool.name && $0.spec.cbt }?.name ?? ""
                    view.cbtMarks.append(CBTMark(pool: pool.name, vdiUUID: vdi.uuid, policy: policy))
                }
                guard vdi.otherConfig[OwnershipMarks.owner] == engine.instance else { continue }
                let sourceUUID = vdiUUID[vdi.snapshotOf] ?? ""
                // Which VM and disk the snapshot came from: the source VDI's current VBD.
                let vbd = vbds.values.first { vdiUUID[$0.vdi] == sourceUUID && vms[$0.vm]?.isRealVM == true }
                let vmUUID = vbd.flatMap { vms[$0.vm]?.uuid } ?? ""
                // The newest backup of that VM whose disk was read from this snapshot VDI.
                var backupID = ""
                var policy = ""
                for (id, b) in byID where b.vmUUID == vmUUID {
                    if let repo = repositories[b.repository], let m = try? repo.manifest(id), m.disks.contains(where: { $0.sourceSnapshotVDI == vdi.uuid }) {
                        backupID = id
                        policy = b.policy
                    }
                }
                view.inventory.append(OwnedObject(pool: pool.name, cls: "VDI", uuid: vdi.uuid, role: vdi.otherConfig[OwnershipMarks.role] ?? "",
                                                  policy: policy, vmUUID: vmUUID, createdAt: Date()))
                if vdi.cbtEnabled, !backupID.isEmpty, let vbd {
                    view.anchors.append(Anchor(pool: pool.name, policy: policy, vmUUID: vmUUID, diskKey: vbd.userdevice, sourceVDI: sourceUUID,
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

import CrashPoints
import Foundation
import HavenCatalog
import HavenCore
import HavenData
import XenAPI

#if canImport(Glibc)
    import Glibc
#endif

/// method xva: the whole VM exported (`/export`) from a fresh marked snapshot, staged, imported
/// on the target (`/import?sr_id=`) as a new VM, made a replica (marks, blocked start, networks
/// mapped, no template), checked against the snapshot (same disks and sizes), given a restore
/// point and recorded — and only then is the previous replica destroyed. There is never a moment
/// with no replica: a run stopped in between leaves two, and the next plan removes the one that
/// is not the replica of record. With singlePass the staged archive is also stored as an XVA
/// backup version (committed before the import, so the record never names a missing version).
extension ReplicateRun {
    func runXVA(vmRef: VMRef, vmRecord: VMRecord, started: Date) async throws -> ActionOutcome {
        let limits = ctx.limiters(sourcePool)
        let stamp = ISO8601DateFormatter().string(from: started)
        let snapshotName = "haven replica \(policy) \(vmRecord.nameLabel) \(stamp)"
        try ctx.catalog.recordIntent(SnapshotIntent(pool: sourcePool, vmUUID: vmRecord.uuid, policy: owner, name: snapshotName, requestedAt: started))
        let snapshot: VMRef
        do {
            snapshot = try await limits.snapshots.with { try await withRetry(on: log) { try await source.snapshot(vmRef, name: snapshotName) } }
        } catch let e as XenAPIError {
            try? ctx.catalog.clearIntent(pool: sourcePool, name: snapshotName)
            throw e
        }
        do {
            try await markSnapshot(snapshot, source: vmRecord.uuid, started: started)
            let snapRecord = try await source.record(snapshot)
            var snapDisks: [String: VDIRecord] = [:]
            for vbd in snapRecord.vbds {
                let b = try await source.record(vbd)
                guard b.type == "Disk", !b.vdi.isNull else { continue }
                let v = try await source.record(b.vdi)
                try await source.setOtherConfig(b.vdi, key: OwnershipMarks.owner, value: ctx.instance)
                try await source.setOtherConfig(b.vdi, key: OwnershipMarks.role, value: "replication-snapshot-disk")
                try ctx.catalog.own(OwnedObject(pool: sourcePool, cls: "VDI", uuid: v.uuid, role: "replication-snapshot-disk", policy: owner,
                                                vmUUID: vmRecord.uuid, createdAt: started))
                snapDisks[b.userdevice] = v
            }
            // Staged: an import needs its length up front, an export does not say it.
            let file = ctx.state.scratch.appendingPathComponent("replica-\(snapRecord.uuid).xva").path
            FileManager.default.createFile(atPath: file, contents: nil, attributes: [.posixPermissions: 0o600])
            defer { try? FileManager.default.removeItem(atPath: file) }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
            let sink = XVASink(handle: handle)
            try await limits.transfers.with { try await source.exportXVA(snapshot) { try sink.write($0) } }
            try handle.close()
            let length = Int64((try FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.int64Value ?? 0)
            log("exported \(vmRecord.nameLabel) as XVA (\(length) bytes)")

            var backupID: String?
            if let sp = job.singlePass {
                backupID = try await storeXVA(file: file, repository: sp.repository, vm: vmRecord, snapshotUUID: snapRecord.uuid, started: started)
            }

            // The new replica: imported, then made a replica before anything else.
            let intent = "\(replicaIntentPrefix)\(job.replicaName) \(stamp)"
            try ctx.catalog.recordIntent(SnapshotIntent(pool: job.targetPool, vmUUID: vmRecord.uuid, policy: owner, name: intent, requestedAt: started))
            let srRef = try await target.sr(uuid: job.targetSR)
            let reader = try StagedFileReader(file)
            let imported = try await limits.transfers.with {
                try await target.importXVA(sr: srRef, length: length) { try reader.read(into: $0) }
            }
            CrashPoints.step("xva-import-returned")
            guard imported.count == 1, let ref = imported.first else {
                throw EngineError(.action, vmRecord.nameLabel, "importing the XVA gave \(imported.count) VMs, expected one")
            }
            let replica = try await makeReplica(ref, vmRecord: vmRecord, snapDisks: snapDisks, started: started)
            try ctx.catalog.clearIntent(pool: job.targetPool, name: intent)
            CrashPoints.step("xva-imported")

            // Verified: the replica has the snapshot's disks, with the same sizes.
            for (key, snap) in snapDisks {
                guard let uuid = replica.diskUUIDs[key], let vdi = replica.disks[key] else {
                    throw EngineError(.action, job.replicaName, "the imported replica has no disk \(key); the previous replica stays")
                }
                let size = try await target.record(vdi).virtualSize
                guard size == snap.virtualSize else {
                    throw EngineError(.action, uuid, "disk \(key) of the imported replica has \(size) bytes, the snapshot \(snap.virtualSize); the previous replica stays")
                }
            }
            let point = try await restorePoint(replica, started: started)
            try ctx.catalog.setReplica(ReplicaRecord(policy: policy, sourcePool: sourcePool, sourceVM: vmRecord.uuid, sourceName: vmRecord.nameLabel,
                                                     targetPool: job.targetPool, replicaUUID: replica.uuid, disks: replica.diskUUIDs, lastSync: started))
            CrashPoints.step("xva-recorded")
            var notes: [String] = []
            if let old = job.replicaUUID, old != replica.uuid {
                do {
                    if let oldRef = try await lookup({ try await target.vm(uuid: old) }) {
                        let rec = try await target.record(oldRef)
                        if rec.otherConfig[OwnershipMarks.owner] == ctx.instance && rec.otherConfig[OwnershipMarks.role] == "replica" {
                            for line in try await destroyReplica(target, pool: job.targetPool, ref: oldRef, instance: ctx.instance, catalog: ctx.catalog, log: log) {
                                log(line)
                            }
                        }
                    }
                } catch {
                    let text = "the previous replica \(old) could not be removed (\(error)); the next run removes it"
                    log(text)
                    notes.append(text)
                }
            }
            await discard(snapshot)
            return ActionOutcome("xva sync of \(vmRecord.nameLabel) to \(job.replicaName) on \(job.targetPool): imported \(length) bytes as \(replica.uuid); restore point \(point)"
                                    + (backupID.map { "; backup version \($0)" } ?? ""),
                                 backupID: backupID, bytesRead: length, bytesStored: length, notes: notes)
        } catch {
            let me = self
            let snap = snapshot
            await Task.detached { await me.discard(snap) }.value
            throw error
        }
    }

    /// Turns the imported VM into a replica: marks first (a crash from here leaves a VM the next
    /// plan can prove haven's), then no template, name, blocked start, disks marked, VIFs on the
    /// mapped networks.
    func makeReplica(_ ref: VMRef, vmRecord: VMRecord, snapDisks: [String: VDIRecord], started: Date) async throws -> Replica {
        // The import carries the snapshot's marks: a mark already right is not rewritten (a rewrite
        // is a remove then an add, and a run stopped in between would leave the import without
        // the owner mark that proves it haven's).
        var rec = try await target.record(ref)
        for (k, v) in [(OwnershipMarks.owner, ctx.instance), (OwnershipMarks.role, "replica"), (OwnershipMarks.policy, owner),
                       (OwnershipMarks.source, vmRecord.uuid), ("haven.created", ISO8601DateFormatter().string(from: started))]
            where rec.otherConfig[k] != v {
            try await target.setOtherConfig(ref, key: k, value: v)
        }
        rec = try await target.record(ref)
        try ctx.catalog.own(OwnedObject(pool: job.targetPool, cls: "VM", uuid: rec.uuid, role: "replica", policy: owner, vmUUID: vmRecord.uuid, createdAt: started))
        if rec.isATemplate { try await target.setIsATemplate(ref, false) }
        // HA never restarts a replica: the import carries the source's restart priority.
        if rec.haRestartPriority != "" { try await target.setHARestartPriority(ref, "") }
        try await target.setNameLabel(ref, job.replicaName)
        try await target.setBlockedOperations(ref, Dictionary(uniqueKeysWithValues: Self.blockedOperations.map { ($0, blockReason(vmRecord.nameLabel)) }))
        rec = try await target.record(ref)
        var disks: [String: VDIRef] = [:]
        var uuids: [String: String] = [:]
        for vbd in rec.vbds {
            let b = try await target.record(vbd)
            guard b.type == "Disk", !b.vdi.isNull else { continue }
            let v = try await target.record(b.vdi)
            for (k, value) in [(OwnershipMarks.owner, ctx.instance), (OwnershipMarks.role, "replica-disk"), (OwnershipMarks.policy, owner),
                               (OwnershipMarks.source, snapDisks[b.userdevice]?.uuid ?? "")] {
                try await target.setOtherConfig(b.vdi, key: k, value: value)
            }
            try ctx.catalog.own(OwnedObject(pool: job.targetPool, cls: "VDI", uuid: v.uuid, role: "replica-disk", policy: owner, vmUUID: vmRecord.uuid, createdAt: started))
            disks[b.userdevice] = b.vdi
            uuids[b.userdevice] = v.uuid
        }
        // The import puts each VIF on the target network of the same name (or the first); the
        // mapping decides.
        let networks = try await target.records(NetworkRecord.self)
        let sourceNetworks = try await source.records(NetworkRecord.self)
        var wanted: [String: String] = [:]  // device -> target network name
        for vifRef in vmRecord.vifs {
            let vif = try await source.record(vifRef)
            let name = sourceNetworks[vif.network]?.nameLabel ?? ""
            guard let mapped = job.networks[name] else {
                throw EngineError(.action, name, "network \(name) of \(vmRecord.nameLabel) has no mapping on \(job.targetPool)")
            }
            wanted[vif.device] = mapped
        }
        for vifRef in rec.vifs {
            let vif = try await target.record(vifRef)
            if let want = wanted[vif.device], networks[vif.network]?.nameLabel == want {
                wanted[vif.device] = nil
                continue
            }
            try await target.destroy(vifRef)
        }
        for (device, name) in wanted.sorted(by: { $0.key < $1.key }) {
            guard let net = networks.first(where: { $0.value.nameLabel == name })?.key else {
                throw EngineError(.action, name, "no network \(name) on \(job.targetPool)")
            }
            _ = try await target.createVIF([
                "VM": ref.value, "network": net.value, "device": .string(device), "MAC": "", "MTU": 1500,
                "other_config": [:], "qos_algorithm_type": "", "qos_algorithm_params": [:],
            ])
        }
        log("imported replica \(job.replicaName) (\(rec.uuid)) on \(job.targetPool)")
        return Replica(ref: ref, uuid: rec.uuid, disks: disks, diskUUIDs: uuids)
    }

    /// The staged archive stored and committed as an XVA backup version (singlePass).
    func storeXVA(file: String, repository: RepositoryTarget, vm: VMRecord, snapshotUUID: String, started: Date) async throws -> String {
        let repo = try ctx.repository(repository)
        let session = try await blocking { try repo.beginWriteSession(lockTimeout: 600) }
        defer { session.close() }
        let source = try FileDiskSource(path: file)
        let request = DiskBackup.Request(key: "xva", name: "\(vm.nameLabel).xva", vdiUUID: "", sourceSnapshotVDI: snapshotUUID, source: source)
        let version = try await blocking { try DiskBackup(repository: repo).run(request) }
        var vifs: [VIFInfo] = []
        let networks = try await self.source.records(NetworkRecord.self)
        for vif in vm.vifs {
            if let r = try? await self.source.record(vif) { vifs.append(VIFInfo(device: r.device, mac: r.mac, network: networks[r.network]?.nameLabel ?? "")) }
        }
        var manifest = BackupManifest(createdAt: started, kind: .xva, vmUUID: vm.uuid, vmName: vm.nameLabel, pool: sourcePool, policy: policy,
                                      vmRecord: vm.fields, sourceSnapshotUUID: snapshotUUID, disks: [version],
                                      notes: ["method": "single-pass", "reason": action.reason, "replica": job.replicaName])
        manifest.vifs = vifs
        let toCommit = manifest
        try await blocking { try session.commit(toCommit) }
        session.close()
        try ctx.catalog.record(BackupRecord(
            id: manifest.id, repository: repository.name, pool: sourcePool, policy: policy, vmUUID: vm.uuid, vmName: vm.nameLabel,
            createdAt: started, kind: manifest.kind.rawValue, size: manifest.totalSize, storedBytes: manifest.storedBytes,
            note: "single pass: the export of ReplicationPolicy \(policy)'s xva sync to \(job.replicaName) on \(job.targetPool)"))
        return manifest.id
    }
}

/// Sequential reads of a staged file for an upload.
final class StagedFileReader: @unchecked Sendable {
    // @unchecked: one upload reads it, sequentially, from one thread at a time.
    let fd: Int32
    let path: String
    var offset: Int64 = 0

    init(_ path: String) throws {
        self.path = path
        fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw EngineError(.action, path, "cannot open \(path)") }
    }

    deinit { close(fd) }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = pread(fd, buffer.baseAddress!, buffer.count, off_t(offset))
        guard n >= 0 else { throw EngineError(.action, path, "cannot read \(path)") }
        offset += Int64(n)
        return n
    }
}

import Foundation
import HavenCore
import HavenData
import HavenSpec
import XenAPI

/// One backup of one VM: hooks, snapshot (marked as haven's), each disk read (changed blocks
/// over NBD, the whole disk over NBD, or through /export_raw_vdi), the manifest committed, the
/// catalog updated, and only then the snapshot's data purged down to CBT metadata.
struct BackupRun {
    let executor: Executor
    let action: PlanAction
    let client: XenAPIClient
    let limits: (snapshots: AsyncLimiter, transfers: AsyncLimiter)

    var pool: String { action.pool }
    var instance: String { executor.instance }
    func log(_ s: String) { executor.emit(.log(action, s)) }

    func run() async throws -> String {
        guard let policy = executor.desired.backupPolicies.first(where: { $0.name == action.policy }) else {
            throw EngineError(.action, action.policy ?? "", "BackupPolicy \(action.policy ?? "") is no longer declared")
        }
        let spec = policy.spec
        let repo = try executor.repository(spec.repository.value)
        let vmRef = try await client.vm(uuid: action.vmUUID ?? "")
        let vmRecord = try await client.record(vmRef)
        let started = executor.now()
        var notes: [String: String] = ["method": action.method?.rawValue ?? "", "reason": action.reason]

        // Quiesce: xapi removed VM.snapshot_with_quiesce in 8.1; older pools need guest tools.
        if spec.quiesce == .require {
            throw EngineError(.action, vmRecord.nameLabel, "quiesce: require, but quiesced snapshots are not available (VM.snapshot_with_quiesce is gone since XenServer 8.1); the VM was not backed up")
        }
        if spec.quiesce == .prefer { notes["consistency"] = "crash-consistent (quiesced snapshots are not available)" }

        if let hook = spec.hooks.preSnapshot {
            try await runHook(hook, "preSnapshot", vm: vmRecord, notes: &notes)
        }
        let snapshotName = "haven \(policy.name) \(vmRecord.nameLabel) \(ISO8601DateFormatter().string(from: started))"
        let planned = Set(action.disks.map(\.vdiUUID))
        var ignore: [VDIRef] = []
        let caps = try await client.currentCapabilities()
        if caps.snapshotTakesIgnoreVDIs {
            for vbd in vmRecord.vbds {
                let r = try await client.record(vbd)
                if r.type == "Disk", !r.vdi.isNull, let uuid = try? await client.record(r.vdi).uuid, !planned.contains(uuid) { ignore.append(r.vdi) }
            }
        }
        let snapshot: VMRef
        let ignored = ignore
        do {
            snapshot = try await limits.snapshots.with { try await withRetry(on: log) { try await client.snapshot(vmRef, name: snapshotName, ignoreVDIs: ignored) } }
        } catch {
            if let hook = spec.hooks.postSnapshot { try? await runHook(hook, "postSnapshot", vm: vmRecord, notes: &notes) }
            throw error
        }
        do {
            return try await afterSnapshot(snapshot, vmRecord: vmRecord, policy: policy, repo: repo, started: started, notes: notes)
        } catch {
            // A failed backup leaves nothing behind: the snapshot and its disks go (anchors stay).
            await discard(snapshot)
            throw error
        }
    }

    func discard(_ snapshot: VMRef) async {
        guard let record = try? await client.record(snapshot) else { return }
        var vdis: [(VDIRef, String)] = []
        for vbd in record.vbds {
            if let r = try? await client.record(vbd), r.type == "Disk", !r.vdi.isNull, let v = try? await client.record(r.vdi) {
                vdis.append((r.vdi, v.uuid))
            }
        }
        let anchors = Set(((try? executor.catalog.view())?.anchors ?? []).map(\.snapshotVDI))
        do {
            try await withRetry(on: log) { try await client.destroy(snapshot) }
            try executor.catalog.disown(pool: pool, uuid: record.uuid)
            for (ref, uuid) in vdis where !anchors.contains(uuid) {
                try await withRetry(on: log) { try await client.destroy(ref) }
                try executor.catalog.disown(pool: pool, uuid: uuid)
            }
            log("removed the snapshot of the failed backup")
        } catch {
            log("could not remove the snapshot of the failed backup (\(error)); it carries haven's mark and the next plan removes it")
        }
    }

    func afterSnapshot(_ snapshot: VMRef, vmRecord: VMRecord, policy: BackupPolicy, repo: BackupRepository, started: Date,
                       notes initialNotes: [String: String]) async throws -> String {
        var notes = initialNotes
        let spec = policy.spec
        let snapRecord = try await client.record(snapshot)
        // Mark it as haven's before anything else can fail: it must never become an orphan.
        try await mark(vm: snapshot, role: "backup-snapshot", policy: policy.name, source: vmRecord.uuid, created: started)
        try executor.catalog.own(OwnedObject(pool: pool, cls: "VM", uuid: snapRecord.uuid, role: "backup-snapshot", policy: policy.name,
                                             vmUUID: vmRecord.uuid, createdAt: started))
        var snapDisks: [String: (VDIRef, VDIRecord)] = [:]
        var otherSnapDisks: [(VDIRef, VDIRecord)] = []
        for vbd in snapRecord.vbds {
            let r = try await client.record(vbd)
            guard r.type == "Disk", !r.vdi.isNull else { continue }
            let vdi = try await client.record(r.vdi)
            try await client.setOtherConfig(r.vdi, key: OwnershipMarks.owner, value: instance)
            try await client.setOtherConfig(r.vdi, key: OwnershipMarks.role, value: "snapshot-disk")
            try executor.catalog.own(OwnedObject(pool: pool, cls: "VDI", uuid: vdi.uuid, role: "snapshot-disk", policy: policy.name,
                                                 vmUUID: vmRecord.uuid, createdAt: started))
            if action.disks.contains(where: { $0.key == r.userdevice }) { snapDisks[r.userdevice] = (r.vdi, vdi) } else { otherSnapDisks.append((r.vdi, vdi)) }
        }
        if let hook = spec.hooks.postSnapshot {
            try await runHook(hook, "postSnapshot", vm: vmRecord, notes: &notes)
        }

        // Read every disk (or the whole VM as XVA) into the repository.
        var versions: [DiskVersion] = []
        let observed = executor.observed[pool]
        let connections = executor.desired.pool(named: pool)?.spec.nbd.connections ?? 4
        let nbdRequired = executor.desired.pool(named: pool)?.spec.nbd.required ?? false
        if action.method == .xva {
            versions.append(try await limits.transfers.with { try await exportXVA(snapshot, vm: vmRecord, snapshotUUID: snapRecord.uuid, repo: repo) })
        }
        for disk in action.disks where action.method != .xva {
            guard let (snapVDI, snapInfo) = snapDisks[disk.key] else {
                throw EngineError(.action, vmRecord.nameLabel, "the snapshot has no disk \(disk.key)")
            }
            let version = try await limits.transfers.with {
                try await transfer(disk: disk, snapVDI: snapVDI, snapInfo: snapInfo, repo: repo, observed: observed,
                                   connections: connections, nbdRequired: nbdRequired)
            }
            versions.append(version)
        }
        var vifs: [VIFInfo] = []
        let networks = try await client.records(NetworkRecord.self)
        for vif in vmRecord.vifs {
            if let r = try? await client.record(vif) { vifs.append(VIFInfo(device: r.device, mac: r.mac, network: networks[r.network]?.nameLabel ?? "")) }
        }
        var manifest = BackupManifest(
            createdAt: started, kind: action.method == .cbtIncremental ? .incremental : (action.method == .xva ? .xva : .full),
            vmUUID: vmRecord.uuid, vmName: vmRecord.nameLabel,
            pool: pool, policy: policy.name, vmRecord: vmRecord.fields, sourceSnapshotUUID: snapRecord.uuid, disks: versions, notes: notes)
        manifest.vifs = vifs
        let committed = manifest
        try await blocking { try repo.commit(committed) }
        try executor.catalog.record(BackupRecord(
            id: manifest.id, repository: spec.repository.value, pool: pool, policy: policy.name, vmUUID: vmRecord.uuid, vmName: vmRecord.nameLabel,
            createdAt: started, kind: manifest.kind.rawValue, size: manifest.totalSize, storedBytes: manifest.storedBytes))

        // Only now that the version is committed: anchors, then purge.
        let anchorCapable = action.method != .xva && !snapDisks.isEmpty && snapDisks.values.allSatisfy { $0.1.cbtEnabled }
        if anchorCapable {
            for (key, (_, info)) in snapDisks {
                let source = action.disks.first { $0.key == key }?.vdiUUID ?? ""
                try executor.catalog.setAnchor(Anchor(pool: pool, policy: policy.name, vmUUID: vmRecord.uuid, diskKey: key, sourceVDI: source,
                                                      snapshotVM: snapRecord.uuid, snapshotVDI: info.uuid, backupID: manifest.id, dataDestroyed: false))
            }
        }
        if spec.purgeSnapshotData {
            try await withRetry(on: log) { try await client.destroy(snapshot) }
            try executor.catalog.disown(pool: pool, uuid: snapRecord.uuid)
            for (key, (ref, info)) in snapDisks {
                if anchorCapable {
                    try await withRetry(attempts: 8, on: log) { try await client.dataDestroy(ref) }
                    try await client.setOtherConfig(ref, key: OwnershipMarks.role, value: "cbt-anchor")
                    let source = action.disks.first { $0.key == key }?.vdiUUID ?? ""
                    try executor.catalog.setAnchor(Anchor(pool: pool, policy: policy.name, vmUUID: vmRecord.uuid, diskKey: key, sourceVDI: source,
                                                          snapshotVM: "", snapshotVDI: info.uuid, backupID: manifest.id, dataDestroyed: true))
                    try executor.catalog.own(OwnedObject(pool: pool, cls: "VDI", uuid: info.uuid, role: "cbt-anchor", policy: policy.name,
                                                         vmUUID: vmRecord.uuid, createdAt: started))
                } else {
                    try await withRetry(on: log) { try await client.destroy(ref) }
                    try executor.catalog.disown(pool: pool, uuid: info.uuid)
                }
            }
            for (ref, info) in otherSnapDisks {
                try await withRetry(on: log) { try await client.destroy(ref) }
                try executor.catalog.disown(pool: pool, uuid: info.uuid)
            }
        }
        let stored = manifest.storedBytes
        return "\(manifest.kind.rawValue) backup \(manifest.id): \(versions.count) disk\(versions.count == 1 ? "" : "s"), read \(versions.reduce(0) { $0 + $1.readBytes }) bytes, stored \(stored) new bytes"
    }

    func transfer(disk: PlanAction.Disk, snapVDI: VDIRef, snapInfo: VDIRecord, repo: BackupRepository, observed: ObservedPool?,
                  connections: Int, nbdRequired: Bool) async throws -> DiskVersion {
        var source: any DiskSource
        var previous: DiskVersion?
        var changed: ChangedBlocks?
        // The changed blocks first: an open NBD connection attaches the VDI to dom0, and xapi
        // refuses list_changed_blocks on an attached VDI.
        if let anchor = disk.anchorVDI, let base = disk.baseBackup, action.method == .cbtIncremental {
            let from = try await client.vdi(uuid: anchor)
            let bitmap = try await withRetry(on: log) { try await client.listChangedBlocks(from: from, to: snapVDI) }
            changed = try ChangedBlocks(base64: bitmap, diskSize: snapInfo.virtualSize)
            previous = try repo.manifest(base).disks.first { $0.key == disk.key }
            if previous == nil { changed = nil }
            log("disk \(disk.key): \(changed?.blocks.count ?? 0) changed blocks since \(base)")
        }
        let infos = observed?.nbdAvailable == true ? (try? await client.nbdInfo(snapVDI)) ?? [] : []
        if let info = infos.first {
            let endpoint = NBDEndpoint(address: info.address, port: info.port, exportName: info.exportName,
                                       tls: observed?.nbdTLS == false ? .off : .certificate(info.cert))
            let size = snapInfo.virtualSize
            source = try await blocking { try NBDDiskSource(endpoint, size: size, connections: connections) }
        } else {
            if nbdRequired { throw EngineError(.action, disk.name, "no NBD server for \(disk.name) and spec.nbd.required is true") }
            source = ExportDiskSource(client: client, vdi: snapVDI, size: snapInfo.virtualSize, label: "/export_raw_vdi \(snapInfo.uuid)")
        }
        let request = DiskBackup.Request(key: disk.key, name: disk.name, vdiUUID: disk.vdiUUID, sourceSnapshotVDI: snapInfo.uuid, source: source,
                                         previous: previous, changed: changed)
        let emit = executor.emit
        let act = action
        return try await blocking {
            try repo.withLock(exclusive: false) {
                try DiskBackup(repository: repo).run(request) { p in
                    emit(.progress(act, disk: disk.name, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal))
                }
            }
        }
    }

    /// The snapshot as XVA (`/export`), staged in the state directory's scratch space (its size is
    /// not known up front), then stored like a disk under the key `xva`.
    func exportXVA(_ snapshot: VMRef, vm: VMRecord, snapshotUUID: String, repo: BackupRepository) async throws -> DiskVersion {
        let file = executor.state.scratch.appendingPathComponent("\(snapshotUUID).xva").path
        FileManager.default.createFile(atPath: file, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: file) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        let sink = XVASink(handle: handle)
        try await client.exportXVA(snapshot) { try sink.write($0) }
        try handle.close()
        let source = try FileDiskSource(path: file)
        let request = DiskBackup.Request(key: "xva", name: "\(vm.nameLabel).xva", vdiUUID: "", sourceSnapshotVDI: snapshotUUID, source: source)
        let emit = executor.emit
        let act = action
        return try await blocking {
            try repo.withLock(exclusive: false) {
                try DiskBackup(repository: repo).run(request) { p in
                    emit(.progress(act, disk: "xva", bytesDone: p.bytesDone, bytesTotal: p.bytesTotal))
                }
            }
        }
    }

    func mark(vm: VMRef, role: String, policy: String, source: String, created: Date) async throws {
        let marks = [OwnershipMarks.owner: instance, OwnershipMarks.role: role, OwnershipMarks.policy: policy, OwnershipMarks.source: source,
                     "haven.created": ISO8601DateFormatter().string(from: created)]
        for (k, v) in marks.sorted(by: { $0.key < $1.key }) { try await client.setOtherConfig(vm, key: k, value: v) }
    }

    func runHook(_ hook: BackupPolicySpec.Hook, _ name: String, vm: VMRecord, notes: inout [String: String]) async throws {
        let outcome = try await HookRunner.run(hook, environment: ["HAVEN_VM_NAME": vm.nameLabel, "HAVEN_VM_UUID": vm.uuid, "HAVEN_HOOK": name])
        for line in outcome.output.split(separator: "\n", omittingEmptySubsequences: true) { log("\(name): \(line)") }
        let summary = outcome.timedOut ? "timed out after \(hook.timeout)" : "exit \(outcome.status)"
        notes["hook.\(name)"] = summary
        if !outcome.ok {
            if hook.onError == .fail {
                throw EngineError(.action, vm.nameLabel, "\(name) hook \(hook.command.joined(separator: " ")) failed (\(summary)); the VM was not backed up")
            }
            log("\(name) hook failed (\(summary)); continuing (onError: continue)")
        }
    }
}

/// Writes an export stream to a file from the transfer thread.
final class XVASink: @unchecked Sendable {
    // @unchecked: used only by the one transfer thread, sequentially.
    let handle: FileHandle
    init(handle: FileHandle) { self.handle = handle }
    func write(_ bytes: UnsafeRawBufferPointer) throws { try handle.write(contentsOf: Data(bytes)) }
}

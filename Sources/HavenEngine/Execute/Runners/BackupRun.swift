import Foundation
import HavenCatalog
import HavenCore
import HavenData
import XenAPI

/// One backup of one VM: hooks, snapshot (marked as haven's), each disk read (changed blocks
/// over NBD, the whole disk over NBD, or through /export_raw_vdi), the manifest committed, the
/// catalog updated, and only then the snapshot's data purged down to CBT metadata. Everything it
/// needs comes from the plan (`BackupJob`, the pool's settings), never from the configuration.
/// Cancelled or failed before the commit, it removes its snapshot; nothing half-written is
/// ever a version.
struct BackupRun {
    let ctx: ExecutionContext
    let action: PlannedAction
    let job: BackupJob
    let client: XenAPIClient

    var pool: String { action.pool }
    var policy: String { action.policy ?? "" }
    var instance: String { ctx.instance }
    func log(_ s: String) { ctx.log(action, s) }

    func run() async throws -> ActionOutcome {
        let repo = try ctx.repository(job.repository)
        guard let vmRef = try await lookup({ try await client.vm(uuid: action.vm?.uuid ?? "") }) else {
            throw EngineError(.action, action.vm?.name ?? "", "VM \(action.vm?.name ?? "") no longer exists on pool \(pool)")
        }
        let vmRecord = try await client.record(vmRef)
        let started = ctx.now()
        var notes: [String: String] = ["method": job.method.rawValue, "reason": action.reason]

        // Quiesce: xapi removed VM.snapshot_with_quiesce in 8.1; older pools need guest tools.
        if job.quiesce == "require" {
            throw EngineError(.action, vmRecord.nameLabel, "quiesce: require, but quiesced snapshots are not available (VM.snapshot_with_quiesce is gone since XenServer 8.1); the VM was not backed up")
        }
        if job.quiesce == "prefer" { notes["consistency"] = "crash-consistent (quiesced snapshots are not available)" }

        if let hook = job.preSnapshot {
            try await runHook(hook, "preSnapshot", vm: vmRecord, notes: &notes)
        }
        try Task.checkCancellation()
        let snapshotName = "haven \(policy) \(vmRecord.nameLabel) \(ISO8601DateFormatter().string(from: started))"
        let planned = Set(job.disks.map(\.vdiUUID))
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
        let limits = ctx.limiters(pool)
        // The intent first: if this process dies inside VM.snapshot, the snapshot the pool still
        // makes is found by it (VM, exact name) and removed by the next run.
        try ctx.catalog.recordIntent(SnapshotIntent(pool: pool, vmUUID: vmRecord.uuid, policy: policy, name: snapshotName, requestedAt: started))
        do {
            snapshot = try await limits.snapshots.with { try await withRetry(on: log) { try await client.snapshot(vmRef, name: snapshotName, ignoreVDIs: ignored) } }
        } catch {
            if let hook = job.postSnapshot { try? await runHook(hook, "postSnapshot", vm: vmRecord, notes: &notes) }
            // xapi answered: no snapshot was made (a lost reply keeps the intent for the next run).
            if error is XenAPIError { try? ctx.catalog.clearIntent(pool: pool, name: snapshotName) }
            throw error
        }
        var committed = false
        do {
            return try await afterSnapshot(snapshot, vmRecord: vmRecord, repo: repo, started: started, notes: notes, committed: &committed)
        } catch {
            // Before the commit, a failed or cancelled backup leaves nothing behind: the snapshot
            // and its disks go (anchors stay). The clean-up runs even when the run is cancelled.
            if !committed {
                let me = self
                await Task.detached { await me.discard(snapshot) }.value
            }
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
        let anchors = Set(((try? ctx.catalog.view())?.anchors ?? []).map(\.snapshotVDI))
        do {
            // Disks before the VM (a kill in between leaves the marked VM to be found again).
            for (ref, uuid) in vdis where !anchors.contains(uuid) {
                try await withRetry(on: log) { try await client.destroy(ref) }
                try ctx.catalog.disown(pool: pool, uuid: uuid)
            }
            try await withRetry(on: log) { try await client.destroy(snapshot) }
            try ctx.catalog.disown(pool: pool, uuid: record.uuid)
            log("removed the snapshot of the failed backup")
        } catch {
            log("could not remove the snapshot of the failed backup (\(error)); it carries haven's mark and the next plan removes it")
        }
    }

    func afterSnapshot(_ snapshot: VMRef, vmRecord: VMRecord, repo: BackupRepository, started: Date,
                       notes initialNotes: [String: String], committed: inout Bool) async throws -> ActionOutcome {
        var notes = initialNotes
        let snapRecord = try await client.record(snapshot)
        // Mark it as haven's before anything else can fail: it must never become an orphan.
        try await mark(vm: snapshot, role: "backup-snapshot", source: vmRecord.uuid, created: started)
        try ctx.catalog.own(OwnedObject(pool: pool, cls: "VM", uuid: snapRecord.uuid, role: "backup-snapshot", policy: policy,
                                        vmUUID: vmRecord.uuid, createdAt: started))
        try ctx.catalog.clearIntent(pool: pool, name: snapRecord.nameLabel)
        var snapDisks: [String: (VDIRef, VDIRecord)] = [:]
        var otherSnapDisks: [(VDIRef, VDIRecord)] = []
        for vbd in snapRecord.vbds {
            let r = try await client.record(vbd)
            guard r.type == "Disk", !r.vdi.isNull else { continue }
            let vdi = try await client.record(r.vdi)
            try await client.setOtherConfig(r.vdi, key: OwnershipMarks.owner, value: instance)
            try await client.setOtherConfig(r.vdi, key: OwnershipMarks.role, value: "snapshot-disk")
            try ctx.catalog.own(OwnedObject(pool: pool, cls: "VDI", uuid: vdi.uuid, role: "snapshot-disk", policy: policy,
                                            vmUUID: vmRecord.uuid, createdAt: started))
            if job.disks.contains(where: { $0.key == r.userdevice }) { snapDisks[r.userdevice] = (r.vdi, vdi) } else { otherSnapDisks.append((r.vdi, vdi)) }
        }
        if let hook = job.postSnapshot {
            try await runHook(hook, "postSnapshot", vm: vmRecord, notes: &notes)
        }
        try Task.checkCancellation()

        // From the first chunk looked up to the manifest's commit the repository is held shared:
        // garbage collection cannot delete a chunk this version deduplicates against.
        let session = try await blocking { try repo.beginWriteSession(lockTimeout: 600) }
        defer { session.close() }
        var versions: [DiskVersion] = []
        var fallbacks: [String] = []
        let limits = ctx.limiters(pool)
        if job.method == .xva {
            versions.append(try await limits.transfers.with { try await exportXVA(snapshot, vm: vmRecord, snapshotUUID: snapRecord.uuid, repo: repo) })
        }
        for disk in job.disks where job.method != .xva {
            guard let (snapVDI, snapInfo) = snapDisks[disk.key] else {
                throw EngineError(.action, vmRecord.nameLabel, "the snapshot has no disk \(disk.key)")
            }
            try Task.checkCancellation()
            let (version, fallback) = try await limits.transfers.with {
                try await transfer(disk: disk, snapVDI: snapVDI, snapInfo: snapInfo, repo: repo)
            }
            if let fallback {
                fallbacks.append(fallback)
                notes["fallback.disk\(disk.key)"] = fallback
            }
            versions.append(version)
        }
        var vifs: [VIFInfo] = []
        let networks = try await client.records(NetworkRecord.self)
        for vif in vmRecord.vifs {
            if let r = try? await client.record(vif) { vifs.append(VIFInfo(device: r.device, mac: r.mac, network: networks[r.network]?.nameLabel ?? "")) }
        }
        let incremental = (job.method == .cbtIncremental || job.method == .cbtAppliance || job.method == .deltaIncremental) && fallbacks.count < versions.count
        var manifest = BackupManifest(
            createdAt: started, kind: incremental ? .incremental : (job.method == .xva ? .xva : .full),
            vmUUID: vmRecord.uuid, vmName: vmRecord.nameLabel,
            pool: pool, policy: policy, vmRecord: vmRecord.fields, sourceSnapshotUUID: snapRecord.uuid, disks: versions, notes: notes)
        manifest.vifs = vifs
        try Task.checkCancellation()
        let toCommit = manifest
        try await blocking { try session.commit(toCommit) }
        committed = true
        session.close()
        try ctx.catalog.record(BackupRecord(
            id: manifest.id, repository: job.repository.name, pool: pool, policy: policy, vmUUID: vmRecord.uuid, vmName: vmRecord.nameLabel,
            createdAt: started, kind: manifest.kind.rawValue, size: manifest.totalSize, storedBytes: manifest.storedBytes,
            note: fallbacks.joined(separator: "; ")))
        let read = versions.reduce(Int64(0)) { $0 + $1.readBytes }
        var outcome = ActionOutcome(
            "\(manifest.kind.rawValue) backup \(manifest.id): \(versions.count) disk\(versions.count == 1 ? "" : "s"), read \(read) bytes, stored \(manifest.storedBytes) new bytes",
            backupID: manifest.id, bytesRead: read, bytesStored: manifest.storedBytes, notes: fallbacks)

        // The version is committed: it is good whatever happens next. What follows is clean-up;
        // when it fails, the snapshot keeps haven's mark and a later plan finishes the job.
        do {
            try await purge(snapshot, snapRecord: snapRecord, snapDisks: snapDisks, otherSnapDisks: otherSnapDisks, vmRecord: vmRecord,
                            backupID: manifest.id, started: started)
        } catch {
            let text = "clean-up after the backup did not finish (\(error)); the next apply retries it"
            log(text)
            outcome.notes.append(text)
        }
        return outcome
    }

    func purge(_ snapshot: VMRef, snapRecord: VMRecord, snapDisks: [String: (VDIRef, VDIRecord)], otherSnapDisks: [(VDIRef, VDIRecord)],
               vmRecord: VMRecord, backupID: String, started: Date) async throws {
        // Delta bases need the snapshot's data; CBT anchors only its CBT metadata.
        let delta = job.deltaBases == true
        let anchorCapable = job.keepAnchors && !snapDisks.isEmpty && (delta || snapDisks.values.allSatisfy { $0.1.cbtEnabled })
        let kind: AnchorKind = delta ? .delta : .cbt
        if anchorCapable {
            for (key, (ref, info)) in snapDisks {
                let source = job.disks.first { $0.key == key }?.vdiUUID ?? ""
                if delta {
                    try await client.setOtherConfig(ref, key: OwnershipMarks.role, value: "delta-base")
                    try ctx.catalog.own(OwnedObject(pool: pool, cls: "VDI", uuid: info.uuid, role: "delta-base", policy: policy,
                                                    vmUUID: vmRecord.uuid, createdAt: started))
                }
                try ctx.catalog.setAnchor(Anchor(pool: pool, policy: policy, vmUUID: vmRecord.uuid, diskKey: key, sourceVDI: source,
                                                 snapshotVM: snapRecord.uuid, snapshotVDI: info.uuid, backupID: backupID, dataDestroyed: false,
                                                 kind: kind))
            }
        }
        guard job.purgeSnapshotData else { return }
        try await withRetry(on: log) { try await client.destroy(snapshot) }
        try ctx.catalog.disown(pool: pool, uuid: snapRecord.uuid)
        for (key, (ref, info)) in snapDisks {
            let source = job.disks.first { $0.key == key }?.vdiUUID ?? ""
            if anchorCapable && delta {
                // The disk stays whole, without its snapshot VM: the next delta's base.
                try ctx.catalog.setAnchor(Anchor(pool: pool, policy: policy, vmUUID: vmRecord.uuid, diskKey: key, sourceVDI: source,
                                                 snapshotVM: "", snapshotVDI: info.uuid, backupID: backupID, dataDestroyed: false, kind: .delta))
            } else if anchorCapable {
                try await withRetry(attempts: 8, on: log) { try await client.dataDestroy(ref) }
                try await client.setOtherConfig(ref, key: OwnershipMarks.role, value: "cbt-anchor")
                try ctx.catalog.setAnchor(Anchor(pool: pool, policy: policy, vmUUID: vmRecord.uuid, diskKey: key, sourceVDI: source,
                                                 snapshotVM: "", snapshotVDI: info.uuid, backupID: backupID, dataDestroyed: true))
                try ctx.catalog.own(OwnedObject(pool: pool, cls: "VDI", uuid: info.uuid, role: "cbt-anchor", policy: policy,
                                                vmUUID: vmRecord.uuid, createdAt: started))
            } else {
                try await withRetry(on: log) { try await client.destroy(ref) }
                try ctx.catalog.disown(pool: pool, uuid: info.uuid)
            }
        }
        for (ref, info) in otherSnapDisks {
            try await withRetry(on: log) { try await client.destroy(ref) }
            try ctx.catalog.disown(pool: pool, uuid: info.uuid)
        }
    }

    /// xapi's answers to `list_changed_blocks` that mean the CBT chain is broken (disabled and
    /// re-enabled, reset by SM after an error, an anchor without metadata): the disk is read in full.
    static func chainBroken(_ e: XenAPIError) -> Bool {
        e.code == "SR_BACKEND_FAILURE_460" || e.code == "SR_BACKEND_FAILURE_459" || e.code == "VDI_NO_CBT_METADATA"
            || e.code == XenAPIError.Code.uuidInvalid || e.code == XenAPIError.Code.handleInvalid
    }

    /// Reads one disk into the repository. Returns the version and, when a broken CBT chain made
    /// it read the whole disk, why.
    func transfer(disk: DiskJob, snapVDI: VDIRef, snapInfo: VDIRecord, repo: BackupRepository) async throws -> (DiskVersion, String?) {
        var source: any DiskSource
        var previous: DiskVersion?
        var changed: ChangedBlocks?
        var fallback: String?
        let settings = ctx.settings(pool)
        // The changed blocks first: an open NBD connection attaches the VDI to dom0, and xapi
        // refuses list_changed_blocks on an attached VDI.
        if let anchor = disk.anchorVDI, let base = disk.baseBackup, job.method == .cbtIncremental || job.method == .cbtAppliance {
            do {
                let from = try await client.vdi(uuid: anchor)
                let bitmap = try await withRetry(on: log) { try await client.listChangedBlocks(from: from, to: snapVDI) }
                changed = try ChangedBlocks(base64: bitmap, diskSize: snapInfo.virtualSize)
                previous = try repo.manifest(base).disks.first { $0.key == disk.key }
                if previous == nil {
                    changed = nil
                    fallback = "disk \(disk.key): read in full, because version \(base) has no disk \(disk.key)"
                }
            } catch let e as XenAPIError where Self.chainBroken(e) {
                fallback = "disk \(disk.key): read in full, because the CBT chain is broken (\(e.code))"
            } catch let e as DataError where e.code == .noSuchVersion {
                fallback = "disk \(disk.key): read in full, because its base version \(base) is gone from the repository"
            }
            if let fallback { log(fallback) } else { log("disk \(disk.key): \(changed?.blocks.count ?? 0) changed blocks since \(base)") }
        }
        // A VHD delta against the previous backup's snapshot disk, kept on the pool for it.
        var deltaBase: VDIRef?
        if let anchor = disk.anchorVDI, let base = disk.baseBackup, job.method == .deltaIncremental {
            do {
                let from = try await client.vdi(uuid: anchor)
                previous = try repo.manifest(base).disks.first { $0.key == disk.key }
                if previous == nil {
                    fallback = "disk \(disk.key): read in full, because version \(base) has no disk \(disk.key)"
                } else {
                    deltaBase = from
                }
            } catch let e as XenAPIError where e.code == XenAPIError.Code.uuidInvalid || e.code == XenAPIError.Code.handleInvalid {
                fallback = "disk \(disk.key): read in full, because its delta base \(anchor) is gone (\(e.code))"
            } catch let e as DataError where e.code == .noSuchVersion {
                fallback = "disk \(disk.key): read in full, because its base version \(base) is gone from the repository"
            }
            if let fallback { log(fallback) }
        }
        if job.method == .cbtAppliance || job.method == .fullAppliance, let ap = job.appliances {
            let version = try await throughAppliance(ap, disk: disk, snapVDI: snapVDI, snapInfo: snapInfo, repo: repo, previous: previous, changed: changed)
            return (version, fallback)
        }
        let useNBD = job.method == .cbtIncremental || job.method == .fullNBD || job.method == .deltaIncremental
        let infos = useNBD && deltaBase == nil ? (try? await client.nbdInfo(snapVDI)) ?? [] : []
        if let deltaBase {
            let client = self.client
            source = VHDDeltaDiskSource(size: snapInfo.virtualSize, label: "/export_raw_vdi?format=vhd&base \(snapInfo.uuid)") { sink in
                try runBlocking { try await client.exportRawVDI(snapVDI, format: .vhd, base: deltaBase, sink: sink) }
            }
        } else if let info = infos.first {
            let endpoint = NBDEndpoint(address: info.address, port: info.port, exportName: info.exportName,
                                       tls: settings.nbdTLS ? .certificate(info.cert) : .off)
            let size = snapInfo.virtualSize
            let connections = settings.nbdConnections
            source = try await blocking { try NBDDiskSource(endpoint, size: size, connections: connections) }
        } else {
            if settings.nbdRequired {
                throw EngineError(.action, disk.name, "no NBD server for \(disk.name) and spec.nbd.required is true")
            }
            source = ExportDiskSource(client: client, vdi: snapVDI, size: snapInfo.virtualSize, label: "/export_raw_vdi \(snapInfo.uuid)")
        }
        let request = DiskBackup.Request(key: disk.key, name: disk.name, vdiUUID: disk.vdiUUID, sourceSnapshotVDI: snapInfo.uuid, source: source,
                                         previous: previous, changed: changed)
        let reporter = ProgressThrottle(action: action, disk: disk.name, emit: ctx.emitEvent)
        let version = try await stoppableBlocking { isStopped in
            // The run's write session already holds the repository lock (shared) until the commit.
            try DiskBackup(repository: repo).run(request, isStopped: isStopped) { p in reporter.report(p.bytesDone, p.bytesTotal) }
        }
        reporter.finish()
        return (version, fallback)
    }

    /// Reads one disk through a leased appliance: the snapshot's VDI plugged in read-only, its
    /// mover streaming the (changed) blocks to haven under a read token, the VBD unplugged and
    /// destroyed afterwards whatever happens (and when that fails, by the next lease).
    func throughAppliance(_ ap: String, disk: DiskJob, snapVDI: VDIRef, snapInfo: VDIRecord, repo: BackupRepository,
                          previous: DiskVersion?, changed: ChangedBlocks?) async throws -> DiskVersion {
        let me = self
        return try await ctx.appliances.withLease(ap) { lease in
            let a = lease.appliance
            let disks = ApplianceDisks(client: me.client, catalog: me.ctx.catalog, instance: me.instance, pool: me.pool, log: { me.log($0) })
            try await disks.clearLeftovers(a)
            guard let key = me.ctx.state.readApplianceKey(pool: a.pool, uuid: a.uuid) else {
                throw EngineError(.action, a.name, "haven has no token key for appliance \(a.name) (state directory); remove it and let haven provision a new one")
            }
            let plugged = try await disks.plug(snapVDI, vdiUUID: snapInfo.uuid, into: a, readOnly: true, now: me.ctx.now())
            do {
                let mover = try MoverSeam.transferClient(a, tokenKey: key, job: "backup \(snapInfo.uuid)", scope: .read)
                let seen = try await MoverSeam.waitForDisk(mover, device: plugged.device, appliance: a.name)
                guard seen.size == snapInfo.virtualSize else {
                    throw EngineError(.action, a.name, "appliance \(a.name) sees \(plugged.device) with \(seen.size) bytes; the snapshot's disk has \(snapInfo.virtualSize)")
                }
                me.log("disk \(disk.key): read through appliance \(a.name) (\(a.address), \(plugged.device))")
                let source = MoverDiskSource(client: mover, disk: plugged.device, size: snapInfo.virtualSize,
                                             label: "mover \(a.name) \(plugged.device) (\(snapInfo.uuid))")
                let request = DiskBackup.Request(key: disk.key, name: disk.name, vdiUUID: disk.vdiUUID, sourceSnapshotVDI: snapInfo.uuid, source: source,
                                                 previous: previous, changed: changed)
                let reporter = ProgressThrottle(action: me.action, disk: disk.name, emit: me.ctx.emitEvent)
                let version = try await stoppableBlocking { isStopped in
                    // The run's write session already holds the repository lock (shared) until the commit.
                    try DiskBackup(repository: repo).run(request, isStopped: isStopped) { p in reporter.report(p.bytesDone, p.bytesTotal) }
                }
                reporter.finish()
                await disks.unplug(plugged)
                return version
            } catch {
                // Taken out even when the run is cancelled: the snapshot's disk cannot be removed while plugged.
                await Task.detached { await disks.unplug(plugged) }.value
                throw error
            }
        }
    }

    /// The snapshot as XVA (`/export`), staged in the state directory's scratch space (its size is
    /// not known up front), then stored like a disk under the key `xva`.
    func exportXVA(_ snapshot: VMRef, vm: VMRecord, snapshotUUID: String, repo: BackupRepository) async throws -> DiskVersion {
        let file = ctx.state.scratch.appendingPathComponent("\(snapshotUUID).xva").path
        FileManager.default.createFile(atPath: file, contents: nil, attributes: [.posixPermissions: 0o600])
        defer { try? FileManager.default.removeItem(atPath: file) }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        let sink = XVASink(handle: handle)
        try await client.exportXVA(snapshot) { try sink.write($0) }
        try handle.close()
        let source = try FileDiskSource(path: file)
        let request = DiskBackup.Request(key: "xva", name: "\(vm.nameLabel).xva", vdiUUID: "", sourceSnapshotVDI: snapshotUUID, source: source)
        let reporter = ProgressThrottle(action: action, disk: "xva", emit: ctx.emitEvent)
        let version = try await stoppableBlocking { isStopped in
            // The run's write session already holds the repository lock (shared) until the commit.
            try DiskBackup(repository: repo).run(request, isStopped: isStopped) { p in reporter.report(p.bytesDone, p.bytesTotal) }
        }
        reporter.finish()
        return version
    }

    func mark(vm: VMRef, role: String, source: String, created: Date) async throws {
        let marks = [OwnershipMarks.owner: instance, OwnershipMarks.role: role, OwnershipMarks.policy: policy, OwnershipMarks.source: source,
                     "haven.created": ISO8601DateFormatter().string(from: created)]
        for (k, v) in marks.sorted(by: { $0.key < $1.key }) { try await client.setOtherConfig(vm, key: k, value: v) }
    }

    func runHook(_ hook: HookJob, _ name: String, vm: VMRecord, notes: inout [String: String]) async throws {
        let outcome = try await HookRunner.run(hook, environment: [
            "HAVEN_VM": vm.nameLabel, "HAVEN_VM_NAME": vm.nameLabel, "HAVEN_VM_UUID": vm.uuid, "HAVEN_HOOK": name,
            "HAVEN_POLICY": policy, "HAVEN_POOL": pool,
        ])
        for line in outcome.output.split(separator: "\n", omittingEmptySubsequences: true) { log("\(name): \(line)") }
        let summary = outcome.timedOut ? "timed out after \(hook.timeoutSeconds)s" : "exit \(outcome.status)"
        notes["hook.\(name)"] = summary
        if !outcome.ok {
            if hook.failOnError {
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

/// Progress of one disk, at most once a second, never going backwards (the reader threads
/// report out of order).
final class ProgressThrottle: @unchecked Sendable {
    // @unchecked: mutable state guarded by `lock`; called from the transfer's threads.
    let action: PlannedAction
    let disk: String
    let emit: @Sendable (ExecutionEvent) -> Void
    let lock = NSLock()
    var done: Int64 = 0
    var total: Int64 = 0
    var last = Date.distantPast

    init(action: PlannedAction, disk: String, emit: @escaping @Sendable (ExecutionEvent) -> Void) {
        self.action = action
        self.disk = disk
        self.emit = emit
    }

    func report(_ bytes: Int64, _ of: Int64) {
        let send: (Int64, Int64)? = lock.withLock {
            done = max(done, bytes)
            total = max(total, of)
            let now = Date()
            guard now.timeIntervalSince(last) >= 1 else { return nil }
            last = now
            return (done, total)
        }
        if let (d, t) = send { emit(.progress(action, disk: disk, bytesDone: d, bytesTotal: t)) }
    }

    func finish() {
        let (d, t) = lock.withLock { (done, total) }
        emit(.progress(action, disk: disk, bytesDone: max(d, t), bytesTotal: t))
    }
}

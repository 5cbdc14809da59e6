import CrashPoints
import Foundation
import HavenCatalog
import HavenCore
import HavenData
import DiskFormats
import Synchronization
import XenAPI

#if canImport(Glibc)
    import Glibc
#endif

/// One synchronisation of one replica: a marked snapshot of the source VM; on the target, the
/// replica created (initial sync: VM, disks with the source's sizes, VIFs on the mapped networks,
/// blocked from starting) or checked (halted, not written since the last sync — written blocks
/// are rewritten from the source); the changed blocks read over NBD and written onto the
/// replica's VDIs as a VHD delta through `/import_raw_vdi?format=vhd`; a restore point (a
/// snapshot of the replica) taken and the oldest beyond `keep` removed; the source snapshot
/// reduced to CBT metadata as the next sync's anchor.
struct ReplicateRun {
    let ctx: ExecutionContext
    let action: PlannedAction
    let job: ReplicationJob
    let source: XenAPIClient
    let target: XenAPIClient

    var policy: String { action.policy ?? "" }
    var owner: String { replicationOwnerKey(policy) }
    var sourcePool: String { action.pool }
    func log(_ s: String) { ctx.log(action, s) }

    static let blockedOperations = ["start", "start_on", "resume", "resume_on"]

    func run() async throws -> ActionOutcome {
        guard let vmRef = try await lookup({ try await source.vm(uuid: action.vm?.uuid ?? "") }) else {
            throw EngineError(.action, action.vm?.name ?? "", "VM \(action.vm?.name ?? "") no longer exists on pool \(sourcePool)")
        }
        let vmRecord = try await source.record(vmRef)
        let started = ctx.now()
        if job.xva { return try await runXVA(vmRef: vmRef, vmRecord: vmRecord, started: started) }
        var notes: [String] = []

        // The replica first: a replica found running is never written, and nothing is snapshotted for it.
        var replica = try await replicaForSync(vmRecord: vmRecord, started: started)
        try Task.checkCancellation()

        // The written blocks of a replica that was started or written since its last restore point.
        var rewrite: [String: Set<Int>] = [:]
        if job.mode == .incremental && !job.trustDestination {
            rewrite = try await guardReplica(replica, notes: &notes)
        }

        let snapshotName = "haven replica \(policy) \(vmRecord.nameLabel) \(ISO8601DateFormatter().string(from: started))"
        let limits = ctx.limiters(sourcePool)
        try ctx.catalog.recordIntent(SnapshotIntent(pool: sourcePool, vmUUID: vmRecord.uuid, policy: owner, name: snapshotName, requestedAt: started))
        let snapshot: VMRef
        do {
            snapshot = try await limits.snapshots.with { try await withRetry(on: log) { try await source.snapshot(vmRef, name: snapshotName) } }
        } catch let e as XenAPIError {
            try? ctx.catalog.clearIntent(pool: sourcePool, name: snapshotName)
            throw e
        }
        var snapDisks: [String: (VDIRef, VDIRecord)] = [:]
        do {
            try await markSnapshot(snapshot, source: vmRecord.uuid, started: started)
            let rec = try await source.record(snapshot)
            for vbd in rec.vbds {
                let b = try await source.record(vbd)
                guard b.type == "Disk", !b.vdi.isNull else { continue }
                let v = try await source.record(b.vdi)
                try await source.setOtherConfig(b.vdi, key: OwnershipMarks.owner, value: ctx.instance)
                try await source.setOtherConfig(b.vdi, key: OwnershipMarks.role, value: "replication-snapshot-disk")
                try ctx.catalog.own(OwnedObject(pool: sourcePool, cls: "VDI", uuid: v.uuid, role: "replication-snapshot-disk", policy: owner,
                                                vmUUID: vmRecord.uuid, createdAt: started))
                snapDisks[b.userdevice] = (b.vdi, v)
            }
            var counters = CopyCounters()
            let rewriteNow = rewrite
            // singlePass: the repository is held shared from the first chunk to the commit.
            let pass = try job.singlePass.map { SinglePass(repo: try ctx.repository($0.repository), base: $0.baseBackup) }
            var session: WriteSession?
            if let repo = pass?.repo { session = try await blocking { try repo.beginWriteSession(lockTimeout: 600) } }
            defer { session?.close() }
            var versions: [DiskVersion] = []
            for disk in job.disks {
                try Task.checkCancellation()
                guard let (snapVDI, snapInfo) = snapDisks[disk.key], let replicaVDI = replica.disks[disk.key] else {
                    throw EngineError(.action, vmRecord.nameLabel, "disk \(disk.key) is missing on the snapshot or the replica")
                }
                let (c, said, version) = try await limits.transfers.with {
                    try await copy(disk, snapVDI: snapVDI, snapInfo: snapInfo, replicaVDI: replicaVDI, rewrite: rewriteNow[disk.key] ?? [], pass: pass)
                }
                counters = counters + c
                notes += said
                if let version { versions.append(version) }
            }
            // The replica holds the snapshot; the backup version is committed next (a failure here
            // leaves the replica written without a restore point: the next sync's guard rewrites it).
            var backupID: String?
            if let pass, let session {
                backupID = try await commitSinglePass(pass, session: session, versions: versions, vm: vmRecord, snapshot: snapshot, started: started)
                notes.append("singlePass: backup version \(backupID!) committed to \(job.singlePass!.repository.name)")
            }
            // The replica now equals the snapshot: a restore point, and the record, before anything is cleaned up.
            let point = try await restorePoint(replica, started: started)
            try ctx.catalog.setReplica(ReplicaRecord(policy: policy, sourcePool: sourcePool, sourceVM: vmRecord.uuid, sourceName: vmRecord.nameLabel,
                                                     targetPool: job.targetPool, replicaUUID: replica.uuid,
                                                     disks: replica.diskUUIDs, lastSync: started))
            replica.restorePoint = point
            do {
                try await pruneRestorePoints(replica)
                try await anchor(snapshot, snapDisks: snapDisks, vm: vmRecord, started: started, backupID: backupID ?? "")
            } catch {
                let text = "clean-up after the sync did not finish (\(error)); the next run retries it"
                log(text)
                notes.append(text)
            }
            return ActionOutcome("\(job.mode.rawValue) sync of \(vmRecord.nameLabel) to \(job.replicaName) on \(job.targetPool): \(job.disks.count) disk\(job.disks.count == 1 ? "" : "s"), read \(counters.read) bytes, wrote \(counters.written) bytes (VHD of \(counters.sent) bytes); restore point \(point)"
                                    + (backupID.map { "; backup version \($0)" } ?? ""),
                                 backupID: backupID, bytesRead: counters.read, bytesStored: counters.written, notes: notes)
        } catch {
            let me = self
            let snap = snapshot
            await Task.detached { await me.discard(snap) }.value
            throw error
        }
    }

    struct Replica {
        var ref: VMRef
        var uuid: String
        var disks: [String: VDIRef]
        var diskUUIDs: [String: String]
        var restorePoint: String?
    }

    /// Creates the replica (initial sync) or finds it (later syncs).
    func replicaForSync(vmRecord: VMRecord, started: Date) async throws -> Replica {
        if job.mode != .initial, let uuid = job.replicaUUID {
            guard let ref = try await lookup({ try await target.vm(uuid: uuid) }) else {
                throw EngineError(.action, uuid, "the replica \(uuid) is gone from \(job.targetPool); the next plan creates it again")
            }
            let rec = try await target.record(ref)
            guard rec.otherConfig[OwnershipMarks.owner] == ctx.instance, rec.otherConfig[OwnershipMarks.role] == "replica" else {
                throw EngineError(.action, uuid, "VM \(rec.nameLabel) does not carry haven's replica mark; left alone")
            }
            guard rec.powerState == .halted else {
                throw EngineError(.action, rec.nameLabel, "the replica \(rec.nameLabel) is \(rec.powerState.rawValue.lowercased()): a running replica is never written")
            }
            // Blocked again on every sync (an admin may have lifted it, a fail-back re-blocks it too).
            if Set(rec.blockedOperations.keys) != Set(Self.blockedOperations) {
                try await target.setBlockedOperations(ref, Dictionary(uniqueKeysWithValues: Self.blockedOperations.map { ($0, blockReason(vmRecord.nameLabel)) }))
            }
            var disks: [String: VDIRef] = [:]
            var uuids: [String: String] = [:]
            for vbd in rec.vbds {
                let b = try await target.record(vbd)
                guard b.type == "Disk", !b.vdi.isNull else { continue }
                disks[b.userdevice] = b.vdi
                uuids[b.userdevice] = try await target.record(b.vdi).uuid
            }
            return Replica(ref: ref, uuid: uuid, disks: disks, diskUUIDs: uuids)
        }
        return try await createReplica(vmRecord: vmRecord, started: started)
    }

    func createReplica(vmRecord: VMRecord, started: Date) async throws -> Replica {
        let srRef = try await target.sr(uuid: job.targetSR)
        var record: [String: XenValue] = [:]
        let copied = ["name_description", "memory_static_max", "memory_static_min", "memory_dynamic_max", "memory_dynamic_min", "memory_target",
                      "VCPUs_max", "VCPUs_at_startup", "VCPUs_params", "actions_after_shutdown", "actions_after_reboot", "actions_after_crash",
                      "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args", "PV_bootloader_args", "PV_legacy_args", "HVM_boot_policy",
                      "HVM_boot_params", "HVM_shadow_multiplier", "platform", "PCI_bus", "recommendations", "user_version",
                      "hardware_platform_version", "has_vendor_device", "domain_type", "bios_strings"]
        for k in copied { if let v = vmRecord.fields[k] { record[k] = v } }
        let reason = blockReason(vmRecord.nameLabel)
        record["name_label"] = .string(job.replicaName)
        record["is_a_template"] = false
        record["ha_always_run"] = false
        record["ha_restart_priority"] = ""
        record["affinity"] = "OpaqueRef:NULL"
        record["suspend_SR"] = "OpaqueRef:NULL"
        record["tags"] = .array([])
        record["xenstore_data"] = .structure([:])
        record["blocked_operations"] = .structure(Dictionary(uniqueKeysWithValues: Self.blockedOperations.map { ($0, XenValue.string(reason)) }))
        record["other_config"] = .structure([
            OwnershipMarks.owner: .string(ctx.instance), OwnershipMarks.role: "replica", OwnershipMarks.policy: .string(owner),
            OwnershipMarks.source: .string(vmRecord.uuid), "haven.created": .string(ISO8601DateFormatter().string(from: started)),
        ])
        // The intent first: a replica created by a run that dies before the catalog knows it is
        // found by the next plan (its marks, this intent) and removed.
        let intent = "\(replicaIntentPrefix)\(job.replicaName) \(ISO8601DateFormatter().string(from: started))"
        try ctx.catalog.recordIntent(SnapshotIntent(pool: job.targetPool, vmUUID: vmRecord.uuid, policy: owner, name: intent, requestedAt: started))
        let ref = try await target.createVM(record)
        CrashPoints.step("replica-created")
        let uuid = try await target.record(ref).uuid
        // VM.create ignores blocked_operations (xapi drops it): set them on the VM that now exists.
        try await target.setBlockedOperations(ref, Dictionary(uniqueKeysWithValues: Self.blockedOperations.map { ($0, reason) }))
        // Owned from the moment it exists: a crash from here on leaves nothing haven cannot find again.
        try ctx.catalog.own(OwnedObject(pool: job.targetPool, cls: "VM", uuid: uuid, role: "replica", policy: owner, vmUUID: vmRecord.uuid, createdAt: started))
        try ctx.catalog.setReplica(ReplicaRecord(policy: policy, sourcePool: sourcePool, sourceVM: vmRecord.uuid, sourceName: vmRecord.nameLabel,
                                                 targetPool: job.targetPool, replicaUUID: uuid, disks: [:], lastSync: nil))
        log("created replica \(job.replicaName) (\(uuid)) on \(job.targetPool)")
        var disks: [String: VDIRef] = [:]
        var uuids: [String: String] = [:]
        for d in job.disks {
            let vdi = try await target.createVDI([
                "name_label": .string("\(job.replicaName) \(d.name)"), "name_description": .string("haven replica of \(d.sourceVDI)"), "SR": srRef.value,
                "virtual_size": .int(d.size), "type": "user", "sharable": false, "read_only": false,
                "other_config": .structure([OwnershipMarks.owner: .string(ctx.instance), OwnershipMarks.role: "replica-disk", OwnershipMarks.policy: .string(owner),
                                            OwnershipMarks.source: .string(d.sourceVDI)]),
            ])
            let vdiUUID = try await target.record(vdi).uuid
            try ctx.catalog.own(OwnedObject(pool: job.targetPool, cls: "VDI", uuid: vdiUUID, role: "replica-disk", policy: owner, vmUUID: vmRecord.uuid, createdAt: started))
            CrashPoints.step("replica-disk-created")
            _ = try await target.createVBD([
                "VM": ref.value, "VDI": vdi.value, "userdevice": .string(d.key), "bootable": .bool(d.key == "0"), "mode": "RW", "type": "Disk",
                "empty": false, "other_config": [:], "qos_algorithm_type": "", "qos_algorithm_params": [:],
            ])
            // The replica's own CBT answers "was it written since the last sync?".
            try await withRetry(on: log) { try await target.enableCBT(vdi) }
            disks[d.key] = vdi
            uuids[d.key] = vdiUUID
        }
        let networks = try await target.records(NetworkRecord.self)
        let sourceNetworks = try await source.records(NetworkRecord.self)
        for vifRef in vmRecord.vifs {
            let vif = try await source.record(vifRef)
            let sourceName = sourceNetworks[vif.network]?.nameLabel ?? ""
            guard let mapped = job.networks[sourceName], let net = networks.first(where: { $0.value.nameLabel == mapped })?.key else {
                throw EngineError(.action, sourceName, "network \(sourceName) of \(vmRecord.nameLabel) has no mapping on \(job.targetPool)")
            }
            _ = try await target.createVIF([
                "VM": ref.value, "network": net.value, "device": .string(vif.device), "MAC": "", "MTU": 1500,
                "other_config": [:], "qos_algorithm_type": "", "qos_algorithm_params": [:],
            ])
        }
        try ctx.catalog.setReplica(ReplicaRecord(policy: policy, sourcePool: sourcePool, sourceVM: vmRecord.uuid, sourceName: vmRecord.nameLabel,
                                                 targetPool: job.targetPool, replicaUUID: uuid, disks: uuids, lastSync: nil))
        try ctx.catalog.clearIntent(pool: job.targetPool, name: intent)
        return Replica(ref: ref, uuid: uuid, disks: disks, diskUUIDs: uuids)
    }

    func blockReason(_ source: String) -> String {
        "haven replica of \(source) (ReplicationPolicy \(policy)): start it with `haven failover \(policy) \(source)`"
    }

    /// The replica's newest restore point, and per disk the blocks written on the replica since
    /// (CBT of the replica's own disks): those are rewritten from the source.
    func guardReplica(_ replica: Replica, notes: inout [String]) async throws -> [String: Set<Int>] {
        let vms = try await target.records(VMRecord.self)
        let points = vms.filter { $0.value.isASnapshot && $0.value.snapshotOf == replica.ref && $0.value.otherConfig[OwnershipMarks.role] == "restore-point" }
            .sorted { $0.value.snapshotTime > $1.value.snapshotTime }
        guard let latestRecord = points.first?.value else { return [:] }
        var pointDisks: [String: VDIRef] = [:]
        for vbd in latestRecord.vbds {
            let b = try await target.record(vbd)
            if b.type == "Disk", !b.vdi.isNull { pointDisks[b.userdevice] = b.vdi }
        }
        var out: [String: Set<Int>] = [:]
        for (key, vdi) in replica.disks {
            guard let from = pointDisks[key] else { continue }
            let size = try await target.record(vdi).virtualSize
            do {
                let bitmap = try await target.listChangedBlocks(from: from, to: vdi)
                let changed = try ChangedBlocks(base64: bitmap, diskSize: size)
                if !changed.blocks.isEmpty {
                    out[key] = Set(changed.blocks)
                    let text = "resync: the replica's disk \(key) was written since the last sync (\(changed.blocks.count) blocks of 64 KiB); they are rewritten from the source"
                    log(text)
                    notes.append(text)
                }
            } catch let e as XenAPIError where BackupRun.chainBroken(e) {
                // Without the replica's own CBT, the whole disk is rewritten: the only safe answer.
                out[key] = Set(0..<Int((size + 65_535) / 65_536))
                let text = "resync: the replica's disk \(key) cannot tell what was written (\(e.code)); every block is rewritten"
                log(text)
                notes.append(text)
            }
        }
        return out
    }

    /// singlePass: the repository and the version the incremental patches.
    struct SinglePass: Sendable {
        let repo: BackupRepository
        let base: String?
    }

    /// Copies one disk: the changed 64 KiB blocks (every block on an initial or full sync; on an
    /// initial sync the zero ones are skipped) read from the snapshot over NBD and written onto
    /// the replica's VDI as a VHD delta of small blocks. With singlePass the same read feeds the
    /// backup version (stored, not committed).
    func copy(_ disk: ReplicaDiskJob, snapVDI: VDIRef, snapInfo: VDIRecord, replicaVDI: VDIRef, rewrite: Set<Int>,
              pass: SinglePass?) async throws -> (CopyCounters, [String], DiskVersion?) {
        var notes: [String] = []
        let clock = ContinuousClock.now
        let cpu = processCPUSeconds()
        let size = snapInfo.virtualSize
        let total = Int((size + Int64(ChangedBlocks.blockSize) - 1) / Int64(ChangedBlocks.blockSize))
        var wanted = Set<Int>()
        var cbtKnown = false
        switch job.mode {
        case .initial, .full:
            wanted = Set(0..<total)
        case .incremental:
            if let anchor = disk.anchorVDI {
                do {
                    let from = try await source.vdi(uuid: anchor)
                    let bitmap = try await withRetry(on: log) { try await source.listChangedBlocks(from: from, to: snapVDI) }
                    wanted = Set(try ChangedBlocks(base64: bitmap, diskSize: size).blocks)
                    cbtKnown = true
                } catch let e as XenAPIError where BackupRun.chainBroken(e) {
                    wanted = Set(0..<total)
                    let text = "disk \(disk.key): every block, because the CBT chain is broken (\(e.code))"
                    log(text)
                    notes.append(text)
                }
            } else {
                wanted = Set(0..<total)
            }
            wanted.formUnion(rewrite)
        }
        let queried = ContinuousClock.now
        log("disk \(disk.key): \(wanted.count) of \(total) blocks of 64 KiB to copy")
        guard !wanted.isEmpty || pass != nil else { return (CopyCounters(), notes, nil) }
        if let route = job.abd {
            guard !wanted.isEmpty else { return (CopyCounters(), notes, nil) }
            let counters = try await copyThroughAppliances(route, disk: disk, snapVDI: snapVDI, snapInfo: snapInfo, replicaVDI: replicaVDI,
                                                           blocks: wanted.sorted(), total: total)
            return (counters, notes, nil)
        }
        let settings = ctx.settings(sourcePool)
        guard let info = try await source.nbdInfo(snapVDI).first else {
            throw EngineError(.action, disk.name, "no NBD server for \(disk.name): replication reads over NBD")
        }
        let endpoint = NBDEndpoint(address: info.address, port: info.port, exportName: info.exportName,
                                   tls: settings.nbdTLS ? .certificate(info.cert) : .off)
        let staged = try StagedDisk(scratch: ctx.state.scratch, name: snapInfo.uuid, size: size, findsNonZero: job.mode == .initial)
        defer { staged.close() }
        let onto = "disk \(disk.key) (\(disk.name)) onto replica \(job.replicaName) on pool \(job.targetPool)"
        let blocks = wanted.sorted()
        let connections = settings.nbdConnections
        var counters = CopyCounters()
        var version: DiskVersion?
        if let pass {
            // One read for both: the backup's read jobs go through a tee that stages the bytes.
            var previous: DiskVersion?
            var changed: ChangedBlocks?
            if let base = pass.base, cbtKnown {
                previous = try? pass.repo.manifest(base).disks.first { $0.key == disk.key }
                if previous != nil { changed = ChangedBlocks(diskSize: size, blocks: blocks) }
            }
            if previous == nil && job.mode == .incremental {
                let text = "singlePass: disk \(disk.key) is read whole for its backup version (no version of the last sync to patch)"
                log(text)
                notes.append(text)
            }
            let key = disk.key, name = disk.name, vdi = disk.sourceVDI, snap = snapInfo.uuid, prev = previous, ch = changed
            let reporter = ProgressThrottle(action: action, disk: disk.name, emit: ctx.emitEvent)
            version = try await stoppableBlocking { isStopped in
                let nbd = try NBDDiskSource(endpoint, size: size, connections: connections)
                let request = DiskBackup.Request(key: key, name: name, vdiUUID: vdi, sourceSnapshotVDI: snap, source: TeeDiskSource(inner: nbd, staged: staged),
                                                 previous: prev, changed: ch)
                return try DiskBackup(repository: pass.repo).run(request, isStopped: isStopped) { p in reporter.report(p.bytesDone, p.bytesTotal) }
            }
            reporter.finish()
            counters.read = version!.readBytes
        } else if job.mode != .initial {
            // Every block read is sent: the VHD goes out while the read runs.
            let (readEnd, written, sent) = try await staged.readAndSend(blocks: blocks, to: target, vdi: replicaVDI, what: onto) {
                let nbd = try NBDDiskSource(endpoint, size: size, connections: connections)
                try staged.read(blocks: blocks, from: nbd)
                return ContinuousClock.now
            }
            counters.read = staged.extents(blocks).reduce(0) { $0 + Int64($1.length) }
            counters.written = written
            counters.sent = sent
            logCopied(disk, blocks: blocks.count, counters, since: clock, cpu: cpu, queried: queried, readEnd: readEnd)
            return (counters, notes, version)
        } else {
            try await blocking {
                let nbd = try NBDDiskSource(endpoint, size: size, connections: connections)
                try staged.read(blocks: blocks, from: nbd)
            }
            counters.read = staged.extents(blocks).reduce(0) { $0 + Int64($1.length) }
        }
        // An initial sync sends only the blocks that are not zero, known once they are read.
        let nonZero = staged.nonZero.withLock { $0 }
        let send = job.mode == .initial ? blocks.filter(nonZero.contains) : blocks
        let (written, sent) = try await staged.send(blocks: send, to: target, vdi: replicaVDI, what: onto)
        counters.written = written
        counters.sent = sent
        logCopied(disk, blocks: send.count, counters, since: clock, cpu: cpu, queried: queried)
        return (counters, notes, version)
    }

    /// The data path alone (changed blocks listed, NBD read, VHD delta written), wall and CPU
    /// seconds of this process: what `make bench` compares with reading the blocks.
    func logCopied(_ disk: ReplicaDiskJob, blocks: Int, _ counters: CopyCounters, since clock: ContinuousClock.Instant, cpu: Double,
                   queried: ContinuousClock.Instant, readEnd: ContinuousClock.Instant? = nil) {
        func s(_ d: Duration) -> String { String(format: "%.3f", Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18) }
        let now = ContinuousClock.now
        let overlap = readEnd.map { "read done at \(s($0 - clock)) s, the VHD sent beside it; " } ?? ""
        log("disk \(disk.key): \(blocks) blocks of 64 KiB copied in \(s(now - clock)) s (changed blocks listed in \(s(queried - clock)) s; \(overlap)"
            + "CPU \(String(format: "%.3f", processCPUSeconds() - cpu)) s; read \(counters.read) bytes, wrote \(counters.written), VHD of \(counters.sent))")
    }

    /// Commits the singlePass version: a backup like any other (restorable, listed), whose
    /// policy is the ReplicationPolicy and whose note says it came from the replication.
    func commitSinglePass(_ pass: SinglePass, session: WriteSession, versions: [DiskVersion], vm: VMRecord, snapshot: VMRef, started: Date) async throws -> String {
        let snapUUID = try await source.record(snapshot).uuid
        var vifs: [VIFInfo] = []
        let networks = try await source.records(NetworkRecord.self)
        for vif in vm.vifs {
            if let r = try? await source.record(vif) { vifs.append(VIFInfo(device: r.device, mac: r.mac, network: networks[r.network]?.nameLabel ?? "")) }
        }
        let incremental = pass.base != nil && versions.count == job.disks.count && job.mode == .incremental
        let note = "single pass: the read of ReplicationPolicy \(policy)'s \(job.mode.rawValue) sync to \(job.replicaName) on \(job.targetPool)"
        var manifest = BackupManifest(createdAt: started, kind: incremental ? .incremental : .full, vmUUID: vm.uuid, vmName: vm.nameLabel,
                                      pool: sourcePool, policy: policy, vmRecord: vm.fields, sourceSnapshotUUID: snapUUID, disks: versions,
                                      notes: ["method": "single-pass", "reason": action.reason, "replica": job.replicaName])
        manifest.vifs = vifs
        let toCommit = manifest
        try Task.checkCancellation()
        try await blocking { try session.commit(toCommit) }
        session.close()
        try ctx.catalog.record(BackupRecord(
            id: manifest.id, repository: job.singlePass!.repository.name, pool: sourcePool, policy: policy, vmUUID: vm.uuid, vmName: vm.nameLabel,
            createdAt: started, kind: manifest.kind.rawValue, size: manifest.totalSize, storedBytes: manifest.storedBytes, note: note))
        return manifest.id
    }

    /// A snapshot of the replica, marked as haven's restore point.
    func restorePoint(_ replica: Replica, started: Date) async throws -> String {
        let name = "\(job.replicaName) restore point \(ISO8601DateFormatter().string(from: started))"
        // The intent first, as for a backup's snapshot: a restore point the pool makes after this
        // process died is found by it (the replica, the exact name) and removed by the next run.
        try ctx.catalog.recordIntent(SnapshotIntent(pool: job.targetPool, vmUUID: replica.uuid, policy: owner, name: name, requestedAt: started))
        let snap: VMRef
        do {
            snap = try await withRetry(on: log) { try await target.snapshot(replica.ref, name: name) }
        } catch let e as XenAPIError {
            try? ctx.catalog.clearIntent(pool: job.targetPool, name: name)
            throw e
        }
        let uuid = try await target.record(snap).uuid
        // Marked before it is in the inventory, and only then is the intent cleared: killed at any
        // point, the restore point is either found by its intent or fully haven's.
        for (k, v) in [(OwnershipMarks.owner, ctx.instance), (OwnershipMarks.role, "restore-point"), (OwnershipMarks.policy, owner),
                       ("haven.created", ISO8601DateFormatter().string(from: started))] {
            try await target.setOtherConfig(snap, key: k, value: v)
        }
        try ctx.catalog.own(OwnedObject(pool: job.targetPool, cls: "VM", uuid: uuid, role: "restore-point", policy: owner,
                                        vmUUID: action.vm?.uuid ?? "", createdAt: started))
        try ctx.catalog.clearIntent(pool: job.targetPool, name: name)
        return uuid
    }

    /// Keeps the newest `keep` restore points; older ones of haven's go with their disks.
    func pruneRestorePoints(_ replica: Replica) async throws {
        let vms = try await target.records(VMRecord.self)
        let points = vms.filter { $0.value.isASnapshot && $0.value.snapshotOf == replica.ref && $0.value.otherConfig[OwnershipMarks.role] == "restore-point"
            && $0.value.otherConfig[OwnershipMarks.owner] == ctx.instance }
            .sorted { ($0.value.otherConfig["haven.created"] ?? "", $0.value.snapshotTime) > ($1.value.otherConfig["haven.created"] ?? "", $1.value.snapshotTime) }
        for (ref, rec) in points.dropFirst(job.keep) {
            var vdis: [VDIRef] = []
            for vbd in rec.vbds {
                let b = try await target.record(vbd)
                if b.type == "Disk", !b.vdi.isNull { vdis.append(b.vdi) }
            }
            // The disks before the snapshot VM: killed in between, the VM (marked, in the
            // inventory) is still there to be found and removed by the next run; the other way
            // round its disks would be left carrying marks no inventory entry covers.
            for v in vdis { try await withRetry(on: log) { try await target.destroy(v) } }
            try await withRetry(on: log) { try await target.destroy(ref) }
            try ctx.catalog.disown(pool: job.targetPool, uuid: rec.uuid)
            log("removed restore point \(rec.nameLabel) (keep \(job.keep))")
        }
    }

    /// The snapshot's disks become the next sync's anchors (CBT metadata only); the previous anchors go.
    func anchor(_ snapshot: VMRef, snapDisks: [String: (VDIRef, VDIRecord)], vm: VMRecord, started: Date, backupID: String = "") async throws {
        let snapUUID = try await source.record(snapshot).uuid
        let previous = try ctx.catalog.view().anchors.filter { $0.pool == sourcePool && $0.policy == owner && $0.vmUUID == vm.uuid }
        try await withRetry(on: log) { try await source.destroy(snapshot) }
        try ctx.catalog.disown(pool: sourcePool, uuid: snapUUID)
        for (key, (ref, info)) in snapDisks {
            try await withRetry(attempts: 8, on: log) { try await source.dataDestroy(ref) }
            try await source.setOtherConfig(ref, key: OwnershipMarks.role, value: "cbt-anchor")
            let sourceVDI = job.disks.first { $0.key == key }?.sourceVDI ?? ""
            try ctx.catalog.setAnchor(Anchor(pool: sourcePool, policy: owner, vmUUID: vm.uuid, diskKey: key, sourceVDI: sourceVDI, snapshotVM: "",
                                             snapshotVDI: info.uuid, backupID: backupID, dataDestroyed: true))
            try ctx.catalog.own(OwnedObject(pool: sourcePool, cls: "VDI", uuid: info.uuid, role: "cbt-anchor", policy: owner, vmUUID: vm.uuid, createdAt: started))
        }
        for a in previous where !snapDisks.values.contains(where: { $0.1.uuid == a.snapshotVDI }) {
            if let old = try await lookup({ try await source.vdi(uuid: a.snapshotVDI) }) {
                try await withRetry(on: log) { try await source.destroy(old) }
            }
            try ctx.catalog.disown(pool: sourcePool, uuid: a.snapshotVDI)
            try ctx.catalog.removeAnchor(pool: sourcePool, snapshotVDI: a.snapshotVDI)
        }
    }

    func markSnapshot(_ snap: VMRef, source vm: String, started: Date) async throws {
        for (k, v) in [(OwnershipMarks.owner, ctx.instance), (OwnershipMarks.role, "replication-snapshot"), (OwnershipMarks.policy, owner),
                       (OwnershipMarks.source, vm), ("haven.created", ISO8601DateFormatter().string(from: started))] {
            try await source.setOtherConfig(snap, key: k, value: v)
        }
        let rec = try await source.record(snap)
        try ctx.catalog.own(OwnedObject(pool: sourcePool, cls: "VM", uuid: rec.uuid, role: "replication-snapshot", policy: owner, vmUUID: vm, createdAt: started))
        try ctx.catalog.clearIntent(pool: sourcePool, name: rec.nameLabel)
    }

    /// A failed or cancelled sync removes its source snapshot (the replica stays: it is still the previous sync's copy,
    /// or, after a failed initial sync, a replica the next run resynchronises in full).
    func discard(_ snapshot: VMRef) async {
        guard let record = try? await source.record(snapshot) else { return }
        var vdis: [(VDIRef, String)] = []
        for vbd in record.vbds {
            if let b = try? await source.record(vbd), b.type == "Disk", !b.vdi.isNull, let v = try? await source.record(b.vdi) { vdis.append((b.vdi, v.uuid)) }
        }
        do {
            // Disks before the VM (a kill in between leaves the marked VM to be found again).
            for (ref, uuid) in vdis {
                try await withRetry(on: log) { try await source.destroy(ref) }
                try ctx.catalog.disown(pool: sourcePool, uuid: uuid)
            }
            try await withRetry(on: log) { try await source.destroy(snapshot) }
            try ctx.catalog.disown(pool: sourcePool, uuid: record.uuid)
        } catch {
            log("could not remove the snapshot of the failed sync (\(error)); it carries haven's mark")
        }
    }
}

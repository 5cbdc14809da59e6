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
            var written: Int64 = 0
            let rewriteNow = rewrite
            for disk in job.disks {
                try Task.checkCancellation()
                guard let (snapVDI, snapInfo) = snapDisks[disk.key], let replicaVDI = replica.disks[disk.key] else {
                    throw EngineError(.action, vmRecord.nameLabel, "disk \(disk.key) is missing on the snapshot or the replica")
                }
                let (bytes, said) = try await limits.transfers.with {
                    try await copy(disk, snapVDI: snapVDI, snapInfo: snapInfo, replicaVDI: replicaVDI, rewrite: rewriteNow[disk.key] ?? [])
                }
                written += bytes
                notes += said
            }
            // The replica now equals the snapshot: a restore point, and the record, before anything is cleaned up.
            let point = try await restorePoint(replica, started: started)
            try ctx.catalog.setReplica(ReplicaRecord(policy: policy, sourcePool: sourcePool, sourceVM: vmRecord.uuid, sourceName: vmRecord.nameLabel,
                                                     targetPool: job.targetPool, replicaUUID: replica.uuid,
                                                     disks: replica.diskUUIDs, lastSync: started))
            replica.restorePoint = point
            do {
                try await pruneRestorePoints(replica)
                try await anchor(snapshot, snapDisks: snapDisks, vm: vmRecord, started: started)
            } catch {
                let text = "clean-up after the sync did not finish (\(error)); the next run retries it"
                log(text)
                notes.append(text)
            }
            return ActionOutcome("\(job.mode.rawValue) sync of \(vmRecord.nameLabel) to \(job.replicaName) on \(job.targetPool): \(job.disks.count) disk\(job.disks.count == 1 ? "" : "s"), wrote \(written) bytes; restore point \(point)",
                                 bytesRead: written, notes: notes)
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
        let reason = "haven replica of \(vmRecord.nameLabel) (ReplicationPolicy \(policy)): start it with `haven failover \(policy) \(vmRecord.nameLabel)`"
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
        let ref = try await target.createVM(record)
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
        return Replica(ref: ref, uuid: uuid, disks: disks, diskUUIDs: uuids)
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

    /// Copies one disk: the 2 MiB VHD blocks holding changed 64 KiB blocks, read from the
    /// snapshot over NBD, written onto the replica's VDI. Returns the bytes written.
    func copy(_ disk: ReplicaDiskJob, snapVDI: VDIRef, snapInfo: VDIRecord, replicaVDI: VDIRef, rewrite: Set<Int>) async throws -> (Int64, [String]) {
        var notes: [String] = []
        let size = snapInfo.virtualSize
        let perVHD = VHD.blockSize / ChangedBlocks.blockSize
        let vhdBlocks = Int((size + Int64(VHD.blockSize) - 1) / Int64(VHD.blockSize))
        var wanted = Set<Int>()
        var skipZero = false
        switch job.mode {
        case .initial:
            wanted = Set(0..<vhdBlocks)
            skipZero = true
        case .full:
            wanted = Set(0..<vhdBlocks)
        case .incremental:
            if let anchor = disk.anchorVDI {
                do {
                    let from = try await source.vdi(uuid: anchor)
                    let bitmap = try await withRetry(on: log) { try await source.listChangedBlocks(from: from, to: snapVDI) }
                    for b in try ChangedBlocks(base64: bitmap, diskSize: size).blocks { wanted.insert(b / perVHD) }
                } catch let e as XenAPIError where BackupRun.chainBroken(e) {
                    wanted = Set(0..<vhdBlocks)
                    let text = "disk \(disk.key): every block, because the CBT chain is broken (\(e.code))"
                    log(text)
                    notes.append(text)
                }
            } else {
                wanted = Set(0..<vhdBlocks)
            }
            for b in rewrite { wanted.insert(b / perVHD) }
        }
        log("disk \(disk.key): \(wanted.count) of \(vhdBlocks) blocks of 2 MiB to write")
        guard !wanted.isEmpty else { return (0, notes) }
        let settings = ctx.settings(sourcePool)
        guard let info = try await source.nbdInfo(snapVDI).first else {
            throw EngineError(.action, disk.name, "no NBD server for \(disk.name): replication reads over NBD")
        }
        let endpoint = NBDEndpoint(address: info.address, port: info.port, exportName: info.exportName,
                                   tls: settings.nbdTLS ? .certificate(info.cert) : .off)
        // Staged in a sparse scratch file: the readers deliver out of order, the VHD goes out in order.
        let scratch = ctx.state.scratch.appendingPathComponent("replica-\(snapInfo.uuid).raw").path
        let fd = open(scratch, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw EngineError(.action, scratch, "cannot create \(scratch): \(String(cString: strerror(errno)))") }
        defer {
            close(fd)
            unlink(scratch)
        }
        let blocks = wanted.sorted()
        let connections = settings.nbdConnections
        let dropZero = skipZero
        let present: [Int] = try await blocking {
            let nbd = try NBDDiskSource(endpoint, size: size, connections: connections)
            let jobs = blocks.map { b -> ReadJob in
                let start = Int64(b) * Int64(VHD.blockSize)
                return ReadJob(chunk: b, ranges: [ByteRange(offset: start, length: Int(min(Int64(VHD.blockSize), size - start)))])
            }
            let pool = BufferPool(size: VHD.blockSize, limit: 2 * connections * 8 + 4)
            let nonZero = Mutex<Set<Int>>([])
            try nbd.read(jobs, buffers: pool, deliver: { job, buffer in
                defer { pool.release(buffer) }
                let n = job.bytes
                let bytes = UnsafeRawBufferPointer(rebasing: buffer.memory[0..<n])
                if bytes.contains(where: { $0 != 0 }) { nonZero.withLock { _ = $0.insert(job.chunk) } }
                var done = 0
                while done < n {
                    let w = pwrite(fd, bytes.baseAddress! + done, n - done, off_t(job.ranges[0].offset) + off_t(done))
                    guard w > 0 else { throw EngineError(.action, scratch, "cannot write \(scratch): \(String(cString: strerror(errno)))") }
                    done += w
                }
            })
            let found = nonZero.withLock { $0 }
            return dropZero ? blocks.filter(found.contains) : blocks
        }
        guard !present.isEmpty else { return (0, notes) }
        let layout = VHD.Layout(size: UInt64(size), presentBlocks: present)
        let pipe = StreamPipe { emit in
            try VHD.write(size: UInt64(size), presentBlocks: present, readBlock: { block, buffer in
                let start = Int64(block) * Int64(VHD.blockSize)
                let n = Int(min(Int64(VHD.blockSize), size - start))
                var done = 0
                while done < n {
                    let r = pread(fd, buffer.baseAddress! + done, n - done, off_t(start) + off_t(done))
                    guard r >= 0 else { throw EngineError(.action, scratch, "cannot read \(scratch)") }
                    if r == 0 { break }
                    done += r
                }
            }, emit: emit)
        }
        do {
            try await target.importRawVDI(replicaVDI, format: .vhd, length: layout.fileSize) { try pipe.read(into: $0) }
            try pipe.finish()
        } catch {
            pipe.abandon()
            throw error
        }
        return (Int64(present.count) * Int64(VHD.blockSize), notes)
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
    func anchor(_ snapshot: VMRef, snapDisks: [String: (VDIRef, VDIRecord)], vm: VMRecord, started: Date) async throws {
        let snapUUID = try await source.record(snapshot).uuid
        let previous = try ctx.catalog.view().anchors.filter { $0.pool == sourcePool && $0.policy == owner && $0.vmUUID == vm.uuid }
        try await withRetry(on: log) { try await source.destroy(snapshot) }
        try ctx.catalog.disown(pool: sourcePool, uuid: snapUUID)
        for (key, (ref, info)) in snapDisks {
            try await withRetry(attempts: 8, on: log) { try await source.dataDestroy(ref) }
            try await source.setOtherConfig(ref, key: OwnershipMarks.role, value: "cbt-anchor")
            let sourceVDI = job.disks.first { $0.key == key }?.sourceVDI ?? ""
            try ctx.catalog.setAnchor(Anchor(pool: sourcePool, policy: owner, vmUUID: vm.uuid, diskKey: key, sourceVDI: sourceVDI, snapshotVM: "",
                                             snapshotVDI: info.uuid, backupID: "", dataDestroyed: true))
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
            try await withRetry(on: log) { try await source.destroy(snapshot) }
            try ctx.catalog.disown(pool: sourcePool, uuid: record.uuid)
            for (ref, uuid) in vdis {
                try await withRetry(on: log) { try await source.destroy(ref) }
                try ctx.catalog.disown(pool: sourcePool, uuid: uuid)
            }
        } catch {
            log("could not remove the snapshot of the failed sync (\(error)); it carries haven's mark")
        }
    }
}

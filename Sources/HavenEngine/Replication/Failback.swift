import Foundation
import HavenCatalog
import HavenCore
import HavenData
import XenAPI

/// Fail-back after `haven failover`: the replica's changes go back onto the original VM, and
/// replication resumes in the normal direction. Steps, in order (each safe to stop after):
///
/// 1. the original VM is checked halted (a running original is never written); the replica is
///    snapshotted on the target and the snapshot marked as a restore point at once;
/// 2. per disk, the blocks to send: those the replica changed since the failover (CBT between the
///    anchor the failover recorded and the snapshot) and those the original wrote after the last
///    sync (CBT between the last sync's anchor and the original's disk) — or every block when an
///    anchor is missing — read from the replica's snapshot over NBD and written onto the original's
///    VDI as a VHD delta;
/// 3. the original is snapshotted; its disks become the next sync's CBT anchors (the previous
///    anchors go), so the next normal incremental reads only what changes from now on;
/// 4. the replica is blocked again, its failover marks removed, the failover anchors destroyed,
///    and the catalog record closed (`failedOverAt` cleared, `lastSync` = the fail-back).
///
/// A replica still running keeps running ("running (never written)") until the user shuts it
/// down; the first sync after that rewrites whatever it wrote after step 1 (the guard).
struct FailbackRun {
    let ctx: ExecutionContext
    let action: PlannedAction
    let job: FailbackJob
    let source: XenAPIClient
    let target: XenAPIClient

    var policy: String { action.policy ?? "" }
    var owner: String { replicationOwnerKey(policy) }
    var sourcePool: String { action.pool }
    func log(_ s: String) { ctx.log(action, s) }

    func run() async throws -> ActionOutcome {
        let vmName = action.vm?.name ?? ""
        guard let vmRef = try await lookup({ try await source.vm(uuid: action.vm?.uuid ?? "") }) else {
            throw EngineError(.action, vmName, "VM \(vmName) no longer exists on pool \(sourcePool); nothing was failed back")
        }
        let vmRecord = try await source.record(vmRef)
        guard vmRecord.powerState == .halted else {
            throw EngineError(.action, vmName, "\(vmName) is \(vmRecord.powerState.rawValue.lowercased()): a running original is never written; shut it down and fail back again")
        }
        guard let record = try ctx.catalog.view().replicas.first(where: { $0.policy == policy && $0.sourcePool == sourcePool && $0.sourceVM == vmRecord.uuid }),
              record.failedOverAt != nil, record.replicaUUID == job.replicaUUID else {
            throw EngineError(.action, vmName, "the catalog no longer records a failover of \(vmName)'s replica \(job.replicaUUID)")
        }
        guard let replicaRef = try await lookup({ try await target.vm(uuid: job.replicaUUID) }) else {
            throw EngineError(.action, job.replicaUUID, "the replica \(job.replicaUUID) is gone from \(job.targetPool)")
        }
        let replicaRecord = try await target.record(replicaRef)
        guard replicaRecord.otherConfig[OwnershipMarks.owner] == ctx.instance, replicaRecord.otherConfig[OwnershipMarks.role] == "replica" else {
            throw EngineError(.action, job.replicaUUID, "VM \(replicaRecord.nameLabel) does not carry haven's replica mark; left alone")
        }
        let started = ctx.now()
        // The synthetic sync job lets the fail-back reuse the sync's restore points, anchors and pruning.
        let syncJob = ReplicationJob(mode: .incremental, targetPool: job.targetPool, targetSR: "", targetSRName: "", replicaName: replicaRecord.nameLabel,
                                     networks: [:], keep: job.keep, trustDestination: false,
                                     disks: job.disks.map { ReplicaDiskJob(key: $0.key, sourceVDI: $0.originalVDI, name: $0.name, size: $0.size) },
                                     replicaUUID: job.replicaUUID)
        let sync = ReplicateRun(ctx: ctx, action: action, job: syncJob, source: source, target: target)

        // 1. The replica's state now, kept as its newest restore point.
        let replicaDisks = try await diskMap(target, replicaRecord)
        let pointName = "\(replicaRecord.nameLabel) fail-back \(ISO8601DateFormatter().string(from: started))"
        let snap = try await withRetry(on: log) { try await target.snapshot(replicaRef, name: pointName) }
        let snapRecord = try await target.record(snap)
        try ctx.catalog.own(OwnedObject(pool: job.targetPool, cls: "VM", uuid: snapRecord.uuid, role: "restore-point", policy: owner,
                                        vmUUID: vmRecord.uuid, createdAt: started))
        for (k, v) in [(OwnershipMarks.owner, ctx.instance), (OwnershipMarks.role, "restore-point"), (OwnershipMarks.policy, owner),
                       ("haven.created", ISO8601DateFormatter().string(from: started))] {
            try await target.setOtherConfig(snap, key: k, value: v)
        }
        let snapDisks = try await diskMap(target, snapRecord)
        log("snapshotted the replica \(replicaRecord.nameLabel) (\(replicaRecord.powerState.rawValue.lowercased())) as restore point \(snapRecord.uuid)")

        // 2. The blocks, disk by disk.
        let originalDisks = try await diskMap(source, vmRecord)
        var counters = CopyCounters()
        var notes: [String] = []
        for disk in job.disks {
            try Task.checkCancellation()
            guard let (snapVDI, snapInfo) = snapDisks[disk.key], let (originalVDI, originalInfo) = originalDisks[disk.key],
                  originalInfo.uuid == disk.originalVDI, replicaDisks[disk.key]?.1.uuid == disk.replicaVDI else {
                throw EngineError(.action, vmName, "disk \(disk.key) of \(vmName) or of its replica changed since the plan")
            }
            let (c, said) = try await ctx.limiters(sourcePool).transfers.with {
                try await sendBack(disk, snapVDI: snapVDI, snapInfo: snapInfo, originalVDI: originalVDI)
            }
            counters = counters + c
            notes += said
        }

        // 3. The original as it is now: the next sync's anchors.
        let sourceSnapName = "haven replica \(policy) \(vmRecord.nameLabel) \(ISO8601DateFormatter().string(from: started))"
        try ctx.catalog.recordIntent(SnapshotIntent(pool: sourcePool, vmUUID: vmRecord.uuid, policy: owner, name: sourceSnapName, requestedAt: started))
        let sourceSnap = try await withRetry(on: log) { try await source.snapshot(vmRef, name: sourceSnapName) }
        try await sync.markSnapshot(sourceSnap, source: vmRecord.uuid, started: started)
        var sourceSnapDisks: [String: (VDIRef, VDIRecord)] = [:]
        for (key, (ref, info)) in try await diskMap(source, try await source.record(sourceSnap)) {
            try await source.setOtherConfig(ref, key: OwnershipMarks.owner, value: ctx.instance)
            try await source.setOtherConfig(ref, key: OwnershipMarks.role, value: "replication-snapshot-disk")
            try ctx.catalog.own(OwnedObject(pool: sourcePool, cls: "VDI", uuid: info.uuid, role: "replication-snapshot-disk", policy: owner,
                                            vmUUID: vmRecord.uuid, createdAt: started))
            sourceSnapDisks[key] = (ref, info)
        }
        try await sync.anchor(sourceSnap, snapDisks: sourceSnapDisks, vm: vmRecord, started: started)

        // 4. The normal direction again.
        try await target.setBlockedOperations(replicaRef, Dictionary(uniqueKeysWithValues: ReplicateRun.blockedOperations.map {
            ($0, "haven replica of \(vmRecord.nameLabel) (ReplicationPolicy \(policy)): start it with `haven failover \(policy) \(vmRecord.nameLabel)`")
        }))
        for key in ["haven.failed-over", failoverBehindMark] where replicaRecord.otherConfig[key] != nil {
            try await target.removeOtherConfig(replicaRef, key: key)
        }
        try ctx.catalog.setReplica(ReplicaRecord(policy: policy, sourcePool: sourcePool, sourceVM: vmRecord.uuid, sourceName: vmRecord.nameLabel,
                                                 targetPool: job.targetPool, replicaUUID: job.replicaUUID,
                                                 disks: replicaDisks.mapValues { $0.1.uuid }, lastSync: started, failedOverAt: nil))
        do {
            try await retireFailoverAnchors(vm: vmRecord.uuid)
            try await sync.pruneRestorePoints(ReplicateRun.Replica(ref: replicaRef, uuid: job.replicaUUID, disks: [:], diskUUIDs: [:]))
        } catch {
            let text = "clean-up after the fail-back did not finish (\(error)); the next run retries it"
            log(text)
            notes.append(text)
        }
        if replicaRecord.powerState != .halted {
            notes.append("the replica \(replicaRecord.nameLabel) is still \(replicaRecord.powerState.rawValue.lowercased()): it is blocked from starting again and written by the next sync once shut down")
        }
        return ActionOutcome("failed back \(vmRecord.nameLabel) from \(replicaRecord.nameLabel) on \(job.targetPool): \(job.disks.count) disk\(job.disks.count == 1 ? "" : "s"), read \(counters.read) bytes, wrote \(counters.written) bytes (VHD of \(counters.sent) bytes); restore point \(snapRecord.uuid)",
                             bytesRead: counters.read, bytesStored: counters.written, notes: notes)
    }

    /// Per disk: blocks changed on either side since they were last equal, read from the
    /// replica's snapshot over NBD (on the target pool), written onto the original's VDI.
    func sendBack(_ disk: FailbackDiskJob, snapVDI: VDIRef, snapInfo: VDIRecord, originalVDI: VDIRef) async throws -> (CopyCounters, [String]) {
        var notes: [String] = []
        let size = snapInfo.virtualSize
        let total = Int((size + Int64(ChangedBlocks.blockSize) - 1) / Int64(ChangedBlocks.blockSize))
        var wanted = Set<Int>()
        var every = !disk.incremental
        if let fa = disk.failoverAnchorVDI, let sa = disk.sourceAnchorVDI {
            do {
                let from = try await target.vdi(uuid: fa)
                let replicaSide = try ChangedBlocks(base64: try await withRetry(on: log) { try await target.listChangedBlocks(from: from, to: snapVDI) }, diskSize: size)
                let anchor = try await source.vdi(uuid: sa)
                let originalSide = try ChangedBlocks(base64: try await withRetry(on: log) { try await source.listChangedBlocks(from: anchor, to: originalVDI) }, diskSize: size)
                wanted.formUnion(replicaSide.blocks)
                wanted.formUnion(originalSide.blocks)
                log("disk \(disk.key): \(replicaSide.blocks.count) blocks changed on the replica since the failover, \(originalSide.blocks.count) on the original after the last sync")
            } catch let e as XenAPIError where BackupRun.chainBroken(e) {
                every = true
                let text = "disk \(disk.key): every block, because a CBT chain is broken (\(e.code))"
                log(text)
                notes.append(text)
            }
        }
        if every { wanted = Set(0..<total) }
        guard !wanted.isEmpty else { return (CopyCounters(), notes) }
        let settings = ctx.settings(job.targetPool)
        guard let info = try await target.nbdInfo(snapVDI).first else {
            throw EngineError(.action, disk.name, "no NBD server on \(job.targetPool) for the replica's disk \(disk.key): fail-back reads over NBD")
        }
        let endpoint = NBDEndpoint(address: info.address, port: info.port, exportName: info.exportName, tls: settings.nbdTLS ? .certificate(info.cert) : .off)
        let staged = try StagedDisk(scratch: ctx.state.scratch, name: "failback-\(snapInfo.uuid)", size: size)
        defer { staged.close() }
        let blocks = wanted.sorted()
        let connections = settings.nbdConnections
        // The VHD goes out while the replica is read.
        let (_, written, sent) = try await staged.readAndSend(blocks: blocks, to: source, vdi: originalVDI,
                                                                 what: "disk \(disk.key) (\(disk.name)) onto \(action.vm?.name ?? "the original VM") on pool \(sourcePool)") {
            let nbd = try NBDDiskSource(endpoint, size: size, connections: connections)
            try staged.read(blocks: blocks, from: nbd)
        }
        log("disk \(disk.key): wrote \(blocks.count) blocks of 64 KiB (\(written) bytes) onto the original")
        return (CopyCounters(read: written, written: written, sent: sent), notes)
    }

    func retireFailoverAnchors(vm: String) async throws {
        for a in try ctx.catalog.view().anchors where a.pool == job.targetPool && a.policy == failoverAnchorKey(policy) && a.vmUUID == vm {
            if let ref = try await lookup({ try await target.vdi(uuid: a.snapshotVDI) }),
               try await target.record(ref).otherConfig[OwnershipMarks.owner] == ctx.instance {
                try await withRetry(on: log) { try await target.destroy(ref) }
            }
            try ctx.catalog.disown(pool: job.targetPool, uuid: a.snapshotVDI)
            try ctx.catalog.removeAnchor(pool: job.targetPool, snapshotVDI: a.snapshotVDI)
        }
    }

    func diskMap(_ client: XenAPIClient, _ vm: VMRecord) async throws -> [String: (VDIRef, VDIRecord)] {
        var out: [String: (VDIRef, VDIRecord)] = [:]
        for vbd in vm.vbds {
            let b = try await client.record(vbd)
            guard b.type == "Disk", !b.vdi.isNull else { continue }
            out[b.userdevice] = (b.vdi, try await client.record(b.vdi))
        }
        return out
    }
}

import Foundation
import HavenCatalog
import HavenCore
import XenAPI

/// What `haven failover` did.
public struct FailoverOutcome: Sendable {
    public var replicaName: String
    public var targetPool: String
    public var restorePoint: String
    public var restorePointTime: String
    public var started: Bool
}

extension Engine {
    /// Makes a replica the VM of record: reverts it to a restore point (the newest, the one named,
    /// or the newest at or before `at`), lifts the start block, starts it unless told not to, and
    /// records the failover — from then on no plan writes that replica.
    public func failover(policy: String, vm: String, restorePoint: String? = nil, at: Date? = nil, start: Bool = true,
                         lockTimeout: Double? = 0, now: Date = Date()) async throws -> FailoverOutcome {
        let records = try catalog.view().replicas.filter { $0.policy == policy && ($0.sourceName == vm || $0.sourceVM == vm) }
        guard let record = records.first else {
            let known = try catalog.view().replicas.filter { $0.policy == policy }.map(\.sourceName).sorted()
            throw EngineError(.notFound, "\(policy)/\(vm)", "ReplicationPolicy \(policy) keeps no replica of \(vm)" + (known.isEmpty ? "" : " (it keeps: \(known.joined(separator: ", ")))"))
        }
        guard record.failedOverAt == nil else {
            throw EngineError(.action, record.replicaUUID, "the replica of \(record.sourceName) was already failed over at \(ISO8601DateFormatter().string(from: record.failedOverAt!))")
        }
        guard let client = sessions.client(record.targetPool) else { throw EngineError(.connect, record.targetPool, "no session to pool \(record.targetPool)") }
        do {
            return try await failoverLocked(record: record, client: client, restorePoint: restorePoint, at: at, start: start, lockTimeout: lockTimeout, now: now)
        } catch let e as XenAPIError {
            // Before anything changed (the replica's record, its restore points): a bare xapi code
            // would not say what failed.
            throw EngineError(.action, record.replicaUUID, "failover of \(record.sourceName) failed before the replica was touched (\(e)); nothing changed")
        }
    }

    func failoverLocked(record: ReplicaRecord, client: XenAPIClient, restorePoint: String?, at: Date?, start: Bool, lockTimeout: Double?,
                        now: Date) async throws -> FailoverOutcome {
        return try await withSessions {
            try await withPoolLocks([record.sourcePool, record.targetPool].sorted().reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } },
                                    timeout: lockTimeout) {
                guard let replica = try await lookup({ try await client.vm(uuid: record.replicaUUID) }) else {
                    throw EngineError(.notFound, record.replicaUUID, "the replica \(record.replicaUUID) of \(record.sourceName) is gone from \(record.targetPool)")
                }
                let rec = try await client.record(replica)
                guard rec.otherConfig[OwnershipMarks.owner] == instance, rec.otherConfig[OwnershipMarks.role] == "replica" else {
                    throw EngineError(.action, record.replicaUUID, "VM \(rec.nameLabel) does not carry haven's replica mark; left alone")
                }
                let vms = try await client.records(VMRecord.self)
                let points = vms.filter { $0.value.isASnapshot && $0.value.snapshotOf == replica && $0.value.otherConfig[OwnershipMarks.role] == "restore-point" }
                    .map { (ref: $0.key, record: $0.value, time: ISO8601DateFormatter().date(from: $0.value.otherConfig["haven.created"] ?? "") ?? .distantPast) }
                    .sorted { $0.time > $1.time }
                let chosen: (ref: VMRef, record: VMRecord, time: Date)?
                if let restorePoint {
                    chosen = points.first { $0.record.uuid == restorePoint || $0.record.nameLabel == restorePoint }
                } else if let at {
                    chosen = points.first { $0.time <= at }
                } else {
                    chosen = points.first
                }
                guard let point = chosen else {
                    let list = points.map { "\($0.record.uuid) (\(ISO8601DateFormatter().string(from: $0.time)))" }.joined(separator: ", ")
                    throw EngineError(.notFound, record.replicaUUID, "no restore point of \(rec.nameLabel) matches" + (list.isEmpty ? "; it has none" : "; it has: \(list)"))
                }
                // The failover is recorded before the replica is touched: killed from here on, the
                // replica is the VM of record (no sync writes it, no plan removes it; `haven
                // failback` or `haven replicas delete` ends it). Recorded after, a run killed after
                // the revert (new disks, so the recorded ones are gone) let the next apply take the
                // replica for an unfinished one and destroy it (kill sweep).
                var opened = record
                opened.failedOverAt = now
                try catalog.setReplica(opened)
                var reverted = false
                do {
                    if rec.powerState != .halted { try await client.hardShutdown(replica) }
                    try await withRetry { try await client.revert(to: point.ref) }
                    reverted = true
                    // xapi's revert restores the settings of snapshot time (blocked_operations included)
                    // and gives the VM new disks without CBT: unblock, and switch CBT on again so that a
                    // later fail-back can tell what the running replica changed.
                    for op in ReplicateRun.blockedOperations { try await client.unblock(replica, operation: op) }
                    try await client.setOtherConfig(replica, key: "haven.failed-over", value: ISO8601DateFormatter().string(from: now))
                    var disks: [String: String] = [:]
                    for vbd in try await client.record(replica).vbds {
                        let b = try await client.record(vbd)
                        guard b.type == "Disk", !b.vdi.isNull else { continue }
                        let v = try await client.record(b.vdi)
                        if !v.cbtEnabled { try await withRetry { try await client.enableCBT(b.vdi) } }
                        disks[b.userdevice] = v.uuid
                    }
                    // The fail-back anchor: the replica's disks as they are before it starts, reduced to
                    // CBT metadata, so a fail-back sends only what the running replica changes.
                    try await recordFailoverAnchors(client, replica: replica, record: record, name: rec.nameLabel, now: now)
                    if let newest = points.first, newest.ref != point.ref {
                        try await client.setOtherConfig(replica, key: failoverBehindMark, value: point.record.uuid)
                    }
                    var failed = ReplicaRecord(policy: record.policy, sourcePool: record.sourcePool, sourceVM: record.sourceVM, sourceName: record.sourceName,
                                               targetPool: record.targetPool, replicaUUID: record.replicaUUID, disks: disks, lastSync: record.lastSync)
                    failed.failedOverAt = now
                    try catalog.setReplica(failed)
                    if start { try await client.start(replica) }
                } catch let e as XenAPIError {
                    // Failed (not killed): before the revert nothing changed, and the replica goes
                    // back to being a replica; after it, the failover stays recorded (the
                    // replica's disks are the restore point's now) and the error says so.
                    if !reverted {
                        try? catalog.setReplica(record)
                        throw EngineError(.action, record.replicaUUID, "failover of \(record.sourceName) to \(rec.nameLabel) failed before the replica was reverted (\(e)); nothing changed, the replica stays a replica")
                    }
                    throw EngineError(.action, record.replicaUUID, "failover of \(record.sourceName) to \(rec.nameLabel) failed after the replica was reverted to restore point \(point.record.nameLabel) (\(e)); the failover is recorded: start the replica by hand, or `haven failback \(record.policy) \(record.sourceName)`")
                }
                return FailoverOutcome(replicaName: rec.nameLabel, targetPool: record.targetPool, restorePoint: point.record.uuid,
                                       restorePointTime: ISO8601DateFormatter().string(from: point.time), started: start)
            }
        }
    }

    /// A snapshot of the replica whose disks keep only their CBT metadata, recorded as the
    /// failover anchors (catalog key `failover:POLICY`); the snapshot VM itself goes.
    func recordFailoverAnchors(_ client: XenAPIClient, replica: VMRef, record: ReplicaRecord, name: String, now: Date) async throws {
        let owner = replicationOwnerKey(record.policy)
        // As for a restore point: the intent first (a snapshot made after this process died is found
        // by it and removed), marks before the inventory, and only then the intent cleared.
        let snapName = "\(name) failover anchor \(ISO8601DateFormatter().string(from: now))"
        let replicaUUID = try await client.record(replica).uuid
        try catalog.recordIntent(SnapshotIntent(pool: record.targetPool, vmUUID: replicaUUID, policy: owner, name: snapName, requestedAt: now))
        let snap = try await withRetry { try await client.snapshot(replica, name: snapName) }
        let snapRecord = try await client.record(snap)
        try await client.setOtherConfig(snap, key: OwnershipMarks.owner, value: instance)
        try await client.setOtherConfig(snap, key: OwnershipMarks.role, value: "failover-anchor")
        try await client.setOtherConfig(snap, key: OwnershipMarks.policy, value: owner)
        try catalog.own(OwnedObject(pool: record.targetPool, cls: "VM", uuid: snapRecord.uuid, role: "failover-anchor", policy: owner, vmUUID: record.sourceVM, createdAt: now))
        try catalog.clearIntent(pool: record.targetPool, name: snapName)
        var disks: [(String, VDIRef, String)] = []
        for vbd in snapRecord.vbds {
            let b = try await client.record(vbd)
            guard b.type == "Disk", !b.vdi.isNull else { continue }
            let v = try await client.record(b.vdi)
            try await client.setOtherConfig(b.vdi, key: OwnershipMarks.owner, value: instance)
            try await client.setOtherConfig(b.vdi, key: OwnershipMarks.role, value: "failover-anchor")
            try await client.setOtherConfig(b.vdi, key: OwnershipMarks.policy, value: owner)
            try catalog.own(OwnedObject(pool: record.targetPool, cls: "VDI", uuid: v.uuid, role: "failover-anchor", policy: owner, vmUUID: record.sourceVM, createdAt: now))
            disks.append((b.userdevice, b.vdi, v.uuid))
        }
        try await withRetry { try await client.destroy(snap) }
        try catalog.disown(pool: record.targetPool, uuid: snapRecord.uuid)
        var replicaDisks: [String: String] = [:]
        for vbd in try await client.record(replica).vbds {
            let b = try await client.record(vbd)
            if b.type == "Disk", !b.vdi.isNull { replicaDisks[b.userdevice] = try await client.record(b.vdi).uuid }
        }
        for (key, ref, uuid) in disks {
            try await withRetry(attempts: 8) { try await client.dataDestroy(ref) }
            try catalog.setAnchor(Anchor(pool: record.targetPool, policy: failoverAnchorKey(record.policy), vmUUID: record.sourceVM, diskKey: key,
                                         sourceVDI: replicaDisks[key] ?? "", snapshotVM: "", snapshotVDI: uuid, backupID: "", dataDestroyed: true))
        }
    }
}

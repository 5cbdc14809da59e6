import Foundation
import HavenCatalog
import HavenCore
import HavenSpec
import XenAPI

/// A replica as `haven replicas list` shows it.
public struct ReplicaStatus: Sendable, Codable {
    public var policy: String
    public var vm: String
    public var sourcePool: String
    public var targetPool: String
    public var replica: String
    public var replicaUUID: String
    public var lastSync: Date?
    /// Seconds the replica is behind its schedule (0 when within it); nil when never synced.
    public var lagSeconds: Double?
    public var restorePoints: Int?
    public var powerState: String?
    /// "ok", "running (never written)", "failed over", "gone", "unknown (pool unreachable)", "policy removed".
    public var state: String

    public init(policy: String, vm: String, sourcePool: String, targetPool: String, replica: String, replicaUUID: String, lastSync: Date?,
                lagSeconds: Double? = nil, restorePoints: Int? = nil, powerState: String? = nil, state: String) {
        self.policy = policy
        self.vm = vm
        self.sourcePool = sourcePool
        self.targetPool = targetPool
        self.replica = replica
        self.replicaUUID = replicaUUID
        self.lastSync = lastSync
        self.lagSeconds = lagSeconds
        self.restorePoints = restorePoints
        self.powerState = powerState
        self.state = state
    }
}

extension Engine {
    /// Every replica the catalog knows, with what the target pool says of it.
    public func replicas(now: Date) async throws -> [ReplicaStatus] {
        let records = try catalog.view().replicas
        let pools = Set(records.map(\.targetPool))
        let observation = await observe(pools: pools.sorted())
        await logout()
        return ReplicaStatus.make(records, desired: desired, observation: observation, now: now)
    }
}

extension ReplicaStatus {
    /// The replicas the catalog knows, with what the target pools (as read) say of them. Pure.
    public static func make(_ records: [ReplicaRecord], desired: DesiredState, observation: Observation, now: Date) -> [ReplicaStatus] {
        var out: [ReplicaStatus] = []
        for r in records.sorted(by: { ($0.policy, $0.sourceName) < ($1.policy, $1.sourceName) }) {
            let policy = desired.replicationPolicies.first { $0.name == r.policy }
            var s = ReplicaStatus(policy: r.policy, vm: r.sourceName, sourcePool: r.sourcePool, targetPool: r.targetPool, replica: "", replicaUUID: r.replicaUUID,
                                  lastSync: r.lastSync, state: "ok")
            if let last = r.lastSync, let every = policy?.spec.schedule.every {
                s.lagSeconds = max(0, now.timeIntervalSince(last) - Double(every.seconds))
            }
            if let pool = observation.pools[r.targetPool] {
                if let vm = pool.vms.first(where: { $0.uuid == r.replicaUUID }) {
                    s.replica = vm.name
                    s.powerState = vm.powerState
                    s.restorePoints = pool.snapshots.filter { $0.snapshotOf == vm.uuid && $0.otherConfig[OwnershipMarks.role] == "restore-point" }.count
                    if vm.powerState.lowercased() != "halted" { s.state = "running (never written)" }
                } else {
                    s.state = "gone"
                }
            } else {
                s.state = "unknown (pool \(r.targetPool) cannot be read)"
            }
            if r.failedOverAt != nil { s.state = "failed over" }
            if policy == nil { s.state += ", policy removed" }
            out.append(s)
        }
        return out
    }
}

extension Engine {
    /// Deletes a replica haven made, with its restore points, and replication's CBT anchors on
    /// the source: what `diff` names when a ReplicationPolicy is removed (DR copies are never
    /// deleted implicitly). Only objects carrying haven's mark and in the inventory are touched.
    public func deleteReplica(policy: String, vm: String, lockTimeout: Double? = 0) async throws -> [String] {
        guard let record = try catalog.view().replicas.first(where: { $0.policy == policy && ($0.sourceName == vm || $0.sourceVM == vm) }) else {
            throw EngineError(.notFound, "\(policy)/\(vm)", "the catalog knows no replica of \(vm) kept by ReplicationPolicy \(policy) (see `haven replicas list`)")
        }
        guard let target = sessions.client(record.targetPool) else { throw EngineError(.connect, record.targetPool, "no session to pool \(record.targetPool)") }
        let owner = replicationOwnerKey(policy)
        return try await withSessions {
            try await withPoolLocks(Array(Set([record.sourcePool, record.targetPool])).sorted(), timeout: lockTimeout) {
                var done: [String] = []
                let inventory = try catalog.view().inventory
                func owned(_ pool: String, _ uuid: String) -> Bool { inventory.contains { $0.pool == pool && $0.uuid == uuid } }
                if let ref = try await lookup({ try await target.vm(uuid: record.replicaUUID) }) {
                    let rec = try await target.record(ref)
                    guard rec.otherConfig[OwnershipMarks.owner] == instance, owned(record.targetPool, record.replicaUUID) else {
                        throw EngineError(.action, record.replicaUUID, "VM \(rec.nameLabel) does not carry haven's mark; left alone")
                    }
                    if rec.powerState != .halted { try await target.hardShutdown(ref) }
                    for (pref, p) in try await target.records(VMRecord.self) where p.isASnapshot && p.snapshotOf == ref && p.otherConfig[OwnershipMarks.owner] == instance {
                        let disks = try await diskRefs(target, p)
                        try await withRetry { try await target.destroy(pref) }
                        for d in disks { try await withRetry { try await target.destroy(d) } }
                        try catalog.disown(pool: record.targetPool, uuid: p.uuid)
                        done.append("deleted restore point \(p.nameLabel)")
                    }
                    let disks = try await diskRefs(target, rec)
                    try await withRetry { try await target.destroy(ref) }
                    for d in disks {
                        let uuid = try await target.record(d).uuid
                        if try await target.record(d).otherConfig[OwnershipMarks.owner] == instance {
                            try await withRetry { try await target.destroy(d) }
                            try catalog.disown(pool: record.targetPool, uuid: uuid)
                        }
                    }
                    try catalog.disown(pool: record.targetPool, uuid: record.replicaUUID)
                    done.append("deleted replica \(rec.nameLabel) (\(record.replicaUUID)) on \(record.targetPool)")
                }
                if let source = sessions.client(record.sourcePool) {
                    for a in try catalog.view().anchors where a.pool == record.sourcePool && a.policy == owner && a.vmUUID == record.sourceVM {
                        if let v = try await lookup({ try await source.vdi(uuid: a.snapshotVDI) }),
                           try await source.record(v).otherConfig[OwnershipMarks.owner] == instance {
                            try await withRetry { try await source.destroy(v) }
                        }
                        try catalog.disown(pool: record.sourcePool, uuid: a.snapshotVDI)
                        try catalog.removeAnchor(pool: record.sourcePool, snapshotVDI: a.snapshotVDI)
                        done.append("retired replication anchor \(a.snapshotVDI) on \(record.sourcePool)")
                    }
                }
                // A replica deleted while failed over leaves its failover anchors (CBT metadata) on the target.
                for a in try catalog.view().anchors where a.pool == record.targetPool && a.policy == failoverAnchorKey(policy) && a.vmUUID == record.sourceVM {
                    if let v = try await lookup({ try await target.vdi(uuid: a.snapshotVDI) }),
                       try await target.record(v).otherConfig[OwnershipMarks.owner] == instance {
                        try await withRetry { try await target.destroy(v) }
                    }
                    try catalog.disown(pool: record.targetPool, uuid: a.snapshotVDI)
                    try catalog.removeAnchor(pool: record.targetPool, snapshotVDI: a.snapshotVDI)
                    done.append("retired failover anchor \(a.snapshotVDI) on \(record.targetPool)")
                }
                try catalog.removeReplica(policy: policy, sourcePool: record.sourcePool, sourceVM: record.sourceVM)
                return done
            }
        }
    }

    private func diskRefs(_ c: XenAPIClient, _ vm: VMRecord) async throws -> [VDIRef] {
        var out: [VDIRef] = []
        for vbd in vm.vbds {
            let b = try await c.record(vbd)
            if b.type == "Disk", !b.vdi.isNull { out.append(b.vdi) }
        }
        return out
    }
}

import Foundation
import HavenCore
import HavenSpec

/// A VM or VDI an `event.from` event named, reduced to what maps it to work keys. The pool
/// watcher fills it from the event's record (refs already turned into uuids).
public struct TouchedObject: Sendable, Hashable {
    public enum Class: String, Sendable { case vm, vdi }

    public var cls: Class
    public var uuid: String
    public var deleted = false
    /// A VM that is neither a template, a snapshot nor a control domain.
    public var isRealVM = false
    public var isSnapshot = false
    /// For a snapshot VM or VDI: the uuid of what it is a snapshot of.
    public var snapshotOf: String?
    public var name: String?
    public var tags: [String] = []
    /// haven's marks (`haven.*`) of `other_config`: a replica is selected by name only.
    public var havenRole: String?

    public init(cls: Class, uuid: String) {
        self.cls = cls
        self.uuid = uuid
    }
}

/// What a pool looked like the last time it was read, indexed for routing events to keys.
public struct PoolIndex: Sendable {
    /// VM uuid -> the keys reconciling it.
    var keysByVM: [String: Set<WorkKey>] = [:]
    /// Disk VDI uuid -> the VM it is attached to.
    var vmByDisk: [String: String] = [:]
    /// Snapshot VM uuid -> the VM it is a snapshot of.
    var sourceOfSnapshot: [String: String] = [:]
    /// CBT anchor (snapshot VDI) uuid -> the key that keeps it.
    var anchorKeys: [String: WorkKey] = [:]

    public init() {}

    /// `keys`: the pool's keys as the planner lists them (suspended policies are not among them).
    public init(pool: ObservedPool, keys: [WorkKey], catalog: CatalogView) {
        for k in keys where k.pool == pool.name { keysByVM[k.vm, default: []].insert(k) }
        for vm in pool.vms { for d in vm.disks { vmByDisk[d.vdiUUID] = vm.uuid } }
        for s in pool.snapshots { sourceOfSnapshot[s.uuid] = s.snapshotOf }
        let active = Set(keys)
        for a in catalog.anchors where a.pool == pool.name {
            let key = a.policy.hasPrefix("replication:")
                ? WorkKey(.replication, pool: a.pool, policy: String(a.policy.dropFirst("replication:".count)), vm: a.vmUUID)
                : WorkKey(.backup, pool: a.pool, policy: a.policy, vm: a.vmUUID)
            if active.contains(key) { anchorKeys[a.snapshotVDI] = key }
        }
    }
}

/// Maps pool events to work keys, as controller-runtime's event handlers map watched objects to
/// requests: a VM's own events to its keys (by the policies selecting it now, so a VM newly
/// tagged or renamed into a policy gets its key at once), a disk's to its VM's keys (CBT disabled
/// by hand), an anchor's to the key that keeps it (an anchor deleted), a snapshot's to its VM's.
/// A VM that left every policy (or was deleted) asks for its pool's housekeeping, which cleans up
/// after it. Pure.
public enum KeyRouter {
    public static func route(_ touched: [TouchedObject], pool: String, desired: DesiredState, index: PoolIndex) -> Set<WorkKey> {
        var out = Set<WorkKey>()
        var housekeeping = false
        func vmKeys(_ uuid: String?) {
            guard let uuid, let keys = index.keysByVM[uuid] else { return }
            out.formUnion(keys)
        }
        for t in touched {
            switch t.cls {
            case .vm:
                if t.isSnapshot {
                    vmKeys(t.snapshotOf ?? index.sourceOfSnapshot[t.uuid])
                } else if t.deleted {
                    if index.keysByVM[t.uuid] != nil { housekeeping = true }
                    vmKeys(index.sourceOfSnapshot[t.uuid])
                } else if t.isRealVM {
                    let now = selecting(t, pool: pool, desired: desired)
                    out.formUnion(now)
                    // Out of a policy it was in: its anchors and CBT are the housekeeping's to clean.
                    if !(index.keysByVM[t.uuid] ?? []).isSubset(of: now) { housekeeping = true }
                }
            case .vdi:
                vmKeys(index.vmByDisk[t.uuid])
                if let key = index.anchorKeys[t.uuid] { out.insert(key) }
                if let source = t.snapshotOf { vmKeys(index.vmByDisk[source]) }
            }
        }
        if housekeeping { out.insert(.housekeeping(pool)) }
        return out
    }

    /// The keys of the policies (not suspended) on this pool whose selector takes this VM now.
    static func selecting(_ t: TouchedObject, pool: String, desired: DesiredState) -> Set<WorkKey> {
        let vm = ObservedVM(uuid: t.uuid, name: t.name ?? "", powerState: "", tags: t.tags, disks: [])
        var withRole = vm
        if let role = t.havenRole { withRole.otherConfig[OwnershipMarks.role] = role }
        var out = Set<WorkKey>()
        for p in desired.backupPolicies where !p.spec.suspend && p.spec.pool.value == pool && Planner.selects(p.spec.vms, withRole) {
            out.insert(WorkKey(.backup, pool: pool, policy: p.name, vm: t.uuid))
        }
        for r in desired.replicationPolicies where !r.spec.suspend && r.spec.source.value == pool && Planner.selects(r.spec.vms, withRole) {
            out.insert(WorkKey(.replication, pool: pool, policy: r.name, vm: t.uuid))
        }
        return out
    }
}

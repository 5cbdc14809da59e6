import Foundation
import HavenSpec

/// One key of the daemon's work queue and when the planner will next plan a run for it.
public struct KeySchedule: Sendable, Hashable {
    public var key: WorkKey
    /// When its next backup or sync falls due (the past: due now); nil: nothing scheduled
    /// (a failed-over replica, an unscheduled policy). The key is still reconciled on events.
    public var next: Date?

    public init(key: WorkKey, next: Date?) {
        self.key = key
        self.next = next
    }
}

extension Planner {
    /// Every (policy, VM) key of the observed pools that is not suspended (in the YAML or by
    /// `haven suspend`), with when the planner next plans its run: the same selection and the same
    /// "due" the planner uses, so a timer set to `next` wakes exactly when a run is planned.
    public func workKeys(desired: DesiredState, observed: [String: ObservedPool], catalog: CatalogView, now: Date) -> [KeySchedule] {
        let desired = desired.suspending(catalog.suspensions)
        var out: [KeySchedule] = []
        let backups = Dictionary(grouping: catalog.backups) { "\($0.pool)\u{0}\($0.policy)\u{0}\($0.vmUUID)" }
        for p in desired.backupPolicies where !p.spec.suspend {
            guard let pool = observed[p.spec.pool.value] else { continue }
            for vm in pool.vms where Context.selects(p.spec.vms, vm) {
                // A VM with no disk to read is never planned: no timer for it.
                let readable = vm.disks.contains { d in
                    pool.vdis[d.vdiUUID].map { !Context.excluded(d, $0, by: p.spec.excludeDisks.map(\.value)) } ?? false
                }
                let last = (backups["\(pool.name)\u{0}\(p.name)\u{0}\(vm.uuid)"] ?? []).filter { $0.repository == p.spec.repository.value }
                    .map(\.createdAt).max()
                out.append(KeySchedule(key: WorkKey(.backup, pool: pool.name, policy: p.name, vm: vm.uuid),
                                       next: readable ? Due.next(p.spec.schedule, last: last, now: now) : nil))
            }
        }
        for r in desired.replicationPolicies where !r.spec.suspend {
            guard let pool = observed[r.spec.source.value] else { continue }
            for vm in pool.vms where Context.selects(r.spec.vms, vm) {
                let record = catalog.replicas.first { $0.policy == r.name && $0.sourcePool == pool.name && $0.sourceVM == vm.uuid }
                let next = record?.failedOverAt != nil ? nil : Due.next(r.spec.schedule, last: record?.lastSync, now: now)
                out.append(KeySchedule(key: WorkKey(.replication, pool: pool.name, policy: r.name, vm: vm.uuid), next: next))
            }
        }
        return out.sorted { $0.key < $1.key }
    }

    /// Whether a policy's selector takes this VM, as the planner decides (a haven replica only by
    /// its name or uuid).
    public static func selects(_ selector: VMSelector, _ vm: ObservedVM) -> Bool { Context.selects(selector, vm) }

    /// The pools a key's reconcile acts on: its own, and a replication's target.
    public static func pools(of key: WorkKey, in desired: DesiredState) -> [String] {
        guard key.kind == .replication, let r = desired.replicationPolicies.first(where: { $0.name == key.policy }) else { return [key.pool] }
        return Array(Set([key.pool, r.spec.target.pool.value])).sorted()
    }
}

extension DesiredState {
    /// The desired state with these policies (BackupPolicies and ReplicationPolicies of that name)
    /// suspended: `haven suspend`'s overlay over the YAML.
    public func suspending(_ suspensions: [Suspension]) -> DesiredState {
        guard !suspensions.isEmpty else { return self }
        let names = Set(suspensions.map(\.policy))
        var d = self
        for i in d.backupPolicies.indices where names.contains(d.backupPolicies[i].name) { d.backupPolicies[i].spec.suspend = true }
        for i in d.replicationPolicies.indices where names.contains(d.replicationPolicies[i].name) { d.replicationPolicies[i].spec.suspend = true }
        return d
    }
}

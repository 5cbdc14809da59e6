import Foundation
import HavenCore

/// What one reconcile is asked to do.
public struct ReconcileRequest: Sendable {
    public var scope: TargetScope
    /// A plan saved by `haven diff --out`: executed only if the configuration, the pools and the
    /// catalog are still what it was made from.
    public var savedPlan: Plan?
    /// Seconds to wait for another haven holding a pool's lock; nil waits forever.
    public var lockTimeout: Double?
    public var now: @Sendable () -> Date
    /// `haven backup now`: plan backups whatever the schedule (never with a saved plan).
    public var forceBackup: ForceBackup?
    /// `haven failback`: plan this replica's fail-back without `reverse: true`.
    public var failback: FailbackRequest?
    /// The daemon's work queue: only these (policy, VM) keys, and housekeeping when asked.
    public var keys: KeyScope?
    /// False when the caller already holds the pools' locks (the daemon holds them for all its workers).
    public var takeLocks = true
    /// True when the caller logs the sessions out itself (the daemon's workers share them).
    public var keepSessions = false
    /// The keys other workers reconcile, asked once the pools are read (the housekeeping leaves
    /// them alone: whatever started before the read is in it, whatever starts later made nothing
    /// the plan could see).
    public var busy: (@Sendable () -> Set<WorkKey>)?

    public init(scope: TargetScope, savedPlan: Plan? = nil, lockTimeout: Double? = 0, now: @escaping @Sendable () -> Date = { Date() },
                forceBackup: ForceBackup? = nil, failback: FailbackRequest? = nil, keys: KeyScope? = nil) {
        self.keys = keys
        self.scope = scope
        self.failback = failback
        self.forceBackup = forceBackup
        self.savedPlan = savedPlan
        self.lockTimeout = lockTimeout
        self.now = now
    }
}

/// What a reconcile did.
public struct ReconcileReport: Sendable {
    public var plan: Plan
    /// False when the approval callback declined: nothing was executed.
    public var approved: Bool
    public var result: ExecutionResult
    public var unreachable: [String: String]
    /// The pools as they were read for this plan.
    public var observation = Observation()
    /// The keys of the pools read, with when each next falls due, as the catalog stands after
    /// execution (the daemon sets its timers from it).
    public var schedule: [KeySchedule] = []

    /// Everything planned succeeded and every pool in scope could be read.
    public var ok: Bool { result.ok && unreachable.isEmpty && plan.errors.isEmpty }
}

extension Engine {
    /// Observe → plan → approve → execute, holding every pool's lock in scope (taken in name
    /// order, so two runs never wait on each other crosswise), each pool observed on its own.
    /// Every session is logged out on every path out; cancelling the calling task starts no
    /// new action and lets running ones clean up.
    public func reconcile(_ request: ReconcileRequest, events: @escaping @Sendable (ExecutionEvent) -> Void,
                          approve: @escaping @Sendable (Plan) async throws -> Bool) async throws -> ReconcileReport {
        if request.keepSessions { return try await reconcileLocked(request, events: events, approve: approve) }
        return try await withSessions { try await reconcileLocked(request, events: events, approve: approve) }
    }

    private func reconcileLocked(_ request: ReconcileRequest, events: @escaping @Sendable (ExecutionEvent) -> Void,
                                 approve: @escaping @Sendable (Plan) async throws -> Bool) async throws -> ReconcileReport {
        let pools = request.takeLocks ? request.scope.pools.sorted() : []
        var report = try await withPoolLocks(pools, timeout: request.lockTimeout) {
            try await reconcileObserved(request, events: events, approve: approve)
        }
        report.schedule = Planner(instance: instance).workKeys(desired: desired, observed: report.observation.pools, catalog: try catalog.view(),
                                                               now: request.now())
        return report
    }

    private func reconcileObserved(_ request: ReconcileRequest, events: @escaping @Sendable (ExecutionEvent) -> Void,
                                   approve: @escaping @Sendable (Plan) async throws -> Bool) async throws -> ReconcileReport {
        let observation = await observe(pools: request.scope.pools)
        var keys = request.keys
        if let busy = request.busy { keys?.busy = busy() }
        try clearStaleIntents(observation, now: request.now(), keys: keys)
        // This run holds every pool's lock in scope (or the daemon holds them for it): a lease left
        // by a process that is gone is stale.
        try ApplianceLeases.clearStale(catalog)
        let plan: Plan
        if let saved = request.savedPlan {
            guard saved.formatVersion == Plan.currentFormatVersion else {
                throw EngineError(.stale, "plan", "the saved plan has format \(saved.formatVersion), this haven writes \(Plan.currentFormatVersion); run `haven diff --out` again")
            }
            let current = try fingerprint(observation)
            guard saved.fingerprint == current, saved.scope.pools.sorted() == request.scope.pools.sorted(),
                  Set(saved.scope.policies ?? []) == Set(request.scope.policies.map { Array($0) } ?? []),
                  Set(observation.unreachable.keys) == Set(saved.warnings.filter { $0.code == .poolUnreachable }.map(\.pool)) else {
                throw EngineError(.stale, "plan", "the saved plan is stale: the configuration, the pools or the catalog changed since it was made; run `haven diff --out` again")
            }
            // The file is not trusted: the plan is made again from the same inputs at the
            // moment it was made, and must come out the same, action for action. A plan edited
            // by hand (another version to prune, another repository path) is refused.
            let again = try self.plan(observation, now: saved.generatedAt, scope: request.scope.policies)
            guard again.actions == saved.actions, again.pools == saved.pools, again.appliancePools == saved.appliancePools else {
                throw EngineError(.stale, "plan", "the saved plan does not match what the configuration, the pools and the catalog give (it was edited, or made by another version of haven); run `haven diff --out` again")
            }
            plan = again
        } else {
            plan = try self.plan(observation, now: request.now(), scope: request.scope.policies, force: request.forceBackup, failback: request.failback,
                                 keys: keys)
        }
        var report = ReconcileReport(plan: plan, approved: true, result: ExecutionResult(), unreachable: observation.unreachable)
        report.observation = observation
        if plan.isEmpty { return report }
        guard try await approve(plan) else {
            report.approved = false
            return report
        }
        report.result = await executor(plan: plan, now: request.now, emit: events).apply()
        return report
    }

    /// An intent whose snapshot never appeared (the call failed before xapi made it) is dropped
    /// once the pool has been seen without it for a while; this run holds the pool's lock. A
    /// key-scoped run drops only its own keys' intents (another worker may be inside VM.snapshot).
    func clearStaleIntents(_ observation: Observation, now: Date, keys: KeyScope? = nil) throws {
        let view = try catalog.view()
        for i in view.intents where i.isApplianceIntent {
            // Kept while its process lives or a copy carries its name (the plan removes that copy first).
            guard let holder = i.applianceHolder, ApplianceLeases.isStale(holder: holder), let pool = observation.pools[i.pool] else { continue }
            if pool.templates[i.name] == nil, !pool.appliances.contains(where: { $0.name == i.name }), !pool.vms.contains(where: { $0.name == i.name }) {
                try catalog.clearIntent(pool: i.pool, name: i.name)
            }
        }
        for i in view.intents where !i.isApplianceIntent && now.timeIntervalSince(i.requestedAt) > 600 {
            if let keys, !keys.housekeeping, !keys.keys.contains(where: { $0.pool == i.pool && $0.vm == i.vmUUID }) { continue }
            if let keys, keys.isBusy(pool: i.pool, vm: i.vmUUID) { continue }
            guard let pool = observation.pools[i.pool] else { continue }
            // A replica's intent (before VM.create or an xva import) names no snapshot: it stays
            // while a VM or template carrying that replication's marks for that VM is not in the
            // inventory — the leftover it proves haven's (dropping it after 10 minutes left an
            // xva import no run could prove, found by the kill sweep).
            if i.name.hasPrefix(replicaIntentPrefix) {
                let unproven = (pool.vms + pool.havenTemplates).contains { vm in
                    vm.otherConfig[OwnershipMarks.source] == i.vmUUID && vm.otherConfig[OwnershipMarks.policy] == i.policy
                        && !view.inventory.contains { $0.pool == i.pool && $0.uuid == vm.uuid }
                }
                if !unproven { try catalog.clearIntent(pool: i.pool, name: i.name) }
                continue
            }
            if !pool.snapshots.contains(where: { $0.snapshotOf == i.vmUUID && $0.name == i.name }) {
                try catalog.clearIntent(pool: i.pool, name: i.name)
            }
        }
    }

    func withPoolLocks<T: Sendable>(_ pools: [String], timeout: Double?, _ body: () async throws -> T) async throws -> T {
        guard let first = pools.first else { return try await body() }
        return try await state.withPoolLock(first, timeout: timeout) {
            try await withPoolLocks(Array(pools.dropFirst()), timeout: timeout, body)
        }
    }
}

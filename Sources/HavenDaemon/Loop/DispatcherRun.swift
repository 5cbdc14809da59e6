import Foundation
import HavenCatalog
import HavenCore
import HavenEngine
import HavenSpec
import Logging

/// The dispatcher's working state while active: the engine of the configuration in force, the
/// keys known per pool (and the index that routes events to them), the pool locks held for the
/// workers. Used by the dispatcher's one task only.
final class DispatcherRun {
    let d: Dispatcher
    var engine: Engine?
    var generation = 0
    var suspensionGeneration = 0
    /// Engines of earlier configurations whose workers may still run; logged out once idle.
    var retired: [Engine] = []
    var known: [String: Set<WorkKey>] = [:]
    var index: [String: PoolIndex] = [:]
    var locks: [String: (lock: PoolLock, holders: Int)] = [:]
    var sessionsUsed = false
    var nextResync = Date.distantFuture
    /// Keys said to be due again right after a successful run (said once each).
    var warnedStillDue: Set<WorkKey> = []
    /// Pools whose every key runs once its housekeeping has listed them: at start, on a new
    /// configuration or suspension (the pools may have drifted meanwhile), as controller-runtime
    /// reconciles every object of its first list.
    var runAllAfterHousekeeping: Set<String> = []

    init(_ d: Dispatcher) { self.d = d }

    var logger: Logger { d.logger }

    // MARK: configuration

    /// A new good configuration: a new engine, the queue's limits, every pool's housekeeping
    /// (which lists its keys and their timers). A change of suspensions asks the same.
    func follow(_ snap: ConfigStore.Snapshot) {
        if let desired = snap.desired, snap.generation != generation {
            do {
                let e = try Engine(desired: desired, state: StateDirectory(path: d.options.statePath), logger: logger)
                if let old = engine { retired.append(old) }
                engine = e
                generation = snap.generation
                d.state.update { $0.engine = e }
            } catch {
                logger.error("cannot open the state directory", metadata: ["error": "\(error)"])
                return
            }
            let declared = Set(desired.pools.map(\.name))
            d.queue.mutate { q in
                q.limits = Dictionary(uniqueKeysWithValues: desired.pools.map { ($0.name, max(1, $0.spec.limits.transfers)) })
                q.targets = Dictionary(desired.replicationPolicies.map { ($0.name, $0.spec.target.pool.value) }) { a, _ in a }
                var through: [String: [String]] = [:]
                for p in desired.backupPolicies { if let ap = p.spec.appliances?.value { through[p.name, default: []].append(ap) } }
                for r in desired.replicationPolicies {
                    through[r.name, default: []] += [r.spec.appliances.source?.value, r.spec.appliances.target?.value].compactMap { $0 }
                }
                q.appliancePools = through.filter { !$0.value.isEmpty }
                for (pool, keys) in known where !declared.contains(pool) {
                    for k in keys { q.remove(k) }
                    q.remove(.housekeeping(pool))
                }
            }
            known = known.filter { declared.contains($0.key) }
            index = index.filter { declared.contains($0.key) }
            suspensionGeneration = snap.suspensionGeneration
            resyncAll(everyKey: true)
            return
        }
        if snap.suspensionGeneration != suspensionGeneration, engine != nil {
            suspensionGeneration = snap.suspensionGeneration
            // The housekeeping lists the keys again without (or with) the suspended policies.
            resyncAll(everyKey: true)
        }
    }

    /// Every pool's housekeeping now (and with `everyKey`, every key once it has listed them);
    /// the next one after the resync interval, which only resets the timers.
    func resyncAll(everyKey: Bool = false) {
        guard let engine else { return }
        let pools = engine.desired.pools.map(\.name)
        if everyKey { runAllAfterHousekeeping.formUnion(pools) }
        d.queue.mutate { q in for p in pools { q.add(.housekeeping(p), now: Date()) } }
        nextResync = Date().addingTimeInterval(d.options.resyncInterval.seconds)
    }

    /// A pool whose events may have been missed: every key of it, and its housekeeping, now.
    func resync(_ pool: String) {
        d.queue.mutate { q in
            q.add(.housekeeping(pool), now: Date())
            for k in (known[pool] ?? []).sorted() { q.add(k, now: Date()) }
        }
    }

    /// Pool events to keys (controller-runtime's event handlers): queued now.
    func route(_ touched: [TouchedObject], pool: String) {
        guard let engine else { return }
        let desired = engine.desired.suspending(d.store.snapshot.suspensions)
        let keys = KeyRouter.route(touched, pool: pool, desired: desired, index: index[pool] ?? PoolIndex())
        guard !keys.isEmpty else { return }
        logger.debug("events queue keys", metadata: ["pool": "\(pool)", "keys": "\(keys.sorted().map(\.description))"])
        d.queue.mutate { q in for k in keys.sorted() { q.add(k, now: Date()) } }
    }

    // MARK: workers

    /// Hands every key that may start now to a worker.
    func dispatch() {
        guard let engine else { return }
        while let (key, waited) = d.queue.mutate({ $0.next(now: Date()) }) {
            d.metrics.queueTimes(queued: waited)
            let pools = d.queue.read { $0.pools(of: key) }
            do {
                try takeLocks(pools)
            } catch {
                let delay = d.queue.mutate { q -> Double in
                    q.done(key, now: Date())
                    return q.addRateLimited(key, now: Date())
                }
                logger.warning("\(error); retrying", metadata: meta(key, ["retryIn": "\(Self.seconds(delay))"]))
                continue
            }
            sessionsUsed = true
            if !start(key, pools: pools, engine: engine) {
                d.queue.mutate { _ = $0.done(key, now: Date()) }
                releaseLocks(pools)
            }
        }
    }

    /// Starts one worker: an `Engine.reconcile` scoped to the key, on the shared sessions, the
    /// pools' locks held by the dispatcher. False when the daemon is stopping.
    private func start(_ key: WorkKey, pools: [String], engine: Engine) -> Bool {
        let request = {
            var r = ReconcileRequest(scope: TargetScope(pools: pools, policies: key.isHousekeeping ? nil : [key.policy]), lockTimeout: 0,
                                     now: { Date() }, keys: KeyScope(keys: key.isHousekeeping ? [] : [key], housekeeping: key.isHousekeeping))
            r.takeLocks = false
            r.keepSessions = true
            let queue = d.queue
            if key.isHousekeeping { r.busy = { queue.read(\.busyKeys) } }
            return r
        }()
        let recorder = DaemonRunRecorder(catalog: engine.catalog, command: "daemon \(key)", logger: logger)
        let sink = EventSink(metrics: d.metrics, state: d.state, recorder: recorder, logger: logger)
        let inbox = d.inbox
        let control = d.control
        let generation = generation
        return control.start(key) {
            Task {
                let started = Date()
                let outcome: Result<ReconcileReport, any Error>
                do {
                    let report = try await engine.reconcile(request, events: { sink.handle($0) }) { _ in
                        // The shutdown may have begun while the pools were read: start nothing then.
                        !control.stopping
                    }
                    recorder.finish(report, interrupted: Task.isCancelled)
                    outcome = .success(report)
                } catch {
                    recorder.finish(error: error)
                    outcome = .failure(error)
                }
                inbox.completed(Inbox.Completion(key: key, outcome: outcome, interrupted: Task.isCancelled || control.stopping,
                                                 startedAt: started, generation: generation))
            }
        }
    }

    /// The pools' locks, taken once for all the workers on them (`haven apply` meanwhile fails,
    /// naming the daemon), released when the last of them is done.
    func takeLocks(_ pools: [String]) throws {
        guard let engine else { return }
        var taken: [String] = []
        do {
            for p in pools {
                if locks[p] != nil {
                    locks[p]!.holders += 1
                } else {
                    locks[p] = (try engine.state.tryPoolLock(p), 1)
                }
                taken.append(p)
            }
        } catch {
            releaseLocks(taken)
            throw error
        }
    }

    func releaseLocks(_ pools: [String]) {
        for p in pools {
            guard var l = locks[p] else { continue }
            l.holders -= 1
            if l.holders <= 0 {
                l.lock.release()
                locks[p] = nil
            } else {
                locks[p] = l
            }
        }
    }

    func releaseLocks() {
        for l in locks.values { l.lock.release() }
        locks = [:]
    }

    /// No worker runs: the sessions of every engine are logged out (the next worker logs in again).
    func logoutIdle() async {
        guard sessionsUsed || !retired.isEmpty else { return }
        await engine?.logout()
        for e in retired { await e.logout() }
        retired = []
        sessionsUsed = false
    }

    func logoutAll() async {
        sessionsUsed = true
        await logoutIdle()
    }

    static func seconds(_ s: Double) -> String { s < 1 ? "\(Int(s * 1000)) ms" : s < 120 ? String(format: "%.1f s", s) : "\(Int(s / 60)) min" }

    func meta(_ key: WorkKey, _ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        var m: Logger.Metadata = ["key": "\(key)", "pool": "\(key.pool)"]
        if !key.policy.isEmpty { m["policy"] = "\(key.policy)" }
        if !key.vm.isEmpty {
            let name = d.state.read { $0.observed[key.pool]?.vms.first { $0.uuid == key.vm }?.name }
            m["vm"] = "\(name ?? key.vm)"
        }
        return m.merging(extra) { $1 }
    }
}

import Foundation
import HavenCore
import HavenEngine
import Logging

extension DispatcherRun {
    /// A worker finished: the key is done in the queue (queued again if it became dirty), its
    /// locks are released, and it is retried with backoff after a failure, or timed for when the
    /// planner says it is next due. The pools it read refresh the status, the keys and the index.
    func complete(_ c: Inbox.Completion) {
        let key = c.key
        let worked = d.queue.mutate { $0.done(key, now: Date()) }
        d.metrics.queueTimes(worked: worked)
        releaseLocks(d.queue.read { $0.pools(of: key) })
        d.control.finished(key)
        var result: String
        var message: String
        var reasons: [String] = []
        var timed = false
        switch c.outcome {
        case .success(let report):
            d.state.observed(report.observation)
            if c.generation == generation { merge(report, from: key) }
            for (pool, why) in report.unreachable { reasons.append("pool \(pool) cannot be read: \(why)") }
            for (a, why) in report.result.failed { reasons.append("\(a.headline) (\(a.vm?.name ?? a.pool)): \(why)") }
            for (a, why) in report.result.skipped { reasons.append("skipped \(a.headline) (\(a.vm?.name ?? a.pool)): \(why)") }
            // An unreachable pool is also a plan error: said once.
            for e in report.plan.errors where e.code != .poolUnreachable { reasons.append(e.message) }
            let r = report.result
            message = "\(r.succeeded.count) done, \(r.failed.count) failed, \(r.skipped.count) skipped"
            // A run the shutdown let finish (everything done within the grace period) succeeded:
            // only one that was stopped, or never started its actions, was interrupted.
            if !report.approved || (c.interrupted && !(r.failed.isEmpty && r.skipped.isEmpty)) {
                result = "interrupted"
            } else if report.plan.isEmpty {
                result = report.ok ? "no-changes" : "failed"
            } else {
                result = report.ok ? "succeeded" : "failed"
            }
            if result == "succeeded" || result == "no-changes" {
                timed = schedule(key, report) && c.generation == generation
            }
        case .failure(let error):
            result = c.interrupted ? "interrupted" : "error"
            message = "\(error)"
        }
        if !["succeeded", "no-changes", "interrupted"].contains(result), !d.control.stopping {
            let delay = d.queue.mutate { $0.addRateLimited(key, now: Date()) }
            reasons.append("retried in \(Self.seconds(delay))")
        }
        d.metrics.reconciled(result, requeueAfter: timed)
        // Interrupted by a shutdown is what was asked for: said, not as an error.
        let level: Logger.Level = switch result {
        case "no-changes": .debug
        case "succeeded": .info
        case "interrupted": .notice
        default: .error
        }
        logger.log(level: level, "reconcile \(result): \(message)", metadata: meta(key, reasons.isEmpty ? [:] : ["reasons": "\(reasons)"]))
        d.state.update {
            $0.last = DaemonState.LastReconcile(key: key.description, startedAt: c.startedAt, endedAt: Date(), result: result, message: message,
                                                reasons: reasons)
        }
    }

    /// After a successful run: the backoff starts over and the key waits for its next due time.
    /// True when a timer was set. A key still due right after a successful run (the planner
    /// planned nothing for it) backs off instead of spinning.
    private func schedule(_ key: WorkKey, _ report: ReconcileReport) -> Bool {
        guard !key.isHousekeeping else {
            d.queue.mutate { $0.forget(key) }
            return false
        }
        guard let entry = report.schedule.first(where: { $0.key == key }) else {
            // No longer a key (the VM left the policy, the policy was suspended): no timer.
            d.queue.mutate { $0.remove(key) }
            return false
        }
        guard let next = entry.next else {
            d.queue.mutate { $0.forget(key) }
            return false
        }
        if next <= Date() {
            let delay = d.queue.mutate { $0.addRateLimited(key, now: Date()) }
            if warnedStillDue.insert(key).inserted {
                logger.warning("still due after a successful run: nothing was planned for it; retrying with backoff",
                               metadata: meta(key, ["retryIn": "\(Self.seconds(delay))"]))
            }
            return true
        }
        warnedStillDue.remove(key)
        d.queue.mutate { q in
            q.forget(key)
            q.addAfter(key, at: Self.timer(next), now: Date())
        }
        return true
    }

    /// The planner takes "now" to the whole second: a timer fires at the first whole second at
    /// or after the due time, when the plan is sure to include the run.
    static func timer(_ due: Date) -> Date { Date(timeIntervalSince1970: due.timeIntervalSince1970.rounded(.up)) }

    /// The keys of each pool the report read: new ones are timed, vanished ones dropped (and the
    /// pool's housekeeping queued to clean up after them); a housekeeping run times every key.
    private func merge(_ report: ReconcileReport, from key: WorkKey) {
        guard let engine else { return }
        let view = try? engine.catalog.view()
        for (pool, observed) in report.observation.pools {
            let entries = report.schedule.filter { $0.key.pool == pool }
            let now = Set(entries.map(\.key))
            let before = known[pool] ?? []
            let gone = before.subtracting(now)
            d.queue.mutate { q in
                for e in entries where (key.isHousekeeping && key.pool == pool) || !before.contains(e.key) {
                    // A key being processed is timed by its own completion.
                    guard e.key != key, !q.isProcessing(e.key), let next = e.next else { continue }
                    q.addAfter(e.key, at: Self.timer(next), now: Date())
                }
                for g in gone where g != key { q.remove(g) }
                if !gone.isEmpty && !key.isHousekeeping { q.add(.housekeeping(pool), now: Date()) }
            }
            known[pool] = now
            index[pool] = PoolIndex(pool: observed, keys: Array(now), catalog: view ?? CatalogView())
            if key.isHousekeeping && key.pool == pool && runAllAfterHousekeeping.remove(pool) != nil {
                d.queue.mutate { q in for k in now.sorted() { q.add(k, now: Date()) } }
            }
        }
    }
}

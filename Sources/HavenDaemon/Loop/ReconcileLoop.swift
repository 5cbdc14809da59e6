import Foundation
import HavenCore
import HavenEngine
import HavenSpec
import Logging
import ServiceLifecycle
import Synchronization

/// The daemon's heart: waits as a standby until it holds the daemon lock, then reconciles every
/// pool with `Engine.reconcile` and sleeps until the next backup falls due (at most `maxSleep`),
/// the configuration changes, or a pool reports events. A failed reconcile is retried with
/// exponential backoff. On graceful shutdown no new work starts; a running reconcile gets
/// `shutdownGrace` to finish, then its task is cancelled, which stops the engine at its next
/// durable step (snapshot removed, sessions logged out).
struct ReconcileLoop: Service {
    let store: ConfigStore
    let options: DaemonOptions
    let wake: WakeSignal
    let metrics: DaemonMetrics
    let state: DaemonState
    let control: LoopControl
    let logger: Logger

    func run() async throws {
        let grace = options.shutdownGrace
        let control = self.control
        let wake = self.wake
        let logger = self.logger
        await withGracefulShutdownHandler {
            await loop()
        } onGracefulShutdown: {
            logger.info("shutting down: no new work; running transfers have \(grace) to finish")
            control.beginShutdown(grace: grace, logger: logger)
            wake.fire(.shutdown)
        }
        state.update { $0.role = .stopping }
    }

    private func loop() async {
        guard let lock = await acquireLock() else { return }
        defer { lock.release() }
        state.update { $0.role = .active }
        metrics.active(true)
        logger.info("active: holding \(lock.path)")
        var engine: (generation: Int, engine: Engine)?
        var failures = 0
        while !control.stopping {
            let snap = store.snapshot
            guard let desired = snap.desired else {
                // Nothing good to act on yet (a first checkout still coming, a broken first commit).
                await wake.wait(timeout: options.maxSleep)
                _ = wake.take()
                continue
            }
            if engine?.generation != snap.generation {
                do {
                    engine = (snap.generation, try Engine(desired: desired, state: StateDirectory(path: options.statePath), logger: logger))
                } catch {
                    logger.error("cannot open the state directory", metadata: ["error": "\(error)"])
                    await wake.wait(timeout: options.maxSleep)
                    continue
                }
            }
            guard let current = engine?.engine else { continue }
            if failures > 0 { metrics.retried() }
            let ok = await reconcileOnce(current)
            if control.stopping { break }
            let report = await refreshStatus(current)
            let now = Date()
            let next = report?.nextDue
            let sleep: Duration
            if !ok || next.map({ $0 <= now }) == true {
                // Something failed or is still due after a run: back off (5 s, 10 s, … up to maxBackoff).
                failures += 1
                let backoff = Duration.seconds(5) * (1 << min(failures - 1, 10))
                sleep = min(backoff, options.maxBackoff)
            } else {
                failures = 0
                // One second past the due time: the planner takes "now" to the whole second.
                let until = next.map { Duration.milliseconds(Int64(($0.timeIntervalSince(now) + 1) * 1000)) } ?? options.maxSleep
                sleep = min(max(until, .seconds(1)), options.maxSleep)
            }
            logger.debug("sleeping", metadata: ["seconds": "\(sleep.seconds)", "nextDue": "\(next.map { "\($0)" } ?? "-")"])
            await wake.wait(timeout: sleep)
            var reasons = wake.take()
            if reasons.contains(where: { if case .poolEvent = $0 { true } else { false } }) {
                // A snapshot or a hand edit comes as a burst of events: fold them into one run.
                try? await Task.sleep(for: options.eventDebounce)
                reasons.formUnion(wake.take())
            }
            if !reasons.isEmpty { logger.info("woken", metadata: ["reasons": "\(reasons.map(\.description).sorted())"]) }
        }
    }

    /// Waits as a standby until the daemon lock is free; nil when shut down first.
    private func acquireLock() async -> DaemonLock? {
        var said = false
        while !control.stopping {
            do {
                if let lock = try DaemonLock.tryAcquire(stateDirectory: options.statePath) { return lock }
            } catch {
                logger.error("\(error)")
            }
            if !said {
                said = true
                state.update { $0.role = .standby }
                metrics.active(false)
                logger.notice("standby: another daemon holds the daemon lock; taking over when it stops",
                              metadata: ["holder": "\(DaemonLock.holder(stateDirectory: options.statePath))"])
            }
            await wake.wait(timeout: options.standbyPoll)
            _ = wake.take()
        }
        return nil
    }

    /// One `Engine.reconcile` of every pool, in a task the shutdown can cancel. True when it succeeded.
    private func reconcileOnce(_ engine: Engine) async -> Bool {
        let started = Date()
        let recorder = DaemonRunRecorder(catalog: engine.catalog, logger: logger)
        let events = EventSink(metrics: metrics, state: state, recorder: recorder, logger: logger)
        let request: ReconcileRequest
        do {
            request = ReconcileRequest(scope: try TargetScope.parse(nil, in: engine.desired), lockTimeout: 30, now: { Date() })
        } catch {
            logger.error("\(error)")
            return false
        }
        let control = self.control
        let metrics = self.metrics
        let state = self.state
        state.update { $0.reconciling = true }
        let work = control.start {
            Task {
                try await engine.reconcile(request, events: { events.handle($0) }) { plan in
                    // The shutdown may have begun while the pools were observed: start nothing then.
                    guard !control.stopping else { return false }
                    metrics.planned(plan.actions.count)
                    state.update { $0.pending = plan.actions.count }
                    return true
                }
            }
        }
        guard let work else { return true }
        let outcome = await work.result
        control.finished()
        let interrupted = work.isCancelled
        state.update {
            $0.reconciling = false
            $0.pending = 0
            $0.running = [:]
        }
        var result: String
        var message: String
        var reasons: [String] = []
        switch outcome {
        case .success(let report):
            for (pool, why) in report.unreachable {
                reasons.append("pool \(pool) cannot be read: \(why)")
            }
            state.update { s in
                for pool in report.plan.pools.keys where report.unreachable[pool] == nil { s.observedOnce.insert(pool) }
                s.unreachable = report.unreachable
            }
            for (a, why) in report.result.failed { reasons.append("\(a.headline) (\(a.vm?.name ?? a.pool)): \(why)") }
            for (a, why) in report.result.skipped { reasons.append("skipped \(a.headline) (\(a.vm?.name ?? a.pool)): \(why)") }
            // An unreachable pool is also a plan error: say it once.
            for e in report.plan.errors where !report.unreachable.keys.contains(where: { e.message.contains("pool \($0) cannot be read") }) {
                reasons.append(e.message)
            }
            let r = report.result
            message = "\(r.succeeded.count) done, \(r.failed.count) failed, \(r.skipped.count) skipped"
            if interrupted {
                result = "interrupted"
            } else if report.plan.isEmpty {
                result = report.unreachable.isEmpty ? "no-changes" : "failed"
            } else {
                result = report.ok ? "succeeded" : "failed"
            }
            if !report.approved { result = "interrupted" }
            recorder.finish(result: result, message: (([message] + reasons).joined(separator: "; ")))
        case .failure(let error):
            result = interrupted ? "interrupted" : "error"
            message = "\(error)"
            recorder.finish(result: "error", message: message)
        }
        metrics.reconciled(result)
        let level: Logger.Level = ["succeeded", "no-changes"].contains(result) ? (result == "no-changes" ? .debug : .info) : .error
        logger.log(level: level, "reconcile \(result): \(message)", metadata: reasons.isEmpty ? nil : ["reasons": "\(reasons)"])
        state.update {
            $0.last = DaemonState.LastReconcile(startedAt: started, endedAt: Date(), result: result, message: message, reasons: reasons)
        }
        return ["succeeded", "no-changes"].contains(result)
    }

    /// Reads the pools and the catalog again for the status page, `/api/v1/status` and the
    /// per-VM gauges; returns the report whose earliest next due time the loop sleeps until.
    private func refreshStatus(_ engine: Engine) async -> StatusReport? {
        do {
            let observation = try await engine.withSessions { await engine.observe() }
            let view = try engine.catalog.view()
            let attempts = (try? engine.catalog.lastBackupAttempts()) ?? [:]
            let report = StatusReport.make(desired: engine.desired, observed: observation.pools, unreachable: observation.unreachable,
                                           catalog: view, attempts: attempts, now: Date())
            state.update { s in
                s.observedOnce.formUnion(observation.pools.keys)
                s.unreachable = observation.unreachable
                s.report = report
                s.backups = Array(view.backups.sorted { $0.createdAt < $1.createdAt }.suffix(500))
            }
            metrics.status(report)
            return report
        } catch {
            logger.error("cannot read the status", metadata: ["error": "\(error)"])
            return nil
        }
    }
}

/// The running reconcile task and whether the daemon is stopping, shared by the loop and the
/// graceful-shutdown handler (which runs on another task).
final class LoopControl: Sendable {
    private struct State {
        var stopping = false
        var work: Task<ReconcileReport, any Error>?
    }

    private let state = Mutex(State())

    var stopping: Bool { state.withLock { $0.stopping } }

    /// Starts the work unless the daemon is stopping (checked and recorded under one lock, so a
    /// shutdown never misses a task that is just starting).
    func start(_ make: () -> Task<ReconcileReport, any Error>) -> Task<ReconcileReport, any Error>? {
        state.withLock { s in
            guard !s.stopping else { return nil }
            let t = make()
            s.work = t
            return t
        }
    }

    func finished() { state.withLock { $0.work = nil } }

    /// No new work from now on; the running reconcile, if any, is cancelled after `grace`.
    func beginShutdown(grace: Duration, logger: Logger) {
        let running = state.withLock { s -> Task<ReconcileReport, any Error>? in
            s.stopping = true
            return s.work
        }
        guard let running else { return }
        Task {
            try? await Task.sleep(for: grace)
            if !running.isCancelled {
                logger.warning("shutdown grace of \(grace) is over: cancelling the running reconcile (it stops at its next durable step)")
                running.cancel()
            }
        }
    }
}

import Foundation
import HavenCore
import HavenEngine
import HavenSpec
import Logging
import ServiceLifecycle

/// The daemon's heart: waits as a standby until it holds the daemon lock, then hands work keys
/// from the queue to workers — one `Engine.reconcile` of one (policy, VM) key or of a pool's
/// housekeeping each — within the pools' limits. It sleeps until the earliest key timer (the
/// moment the planner says a key's next run is due), a pool event, a finished worker, a new
/// configuration or suspension; nothing polls. On graceful shutdown no key starts; running ones
/// get `shutdownGrace`, then are cancelled (the engine stops at its next durable step).
struct Dispatcher: Service {
    let store: ConfigStore
    let options: DaemonOptions
    let wake: WakeSignal
    let inbox: Inbox
    let queue: WorkQueue
    let metrics: DaemonMetrics
    let state: DaemonState
    let control: WorkerControl
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
        let run = DispatcherRun(self)
        while true {
            let inputs = inbox.take()
            for c in inputs.completions { run.complete(c) }
            if control.stopping {
                if control.runningCount == 0 { break }
                await wake.wait(timeout: .seconds(1))
                _ = wake.take()
                continue
            }
            run.follow(store.snapshot)
            if run.engine != nil {
                for pool in inputs.resync.sorted() { run.resync(pool) }
                for (pool, touched) in inputs.events.sorted(by: { $0.key < $1.key }) { run.route(touched, pool: pool) }
                if Date() >= run.nextResync { run.resyncAll() }
                run.dispatch()
            }
            if control.runningCount == 0 { await run.logoutIdle() }
            let wakeAt = [queue.read(\.nextWake), run.engine == nil ? nil : run.nextResync].compactMap { $0 }.min()
            let sleep = wakeAt.map { Duration.milliseconds(Int64(max(0, $0.timeIntervalSinceNow) * 1000) + 1) } ?? .seconds(3600)
            await wake.wait(timeout: sleep)
            let reasons = wake.take().filter { $0 != .workerDone }
            if !reasons.isEmpty { logger.debug("woken", metadata: ["reasons": "\(reasons.map(\.description).sorted())"]) }
        }
        await run.logoutAll()
        run.releaseLocks()
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
}

import Foundation
import HavenCatalog
import HavenCore
import HavenEngine
import Logging
import Synchronization

/// Turns the engine's execution events into metrics, the running list of the status page, the
/// run history and log lines.
struct EventSink: Sendable {
    let metrics: DaemonMetrics
    let state: DaemonState
    let recorder: DaemonRunRecorder
    let logger: Logger

    func handle(_ e: ExecutionEvent) {
        recorder.handle(e)
        switch e {
        case .started(let a):
            logger.info("started: \(a.headline)", metadata: meta(a))
            state.update {
                $0.running[a.key] = DaemonState.Running(key: a.key.description, pool: a.pool, what: a.headline, startedAt: Date())
            }
        case .progress:
            break
        case .log:
            // The engine has logged it already, through the same swift-log system and with the
            // action's pool, vm and policy: said once, not twice.
            break
        case .finished(let a, let o):
            logger.info("done: \(a.headline): \(o.summary)", metadata: meta(a))
            let started = state.read { $0.running[a.key]?.startedAt }
            let seconds = started.map { Date().timeIntervalSince($0) } ?? 0
            if a.kind == .backup, let vm = a.vm {
                metrics.backup(pool: a.pool, vm: vm.name, policy: a.policy ?? "", seconds: seconds, bytesRead: o.bytesRead ?? 0,
                               bytesStored: o.bytesStored ?? 0)
            }
            done(a)
        case .failed(let a, let why):
            logger.error("failed: \(a.headline): \(why)", metadata: meta(a))
            done(a)
        case .skipped(let a, let why):
            logger.warning("skipped: \(a.headline): \(why)", metadata: meta(a))
            done(a)
        }
    }

    private func done(_ a: PlannedAction) { state.update { $0.running[a.key] = nil } }

    private func meta(_ a: PlannedAction) -> Logger.Metadata {
        var m: Logger.Metadata = ["pool": "\(a.pool)", "action": "\(a.kind.rawValue)", "key": "\(a.key.description)"]
        if let vm = a.vm { m["vm"] = "\(vm.name)" }
        if let p = a.policy { m["policy"] = "\(p)" }
        return m
    }
}

/// Records the daemon's reconciles in the catalog's run history (`haven history`, the status's
/// last attempt, the page's chart of durations), as `apply` does: one run per key reconcile that
/// did something. A run is opened at its first action, so the many reconciles with nothing to do
/// leave no trace. Recording never fails a run.
final class DaemonRunRecorder: Sendable {
    let catalog: Catalog
    let command: String
    let logger: Logger
    private let id = Mutex<Int64?>(nil)
    private let started = Mutex<[ActionKey: Date]>([:])

    init(catalog: Catalog, command: String, logger: Logger) {
        self.catalog = catalog
        self.command = command
        self.logger = logger
    }

    func handle(_ e: ExecutionEvent) {
        var record: (PlannedAction, String, String, ActionOutcome?)?
        switch e {
        case .started(let a):
            started.withLock { $0[a.key] = Date() }
            _ = runID()
        case .finished(let a, let o): record = (a, "succeeded", ([o.summary] + o.notes).joined(separator: "; "), o)
        case .failed(let a, let why): record = (a, "failed", why, nil)
        case .skipped(let a, let why): record = (a, "skipped", why, nil)
        default: break
        }
        guard let (a, result, message, outcome) = record, let run = runID() else { return }
        var r = RunActionRecord(runID: run, actionKey: a.key.description, kind: a.kind.rawValue, pool: a.pool, vm: a.vm?.name, vmUUID: a.vm?.uuid,
                                policy: a.policy, result: result, message: message, startedAt: started.withLock { $0.removeValue(forKey: a.key) },
                                at: Date())
        r.backupID = outcome?.backupID
        r.bytesRead = outcome?.bytesRead
        r.bytesStored = outcome?.bytesStored
        attempt { try catalog.recordRunAction(r) }
    }

    func finish(result: String, message: String) {
        guard let run = id.withLock({ $0 }) else { return }
        attempt { try catalog.finishRun(run, at: Date(), result: result, message: message) }
    }

    func finish(_ report: ReconcileReport, interrupted: Bool) {
        let r = report.result
        let counts = "\(r.succeeded.count) done, \(r.failed.count) failed, \(r.skipped.count) skipped"
        // Cancelled after its last action finished: nothing was interrupted.
        let stopped = !report.approved || (interrupted && !(r.failed.isEmpty && r.skipped.isEmpty))
        finish(result: stopped ? "interrupted" : report.ok ? "succeeded" : "failed", message: counts)
    }

    func finish(error: any Error) { finish(result: "error", message: "\(error)") }

    private func runID() -> Int64? {
        id.withLock { id in
            if let id { return id }
            do {
                id = try catalog.startRun(command: command, at: Date())
            } catch {
                logger.warning("this run is not recorded in the history", metadata: ["error": "\(error)"])
            }
            return id
        }
    }

    private func attempt(_ body: () throws -> Void) {
        do { try body() } catch { logger.warning("the run history cannot be written", metadata: ["error": "\(error)"]) }
    }
}

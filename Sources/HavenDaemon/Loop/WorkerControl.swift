import Foundation
import HavenCore
import Logging
import Synchronization

/// The running workers and whether the daemon is stopping, shared by the dispatcher and the
/// graceful-shutdown handler (which runs on another task).
final class WorkerControl: Sendable {
    private struct State {
        var stopping = false
        var work: [WorkKey: Task<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    var stopping: Bool { state.withLock { $0.stopping } }
    var runningCount: Int { state.withLock { $0.work.count } }

    /// Starts a worker unless the daemon is stopping (checked and recorded under one lock, so a
    /// shutdown never misses a worker that is just starting).
    func start(_ key: WorkKey, _ make: () -> Task<Void, Never>) -> Bool {
        state.withLock { s in
            guard !s.stopping else { return false }
            s.work[key] = make()
            return true
        }
    }

    func finished(_ key: WorkKey) { state.withLock { _ = $0.work.removeValue(forKey: key) } }

    /// No new work from now on; workers still running after `grace` are cancelled (each stops at
    /// its next durable step: no half version, no orphan snapshot).
    func beginShutdown(grace: Duration, logger: Logger) {
        let running = state.withLock { s -> [Task<Void, Never>] in
            s.stopping = true
            return Array(s.work.values)
        }
        guard !running.isEmpty else { return }
        Task {
            try? await Task.sleep(for: grace)
            let still = state.withLock { Array($0.work.values) }
            guard !still.isEmpty else { return }
            logger.warning("shutdown grace of \(grace) is over: cancelling \(still.count) running reconcile(s) (each stops at its next durable step)")
            for t in still { t.cancel() }
        }
    }
}

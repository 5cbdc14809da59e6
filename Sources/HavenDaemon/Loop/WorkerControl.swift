import Foundation
import HavenCore
import Logging
import Synchronization
import UnixSignals

/// The running workers and whether the daemon is stopping, shared by the dispatcher and the
/// graceful-shutdown handler (which runs on another task).
final class WorkerControl: Sendable {
    private struct State {
        var stopping = false
        var work: [WorkKey: Task<Void, Never>] = [:]
        /// The running workers were cancelled (by the end of the grace or a second signal).
        var cancelled = false
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
            cancelRunning(logger, because: "shutdown grace of \(grace) is over")
        }
        Task {
            // A second SIGTERM or SIGINT while the grace runs: whoever sends it does not want to
            // wait (systemd's stop timeout, a second Ctrl-C). The first one was taken by the
            // ServiceGroup's handler; this sequence sees only the signals that come after it.
            for await signal in await UnixSignalsSequence(trapping: .sigterm, .sigint) {
                cancelRunning(logger, because: "a second \(signal == .sigint ? "SIGINT" : "SIGTERM") came during the grace")
                return
            }
        }
    }

    private func cancelRunning(_ logger: Logger, because reason: String) {
        let still = state.withLock { s -> [Task<Void, Never>] in
            defer { s.cancelled = true }
            return s.cancelled ? [] : Array(s.work.values)
        }
        guard !still.isEmpty else { return }
        logger.warning("\(reason): cancelling \(still.count) running reconcile(s) (each stops at its next durable step)")
        for t in still { t.cancel() }
    }
}

import Foundation
import HavenCore
import Synchronization

/// The work queue behind a lock: the dispatcher changes it, the HTTP handlers read it. Adds and
/// retries are passed on to the metrics as they happen.
final class WorkQueue: Sendable {
    private struct Guarded {
        var state = WorkQueueState()
        var exportedAdds = 0
        var exportedRetries = 0
    }

    private let guarded = Mutex(Guarded())
    let metrics: DaemonMetrics

    init(metrics: DaemonMetrics) { self.metrics = metrics }

    @discardableResult
    func mutate<T>(_ body: (inout WorkQueueState) -> T) -> T {
        let (value, adds, retries) = guarded.withLock { g -> (T, Int, Int) in
            let v = body(&g.state)
            let a = g.state.adds - g.exportedAdds
            let r = g.state.retries - g.exportedRetries
            g.exportedAdds = g.state.adds
            g.exportedRetries = g.state.retries
            return (v, a, r)
        }
        for _ in 0..<adds { metrics.queueAdded() }
        for _ in 0..<retries { metrics.queueRetried() }
        return value
    }

    func read<T>(_ body: (WorkQueueState) -> T) -> T { guarded.withLock { body($0.state) } }
}

import Foundation
import HavenCore
import HavenEngine
import Synchronization

/// What other tasks hand the dispatcher: pool events, pools to look at again in full (a watch that
/// reconnected may have missed events), and finished reconciles. Taken in one go by the
/// dispatcher, which alone owns the work queue; each `put` rings the wake signal.
final class Inbox: Sendable {
    struct Completion: Sendable {
        var key: WorkKey
        var outcome: Result<ReconcileReport, any Error>
        var interrupted: Bool
        var startedAt: Date
        var generation: Int
    }

    struct Contents: Sendable {
        var events: [String: [TouchedObject]] = [:]
        var resync: Set<String> = []
        var completions: [Completion] = []
        var isEmpty: Bool { events.isEmpty && resync.isEmpty && completions.isEmpty }
    }

    private let state = Mutex(Contents())
    let wake: WakeSignal

    init(wake: WakeSignal) { self.wake = wake }

    func events(_ pool: String, _ touched: [TouchedObject]) {
        guard !touched.isEmpty else { return }
        state.withLock { $0.events[pool, default: []] += touched }
        wake.fire(.poolEvent(pool))
    }

    func resync(_ pool: String) {
        state.withLock { _ = $0.resync.insert(pool) }
        wake.fire(.poolEvent(pool))
    }

    func completed(_ c: Completion) {
        state.withLock { $0.completions.append(c) }
        wake.fire(.workerDone)
    }

    func take() -> Contents {
        state.withLock { s in
            defer { s = Contents() }
            return s
        }
    }
}

import Synchronization

/// Why the reconcile loop woke.
public enum WakeReason: Hashable, Sendable, CustomStringConvertible {
    case configChanged
    /// `haven suspend` or `haven resume` changed the catalog's suspensions.
    case suspensionsChanged
    case poolEvent(String)
    case workerDone
    case shutdown
    case manual

    public var description: String {
        switch self {
        case .configChanged: "configuration changed"
        case .suspensionsChanged: "suspensions changed"
        case .workerDone: "a worker finished"
        case .poolEvent(let p): "events on pool \(p)"
        case .shutdown: "shutdown"
        case .manual: "requested"
        }
    }
}

/// A level-triggered doorbell: `fire` records a reason (kept until taken, so nothing fired while
/// the loop was busy is lost) and wakes the one waiter, if any.
final class WakeSignal: Sendable {
    private struct State {
        var pending: Set<WakeReason> = []
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    func fire(_ reason: WakeReason) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.pending.insert(reason)
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Returns and clears what was fired.
    func take() -> Set<WakeReason> {
        state.withLock { s in
            defer { s.pending = [] }
            return s.pending
        }
    }

    var hasPending: Bool { state.withLock { !$0.pending.isEmpty } }

    /// Returns when something is pending, `timeout` passed, or the task is cancelled.
    func wait(timeout: Duration) async {
        if hasPending || timeout <= .zero { return }
        await withTaskGroup(of: Void.self) { g in
            g.addTask { try? await Task.sleep(for: timeout) }
            g.addTask { await self.waitForFire() }
            _ = await g.next()
            g.cancelAll()
        }
    }

    private func waitForFire() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if !s.pending.isEmpty || Task.isCancelled { return true }
                    // Only one waiter at a time (the loop); a previous one is released, never leaked.
                    s.waiter?.resume()
                    s.waiter = c
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { s in
                defer { s.waiter = nil }
                return s.waiter
            }
            waiter?.resume()
        }
    }
}

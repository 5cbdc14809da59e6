import Foundation
import HavenCatalog
import HavenCore
import HavenEngine
import Synchronization

/// What the daemon knows and does, for `/readyz`, the status endpoints and the page. Written by
/// the dispatcher and the execution events, read by HTTP handlers; every access holds the mutex.
public final class DaemonState: Sendable {
    public enum Role: String, Sendable, Encodable {
        /// Before the daemon lock is tried.
        case starting
        /// Another daemon holds `state/locks/daemon.lock`; this one waits to take over.
        case standby
        case active
        /// Shutting down: no new work, running transfers finishing.
        case stopping
    }

    public struct LastReconcile: Sendable, Encodable {
        /// The work key (`backup/POOL/POLICY/VM`, `pool/POOL`).
        public var key: String
        public var startedAt: Date
        public var endedAt: Date
        /// succeeded, no-changes, failed, error, interrupted
        public var result: String
        public var message: String
        public var reasons: [String]
    }

    public struct WatchDown: Sendable, Encodable {
        public var since: Date
        public var error: String
    }

    /// The pool's event watch connected (nil) or failed (the error).
    func watch(_ pool: String, down error: String?) {
        update { s in
            if let error {
                s.watchDown[pool] = WatchDown(since: s.watchDown[pool]?.since ?? Date(), error: error)
            } else {
                s.watchDown[pool] = nil
            }
        }
    }

    public struct Running: Sendable, Encodable {
        public var key: String
        public var pool: String
        public var what: String
        public var startedAt: Date
    }

    struct Inner: Sendable {
        var role: Role = .starting
        var observedOnce: Set<String> = []
        var unreachable: [String: String] = [:]
        /// Pools whose event watch is down (the pool went away, a network fault): the error and
        /// since when. Drift there goes unseen until the watch is back, so it is shown.
        var watchDown: [String: WatchDown] = [:]
        /// Every pool as last read by a reconcile: what the status is computed from.
        var observed: [String: ObservedPool] = [:]
        /// The engine of the configuration in force (its desired state and catalog).
        var engine: Engine?
        var last: LastReconcile?
        var running: [ActionKey: Running] = [:]
    }

    let inner = Mutex(Inner())

    public init() {}

    func update(_ body: (inout Inner) -> Void) { inner.withLock { body(&$0) } }
    func read<T>(_ body: (Inner) -> T) -> T { inner.withLock { body($0) } }

    public var role: Role { read(\.role) }

    /// A pool as a reconcile just read it (or could not).
    func observed(_ observation: Observation) {
        update { s in
            for (name, pool) in observation.pools {
                s.observed[name] = pool
                s.observedOnce.insert(name)
                s.unreachable[name] = nil
            }
            // A pool that cannot be read now is shown from the catalog, as `haven status` does.
            for (name, why) in observation.unreachable {
                s.unreachable[name] = why
                s.observed[name] = nil
            }
        }
    }

    /// The status of the configuration in force — the same computation as `haven status`, from
    /// the pools as last read and the catalog as it is now. Nil before the first configuration.
    public func status(now: Date = Date()) throws -> StatusReport? {
        let (engine, observed, unreachable) = read { ($0.engine, $0.observed, $0.unreachable) }
        guard let engine else { return nil }
        let declared = Set(engine.desired.pools.map(\.name))
        let view = try engine.catalog.view()
        var all = Observation()
        all.pools = observed
        all.unreachable = unreachable
        return StatusReport.make(desired: engine.desired, observed: observed.filter { declared.contains($0.key) },
                                 unreachable: unreachable.filter { declared.contains($0.key) }, catalog: view,
                                 attempts: (try? engine.catalog.lastBackupAttempts()) ?? [:],
                                 replicas: ReplicaStatus.make(view.replicas, desired: engine.desired, observation: all, now: now), now: now)
    }
}

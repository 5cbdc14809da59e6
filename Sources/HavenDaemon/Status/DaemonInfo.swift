import Foundation
import HavenCore

/// `/api/v1/daemon`: the daemon's own view — configuration state, role, the work queue, the last
/// reconcile and what runs now. (`/api/v1/status` is exactly `haven status --output json`.)
public struct DaemonInfo: Sendable, Encodable {
    public struct Config: Sendable, Encodable {
        public var directory: String
        public var loaded: Bool
        public var generation: Int
        public var loadedAt: Date?
        /// The newest files' errors (file:line:col: error: …); the daemon acts on the last good configuration meanwhile.
        public var errors: [String]
        public var errorAt: Date?
    }

    public struct Queue: Sendable, Encodable {
        public var depth: Int
        public var processing: [String]
        public var waiting: Int
        public var nextWake: Date?
    }

    public var role: DaemonState.Role
    public var config: Config
    /// Policies suspended by `haven suspend`.
    public var suspensions: [Suspension]
    public var queue: Queue
    public var lastReconcile: DaemonState.LastReconcile?
    public var running: [DaemonState.Running]
    /// Pools a reconcile could not read, and pools whose event watch is down (`event watch: …`).
    public var unreachablePools: [String: String]

    static func iso(_ d: Date) -> String { ISO8601DateFormatter().string(from: d) }

    static func make(store: ConfigStore, state: DaemonState, queue: WorkQueue) -> DaemonInfo {
        let snap = store.snapshot
        let q = queue.read { q in
            Queue(depth: q.depth, processing: q.processing.keys.sorted().map(\.description), waiting: q.waiting.count, nextWake: q.nextWake)
        }
        return state.read { s in
            DaemonInfo(role: s.role,
                       config: Config(directory: store.directory, loaded: snap.desired != nil, generation: snap.generation, loadedAt: snap.loadedAt,
                                      errors: snap.errors, errorAt: snap.errorAt),
                       suspensions: snap.suspensions, queue: q, lastReconcile: s.last,
                       running: s.running.values.sorted { $0.startedAt < $1.startedAt }, unreachablePools: s.unreachable.merging(s.watchDown.mapValues { "event watch down since \(Self.iso($0.since)): \($0.error)" }) { a, _ in a })
        }
    }
}

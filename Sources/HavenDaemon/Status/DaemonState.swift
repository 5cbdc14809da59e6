import Foundation
import HavenCore
import Synchronization

/// What the daemon is doing, for `/readyz`, `/api/v1/status` and the status page. Written by the
/// reconcile loop, read by HTTP handlers; every access holds the mutex.
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
        public var startedAt: Date
        public var endedAt: Date
        /// succeeded, no-changes, failed, error, interrupted
        public var result: String
        public var message: String
        public var reasons: [String]
    }

    /// One backup seen by this daemon, for the chart's durations.
    public struct BackupTiming: Sendable, Encodable {
        public var at: Date
        public var pool, vm, policy: String
        public var seconds: Double
        public var bytesStored: Int64
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
        var report: StatusReport?
        var last: LastReconcile?
        var reconciling = false
        var running: [ActionKey: Running] = [:]
        /// Actions of the current reconcile not yet finished, failed or skipped.
        var pending = 0
        var backups: [BackupRecord] = []
        var timings: [BackupTiming] = []
    }

    let inner = Mutex(Inner())

    public init() {}

    func update(_ body: (inout Inner) -> Void) { inner.withLock { body(&$0) } }
    func read<T>(_ body: (Inner) -> T) -> T { inner.withLock { body($0) } }

    public var role: Role { read(\.role) }
}

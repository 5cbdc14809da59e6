import Foundation
import HavenCore

/// `/api/v1/status`: the rows of `haven status --output json` (same field names, formatVersion 2)
/// and a `daemon` object with the configuration's state, the last reconcile and what runs now.
public struct StatusDocument: Sendable, Encodable {
    public struct Config: Sendable, Encodable {
        public var directory: String
        public var loaded: Bool
        public var generation: Int
        public var loadedAt: Date?
        /// The newest files' errors (file:line:col: error: …); the daemon acts on the last good configuration meanwhile.
        public var errors: [String]
        public var errorAt: Date?
    }

    public struct Daemon: Sendable, Encodable {
        public var role: DaemonState.Role
        public var reconciling: Bool
        public var config: Config
        public var lastReconcile: DaemonState.LastReconcile?
        public var running: [DaemonState.Running]
        public var unreachablePools: [String: String]
    }

    public var formatVersion = 2
    public var time: Date
    public var rpoMissed: Bool
    public var unreachablePools: [String]
    public var vms: [StatusReport.Row]
    public var daemon: Daemon
    /// Not encoded: the chart's data.
    var backups: [BackupRecord] = []
    var timings: [DaemonState.BackupTiming] = []

    enum CodingKeys: String, CodingKey { case formatVersion, time, rpoMissed, unreachablePools, vms, daemon }

    static func make(store: ConfigStore, state: DaemonState) -> StatusDocument {
        let snap = store.snapshot
        return state.read { s in
            let config = Config(directory: store.directory, loaded: snap.desired != nil, generation: snap.generation, loadedAt: snap.loadedAt,
                                errors: snap.errors, errorAt: snap.errorAt)
            let daemon = Daemon(role: s.role, reconciling: s.reconciling, config: config, lastReconcile: s.last,
                                running: s.running.values.sorted { $0.startedAt < $1.startedAt }, unreachablePools: s.unreachable)
            let r = s.report
            return StatusDocument(time: Date(), rpoMissed: r?.rpoMissed ?? false, unreachablePools: r?.unreachablePools ?? [], vms: r?.vms ?? [],
                                  daemon: daemon, backups: s.backups, timings: s.timings)
        }
    }
}

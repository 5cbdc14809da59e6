import Foundation

/// The unit the daemon's work queue reconciles: one VM of one policy, or one pool's housekeeping
/// (clean-up of what no policy covers any more, snapshots left by dead runs). A reconcile of a key
/// plans and executes only that key's actions and what they require.
public struct WorkKey: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable, Codable, Comparable {
        case backup
        case replication
        /// The pool's housekeeping: clean-up of the whole pool, leaving busy keys' VMs alone.
        case pool

        public static func < (a: Kind, b: Kind) -> Bool { a.rawValue < b.rawValue }
    }

    public var kind: Kind
    /// The pool the VM is on (a replication's source pool).
    public var pool: String
    /// The BackupPolicy or ReplicationPolicy; empty for housekeeping.
    public var policy: String
    /// The VM's uuid; empty for housekeeping.
    public var vm: String

    public init(_ kind: Kind, pool: String, policy: String = "", vm: String = "") {
        self.kind = kind
        self.pool = pool
        self.policy = policy
        self.vm = vm
    }

    public static func housekeeping(_ pool: String) -> WorkKey { WorkKey(.pool, pool: pool) }

    public var isHousekeeping: Bool { kind == .pool }

    public var description: String { kind == .pool ? "pool/\(pool)" : "\(kind.rawValue)/\(pool)/\(policy)/\(vm)" }

    public static func < (a: WorkKey, b: WorkKey) -> Bool { (a.pool, a.kind, a.policy, a.vm) < (b.pool, b.kind, b.policy, b.vm) }
}

/// What a key-scoped plan covers: the (policy, VM) keys to plan, and whether the pools'
/// housekeeping runs too. The pools and policies observed are the request's.
public struct KeyScope: Sendable, Hashable {
    public var keys: Set<WorkKey>
    /// Clean-up of what no policy covers, snapshots of dead runs, replicas of removed policies.
    public var housekeeping: Bool
    /// Keys other workers are reconciling right now: the housekeeping leaves their VMs' objects
    /// alone (a snapshot just made, not yet recorded, looks like one a dead run left).
    public var busy: Set<WorkKey> = []

    public init(keys: Set<WorkKey>, housekeeping: Bool = false, busy: Set<WorkKey> = []) {
        self.keys = keys
        self.housekeeping = housekeeping
        self.busy = busy
    }

    func covers(_ kind: WorkKey.Kind, pool: String, policy: String, vm: String) -> Bool {
        keys.contains(WorkKey(kind, pool: pool, policy: policy, vm: vm))
    }

    public func isBusy(pool: String, vm: String) -> Bool { busy.contains { $0.pool == pool && $0.vm == vm } }
}

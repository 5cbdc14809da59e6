import Foundation

/// The planner's view of the catalog: what was backed up when, the CBT anchors, and the objects
/// haven created. Plain values; the catalog module fills it from SQLite.
public struct CatalogView: Sendable, Codable {
    public var backups: [BackupRecord]
    public var anchors: [Anchor]
    public var inventory: [OwnedObject]
    public var cbtMarks: [CBTMark]
    public var replicas: [ReplicaRecord] = []
    /// Snapshots haven asked for and has not yet marked as its own (a run that died in VM.snapshot leaves one).
    public var intents: [SnapshotIntent] = []
    /// The appliances haven provisioned: address, how it was given, certificate pin.
    public var appliances: [ApplianceRecord] = []
    /// Appliances a transfer holds right now (in use: never removed).
    public var leases: [ApplianceLeaseRecord] = []
    /// Policies suspended by `haven suspend` (an overlay over the YAML's `suspend:`).
    public var suspensions: [Suspension] = []

    public init(backups: [BackupRecord] = [], anchors: [Anchor] = [], inventory: [OwnedObject] = [], cbtMarks: [CBTMark] = [],
                replicas: [ReplicaRecord] = [], intents: [SnapshotIntent] = [], appliances: [ApplianceRecord] = [],
                leases: [ApplianceLeaseRecord] = [], suspensions: [Suspension] = []) {
        self.appliances = appliances
        self.leases = leases
        self.suspensions = suspensions
        self.replicas = replicas
        self.intents = intents
        self.backups = backups
        self.anchors = anchors
        self.inventory = inventory
        self.cbtMarks = cbtMarks
    }
}

/// A backup version, as the catalog knows it (only complete versions are ever recorded).
public struct BackupRecord: Sendable, Codable, Hashable {
    public var id: String
    public var repository: String
    public var pool: String
    public var policy: String
    public var vmUUID: String
    public var vmName: String
    public var createdAt: Date
    public var kind: String
    public var size: Int64
    public var storedBytes: Int64
    /// What a person should know about this version (a disk read in full after a broken CBT chain).
    public var note: String

    public init(id: String, repository: String, pool: String, policy: String, vmUUID: String, vmName: String, createdAt: Date, kind: String,
                size: Int64, storedBytes: Int64, note: String = "") {
        self.note = note
        self.id = id
        self.repository = repository
        self.pool = pool
        self.policy = policy
        self.vmUUID = vmUUID
        self.vmName = vmName
        self.createdAt = createdAt
        self.kind = kind
        self.size = size
        self.storedBytes = storedBytes
    }
}

/// What an anchor is: CBT metadata (`list_changed_blocks` compares against it), or a delta base
/// (a snapshot disk kept with its data, which `/export_raw_vdi?format=vhd&base=` compares against).
public enum AnchorKind: String, Sendable, Codable, Hashable {
    case cbt, delta
}

/// The anchor of one disk: the snapshot VDI the next incremental compares against, and the
/// backup version it matches.
public struct Anchor: Sendable, Codable, Hashable {
    public var pool: String
    public var policy: String
    public var vmUUID: String
    /// The disk's userdevice.
    public var diskKey: String
    public var sourceVDI: String
    public var snapshotVM: String
    public var snapshotVDI: String
    public var backupID: String
    /// Data destroyed: only CBT metadata is left on the pool.
    public var dataDestroyed: Bool
    public var kind: AnchorKind

    public init(pool: String, policy: String, vmUUID: String, diskKey: String, sourceVDI: String, snapshotVM: String, snapshotVDI: String,
                backupID: String, dataDestroyed: Bool, kind: AnchorKind = .cbt) {
        self.kind = kind
        self.pool = pool
        self.policy = policy
        self.vmUUID = vmUUID
        self.diskKey = diskKey
        self.sourceVDI = sourceVDI
        self.snapshotVM = snapshotVM
        self.snapshotVDI = snapshotVDI
        self.backupID = backupID
        self.dataDestroyed = dataDestroyed
    }
}

/// An object haven created on a pool (and so may modify or destroy).
public struct OwnedObject: Sendable, Codable, Hashable {
    public var pool: String
    /// `VM` or `VDI`.
    public var cls: String
    public var uuid: String
    public var role: String
    public var policy: String
    public var vmUUID: String
    public var createdAt: Date

    public init(pool: String, cls: String, uuid: String, role: String, policy: String, vmUUID: String, createdAt: Date) {
        self.pool = pool
        self.cls = cls
        self.uuid = uuid
        self.role = role
        self.policy = policy
        self.vmUUID = vmUUID
        self.createdAt = createdAt
    }
}

/// CBT that haven switched on (and may switch off again); CBT a user enabled has no mark.
public struct CBTMark: Sendable, Codable, Hashable {
    public var pool: String
    public var vdiUUID: String
    public var policy: String

    public init(pool: String, vdiUUID: String, policy: String) {
        self.pool = pool
        self.vdiUUID = vdiUUID
        self.policy = policy
    }
}

/// A replica haven keeps of a source VM: where it is, when it was last synchronised, and whether
/// it was failed over (then it is never written again until failed back).
public struct ReplicaRecord: Sendable, Codable, Hashable {
    /// The ReplicationPolicy.
    public var policy: String
    public var sourcePool: String
    public var sourceVM: String
    public var sourceName: String
    public var targetPool: String
    public var replicaUUID: String
    /// Source disk userdevice -> replica VDI uuid, as "key=uuid" pairs joined by ",".
    public var disks: String
    public var lastSync: Date?
    public var failedOverAt: Date?

    public init(policy: String, sourcePool: String, sourceVM: String, sourceName: String, targetPool: String, replicaUUID: String, disks: [String: String],
                lastSync: Date?, failedOverAt: Date? = nil) {
        self.policy = policy
        self.sourcePool = sourcePool
        self.sourceVM = sourceVM
        self.sourceName = sourceName
        self.targetPool = targetPool
        self.replicaUUID = replicaUUID
        self.disks = disks.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        self.lastSync = lastSync
        self.failedOverAt = failedOverAt
    }

    public var diskMap: [String: String] {
        var out: [String: String] = [:]
        for pair in disks.split(separator: ",") {
            let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
            if kv.count == 2 { out[kv[0]] = kv[1] }
        }
        return out
    }
}

/// The catalog key replication uses for anchors and owned objects, apart from BackupPolicies of the same name.
public func replicationOwnerKey(_ policy: String) -> String { "replication:\(policy)" }

/// The catalog key of the CBT anchors a failover records on the replica's disks (for fail-back).
public func failoverAnchorKey(_ policy: String) -> String { "failover:\(policy)" }

/// Names of the catalog intents recorded before `VM.create` of a replica start with this.
public let replicaIntentPrefix = "replica "

/// On a failed-over replica: the failover went to a restore point older than the last sync.
public let failoverBehindMark = "haven.failover-behind"

/// "Snapshot of VM X named N requested at T": recorded before `VM.snapshot` is called and cleared
/// once the snapshot carries haven's mark, so a snapshot made by a call whose caller died can be
/// proven haven's (by VM, name and time) and adopted or removed.
public struct SnapshotIntent: Sendable, Codable, Hashable {
    public var pool: String
    public var vmUUID: String
    public var policy: String
    public var name: String
    public var requestedAt: Date

    public init(pool: String, vmUUID: String, policy: String, name: String, requestedAt: Date) {
        self.pool = pool
        self.vmUUID = vmUUID
        self.policy = policy
        self.name = name
        self.requestedAt = requestedAt
    }
}

/// Names of the catalog intents recorded before `VM.copy` of an appliance start with this; the
/// copy carries the intent's exact name (`haven appliance NAME STAMP pid N`) until it is marked,
/// recorded and renamed, so a copy whose caller died is found again by that name alone.
public let applianceIntentPrefix = "haven appliance "

extension SnapshotIntent {
    /// An appliance intent: `vmUUID` is the template, `policy` the AppliancePool's owner key.
    public var isApplianceIntent: Bool { name.hasPrefix(applianceIntentPrefix) }
    /// `pid N` of the process that recorded an appliance intent (it is in flight while that process lives).
    public var applianceHolder: String? {
        guard isApplianceIntent, let r = name.range(of: " pid ", options: .backwards) else { return nil }
        return "pid " + name[r.upperBound...]
    }
}

/// The catalog key of an AppliancePool's owned objects, apart from policies of the same name.
public func applianceOwnerKey(_ appliancePool: String) -> String { "appliance:\(appliancePool)" }

/// An appliance haven provisioned. The certificate pin is not a secret (it names the mover's
/// certificate); the token key never is in the catalog.
public struct ApplianceRecord: Sendable, Codable, Hashable {
    public var pool: String
    public var uuid: String
    public var name: String
    public var appliancePool: String
    /// The static address it was given; "" when it takes one from DHCP.
    public var staticAddress: String
    /// SHA-256 of the mover's certificate (DER), as `sha256:` + hex.
    public var pin: String
    public var createdAt: Date

    public init(pool: String, uuid: String, name: String, appliancePool: String, staticAddress: String, pin: String, createdAt: Date) {
        self.pool = pool
        self.uuid = uuid
        self.name = name
        self.appliancePool = appliancePool
        self.staticAddress = staticAddress
        self.pin = pin
        self.createdAt = createdAt
    }

    public var isStatic: Bool { !staticAddress.isEmpty }
}

/// "This appliance is in use by that run": written when a transfer leases it, removed when it
/// is given back. A lease whose holder process is gone is stale and cleared.
public struct ApplianceLeaseRecord: Sendable, Codable, Hashable {
    public var pool: String
    public var uuid: String
    /// `pid N`: the process holding it.
    public var holder: String
    public var since: Date

    public init(pool: String, uuid: String, holder: String, since: Date) {
        self.pool = pool
        self.uuid = uuid
        self.holder = holder
        self.since = since
    }
}

/// `haven suspend POLICY`: the policy (a BackupPolicy or ReplicationPolicy of that name) is
/// treated as `suspend: true` until `haven resume`, whatever its YAML says.
public struct Suspension: Sendable, Codable, Hashable {
    public var policy: String
    public var at: Date
    /// Who asked, as the command line recorded it (user and host).
    public var by: String

    public init(policy: String, at: Date, by: String) {
        self.policy = policy
        self.at = at
        self.by = by
    }
}

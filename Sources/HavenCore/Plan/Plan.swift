import Foundation

/// What haven would do, and why: the output of the planner, the input of the executor, and what
/// `haven diff` prints. A typed action graph: every action carries everything its execution
/// needs (repository, hooks, NBD settings; per-pool limits in `pools`), so executing a plan never
/// re-reads the configuration. Versioned JSON (`formatVersion`).
public struct Plan: Sendable, Codable {
    public static let currentFormatVersion = 3

    public var formatVersion = Plan.currentFormatVersion
    public var generatedAt: Date
    /// Digest of the desired state (canonical, without source locations), the observed pools
    /// and the catalog the plan was made from: a saved plan whose digest no longer matches is
    /// stale and refused.
    public var fingerprint: String
    /// What the plan was made for (`--target`): nil policies means every policy, with clean-up.
    public var scope: PlanScope
    /// Per pool: the settings execution needs (limits, NBD).
    public var pools: [String: PoolSettings]
    /// Per AppliancePool on a pool in scope: what leasing an appliance needs (provisioning more).
    public var appliancePools: [String: AppliancePoolSettings]
    public var actions: [PlannedAction]
    public var warnings: [PlanWarning]

    public init(generatedAt: Date, fingerprint: String, scope: PlanScope, pools: [String: PoolSettings],
                appliancePools: [String: AppliancePoolSettings] = [:], actions: [PlannedAction], warnings: [PlanWarning]) {
        self.generatedAt = generatedAt
        self.fingerprint = fingerprint
        self.scope = scope
        self.pools = pools
        self.appliancePools = appliancePools
        self.actions = actions
        self.warnings = warnings
    }

    enum CodingKeys: String, CodingKey { case formatVersion, generatedAt, fingerprint, scope, pools, appliancePools, actions, warnings }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        formatVersion = try c.decode(Int.self, forKey: .formatVersion)
        generatedAt = try c.decode(Date.self, forKey: .generatedAt)
        fingerprint = try c.decode(String.self, forKey: .fingerprint)
        scope = try c.decode(PlanScope.self, forKey: .scope)
        pools = try c.decode([String: PoolSettings].self, forKey: .pools)
        // Absent from plans of format 2, which are then refused by their version, not by a decoding error.
        appliancePools = try c.decodeIfPresent([String: AppliancePoolSettings].self, forKey: .appliancePools) ?? [:]
        actions = try c.decode([PlannedAction].self, forKey: .actions)
        warnings = try c.decode([PlanWarning].self, forKey: .warnings)
    }

    public var summary: Summary {
        var s = Summary()
        for a in actions {
            switch a.kind.symbol {
            case "+": s.add += 1
            case "~": s.change += 1
            default: s.destroy += 1
            }
        }
        // A plan error is not a warning: counted apart, so "0 warnings" never hides an exit 2.
        s.errors = warnings.filter(\.isError).count
        s.warnings = warnings.count - s.errors
        return s
    }

    /// Warnings that are errors: the run exits 2.
    public var errors: [PlanWarning] { warnings.filter(\.isError) }

    /// Nothing to do (warnings are not changes).
    public var isEmpty: Bool { actions.isEmpty }

    public func action(_ key: ActionKey) -> PlannedAction? { actions.first { $0.key == key } }

    public struct Summary: Sendable, Codable, Equatable {
        public var add = 0
        public var change = 0
        public var destroy = 0
        public var warnings = 0
        public var errors = 0

        public var line: String {
            let errorText = errors == 0 ? "" : ", \(errors) error\(errors == 1 ? "" : "s")"
            return "Plan: \(add) to add, \(change) to change, \(destroy) to destroy, \(warnings) warning\(warnings == 1 ? "" : "s")\(errorText)."
        }
    }
}

/// What a plan covers: the pools observed and acted on, and (with `--target BackupPolicy/X`) the
/// only policies planned — then nothing is cleaned up.
public struct PlanScope: Sendable, Codable, Hashable {
    public var pools: [String]
    public var policies: [String]?

    public init(pools: [String], policies: [String]?) {
        self.pools = pools
        self.policies = policies
    }
}

/// The settings of a pool that execution needs, copied from the Pool resource at planning time.
public struct PoolSettings: Sendable, Codable, Hashable {
    public var snapshots: Int
    public var transfers: Int
    public var nbdConnections: Int
    public var nbdRequired: Bool
    public var nbdNetwork: String?
    /// NBD is served with TLS (purpose `nbd`), not in the clear (`insecure_nbd`).
    public var nbdTLS: Bool

    public init(snapshots: Int, transfers: Int, nbdConnections: Int, nbdRequired: Bool, nbdNetwork: String?, nbdTLS: Bool = true) {
        self.nbdTLS = nbdTLS
        self.snapshots = snapshots
        self.transfers = transfers
        self.nbdConnections = nbdConnections
        self.nbdRequired = nbdRequired
        self.nbdNetwork = nbdNetwork
    }
}

/// Something the plan wants a person to know; not a change.
public struct PlanWarning: Sendable, Codable, Hashable {
    public enum Code: String, Sendable, Codable, Hashable {
        case poolUnreachable = "pool-unreachable"
        case noNBDNetwork = "no-nbd-network"
        case preCBTPool = "pre-cbt-pool"
        case noCBTLicence = "no-cbt-licence"
        case noMatch = "selector-matches-nothing"
        case emptySelection = "selects-no-vm"
        case srWithoutCBT = "sr-without-cbt"
        case longChain = "long-vhd-chain"
        case srAlmostFull = "sr-almost-full"
        case notActedOn = "not-acted-on"
        case methodNotBuilt = "method-not-built"
        case missingNetworkMapping = "missing-network-mapping"
        case noTargetSR = "no-target-sr"
        case replicaRunning = "replica-running"
        case replicaFailedOver = "replica-failed-over"
        case replicaKept = "replica-kept"
        case failbackWaiting = "failback-waiting"
        /// A fail-back reads the replica's blocks over NBD on the target pool, which serves none.
        case failbackNeedsNBD = "failback-needs-nbd"
        case unprovenReplica = "unproven-replica"
        case notBuilt = "not-built"
        case unprovenSnapshot = "unproven-snapshot"
        case noApplianceTemplate = "no-appliance-template"
        case noApplianceSR = "no-appliance-sr"
        case noApplianceNetwork = "no-appliance-network"
        /// Fewer appliances can be made than the planned transfers need: some wait.
        case applianceAddressesExhausted = "appliance-addresses-exhausted"
        /// An appliance to remove is in use: it stays until it is idle.
        case applianceInUse = "appliance-in-use"
        /// A ReplicationPolicy whose method, direction and appliances cannot move data together.
        case replicationRoute = "replication-route"
    }

    /// A plan error: the run exits 2 (what else is planned still runs).
    public var isError: Bool {
        switch code {
        case .poolUnreachable, .missingNetworkMapping, .noTargetSR, .notBuilt, .failbackNeedsNBD, .noApplianceTemplate, .noApplianceSR, .noApplianceNetwork, .replicationRoute: true
        default: false
        }
    }

    public var code: Code
    public var pool: String
    /// The resource it concerns, `Kind/name`, when there is one.
    public var resource: String?
    public var message: String
    public var reason: String

    public init(_ code: Code, pool: String, resource: String? = nil, _ message: String, reason: String) {
        self.code = code
        self.pool = pool
        self.resource = resource
        self.message = message
        self.reason = reason
    }
}

/// The kinds of action, in the order a person reads them.
public enum ActionKind: String, Sendable, Codable, Hashable, CaseIterable, Comparable {
    case enableCBT = "enable-cbt"
    case provisionAppliance = "provision-appliance"
    case startAppliance = "start-appliance"
    case backup
    case replicate
    case failback
    case deleteSnapshot = "delete-snapshot"
    case removeReplica = "remove-replica"
    case purgeSnapshotData = "purge-snapshot-data"
    case retireAnchor = "retire-anchor"
    case prune
    case gc
    case removeAppliance = "remove-appliance"
    case disableCBT = "disable-cbt"

    public var symbol: String {
        switch self {
        case .backup, .replicate, .provisionAppliance: "+"
        case .enableCBT, .disableCBT, .startAppliance, .failback: "~"
        case .deleteSnapshot, .retireAnchor, .prune, .gc, .removeAppliance, .removeReplica: "-"
        case .purgeSnapshotData: "~"
        }
    }

    public static func < (a: ActionKind, b: ActionKind) -> Bool { allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)! }
}

/// Identifies one action within a plan: dependencies name actions by key.
public struct ActionKey: Sendable, Codable, Hashable, Comparable, CustomStringConvertible {
    public var kind: ActionKind
    public var pool: String
    /// What it acts on: a VM uuid (backup), a VDI uuid (CBT, anchor), a snapshot uuid, a
    /// version id (prune), a repository name (gc).
    public var subject: String
    /// The policy it is done for, when one.
    public var policy: String

    public init(_ kind: ActionKind, pool: String, subject: String, policy: String = "") {
        self.kind = kind
        self.pool = pool
        self.subject = subject
        self.policy = policy
    }

    public var description: String { "\(kind.rawValue)/\(pool)/\(subject)" + (policy.isEmpty ? "" : "@\(policy)") }

    public static func < (a: ActionKey, b: ActionKey) -> Bool {
        (a.pool, a.kind, a.subject, a.policy) < (b.pool, b.kind, b.subject, b.policy)
    }
}

/// A VM as the plan names it.
public struct VMIdentity: Sendable, Codable, Hashable {
    public var uuid: String
    public var name: String

    public init(uuid: String, name: String) {
        self.uuid = uuid
        self.name = name
    }
}

/// A repository as execution needs it: where it is and how it is written.
public struct RepositoryTarget: Sendable, Codable, Hashable {
    public var name: String
    public var path: String
    public var chunkSize: Int
    public var compression: String
    public var keyFile: String?

    public init(name: String, path: String, chunkSize: Int, compression: String, keyFile: String?) {
        self.name = name
        self.path = path
        self.chunkSize = chunkSize
        self.compression = compression
        self.keyFile = keyFile
    }
}

/// A hook as execution needs it.
public struct HookJob: Sendable, Codable, Hashable {
    public var command: [String]
    public var timeoutSeconds: Int
    public var failOnError: Bool

    public init(command: [String], timeoutSeconds: Int, failOnError: Bool) {
        self.command = command
        self.timeoutSeconds = timeoutSeconds
        self.failOnError = failOnError
    }
}

/// How a backup reads its disks.
public enum BackupMethod: String, Sendable, Codable, Hashable {
    /// Changed blocks since the anchor, over NBD.
    case cbtIncremental = "cbt-incremental"
    /// The 2 MiB blocks that differ from the previous backup's snapshot (kept on the pool as the
    /// delta base), as a VHD through `/export_raw_vdi?format=vhd&base=…`: incrementals without CBT.
    case deltaIncremental = "delta-incremental"
    /// The whole disk over NBD; the repository deduplicates.
    case fullNBD = "full-nbd"
    /// The whole disk through `/export_raw_vdi` (no NBD network).
    case fullExport = "full-export"
    /// The whole VM as XVA through `/export`.
    case xva
    /// Changed blocks since the anchor, read by a data-mover appliance the snapshot's disks are
    /// plugged into (`BackupJob.appliances`): no NBD network needed.
    case cbtAppliance = "cbt-appliance"
    /// The whole disk, read by a data-mover appliance.
    case fullAppliance = "full-appliance"
}

/// One disk of a backup.
public struct DiskJob: Sendable, Codable, Hashable {
    /// The VBD userdevice.
    public var key: String
    public var vdiUUID: String
    public var name: String
    public var size: Int64
    /// For an incremental: the anchor's snapshot VDI (CBT metadata, or the delta base with its
    /// data) and the version it matches.
    public var anchorVDI: String?
    public var baseBackup: String?

    public init(key: String, vdiUUID: String, name: String, size: Int64, anchorVDI: String? = nil, baseBackup: String? = nil) {
        self.key = key
        self.vdiUUID = vdiUUID
        self.name = name
        self.size = size
        self.anchorVDI = anchorVDI
        self.baseBackup = baseBackup
    }
}

/// One backup of one VM.
public struct BackupJob: Sendable, Codable, Hashable {
    public var method: BackupMethod
    public var repository: RepositoryTarget
    public var disks: [DiskJob]
    public var skippedDisks: [String]
    /// Keep the snapshot disks as anchors for the next incremental: CBT metadata (data
    /// destroyed), or with `deltaBases` the disks whole, as the bases of VHD deltas.
    public var keepAnchors: Bool
    /// The anchors kept are delta bases (the snapshot's disks with their data), not CBT metadata.
    public var deltaBases: Bool?
    public var purgeSnapshotData: Bool
    public var quiesce: String
    public var preSnapshot: HookJob?
    public var postSnapshot: HookJob?
    /// The AppliancePool whose appliances read the disks (methods cbt-appliance, full-appliance).
    public var appliances: String?

    public init(method: BackupMethod, repository: RepositoryTarget, disks: [DiskJob], skippedDisks: [String], keepAnchors: Bool,
                deltaBases: Bool = false, purgeSnapshotData: Bool, quiesce: String, preSnapshot: HookJob?, postSnapshot: HookJob?,
                appliances: String? = nil) {
        self.method = method
        self.appliances = appliances
        self.deltaBases = deltaBases ? true : nil
        self.repository = repository
        self.disks = disks
        self.skippedDisks = skippedDisks
        self.keepAnchors = keepAnchors
        self.purgeSnapshotData = purgeSnapshotData
        self.quiesce = quiesce
        self.preSnapshot = preSnapshot
        self.postSnapshot = postSnapshot
    }
}

/// One disk of a replica: the source disk, and (after the initial sync) its replica VDI.
public struct ReplicaDiskJob: Sendable, Codable, Hashable {
    public var key: String
    public var sourceVDI: String
    public var name: String
    public var size: Int64
    /// The source snapshot VDI (CBT metadata) the last sync read, for changed blocks.
    public var anchorVDI: String?
    public var replicaVDI: String?

    public init(key: String, sourceVDI: String, name: String, size: Int64, anchorVDI: String? = nil, replicaVDI: String? = nil) {
        self.key = key
        self.sourceVDI = sourceVDI
        self.name = name
        self.size = size
        self.anchorVDI = anchorVDI
        self.replicaVDI = replicaVDI
    }
}

/// One synchronisation of a replica on the target pool (or another SR of the same pool).
public struct ReplicationJob: Sendable, Codable, Hashable {
    public enum Mode: String, Sendable, Codable, Hashable {
        /// Create the replica and copy every disk.
        case initial
        /// Only the blocks CBT reports changed since the last sync.
        case incremental
        /// Every block of every disk rewritten onto the existing replica.
        case full
    }

    public var mode: Mode
    public var targetPool: String
    public var targetSR: String
    public var targetSRName: String
    public var replicaName: String
    /// Source network name_label -> target network name_label.
    public var networks: [String: String]
    public var keep: Int
    public var trustDestination: Bool
    public var disks: [ReplicaDiskJob]
    public var replicaUUID: String?
    /// method xva: the whole VM exported from a fresh snapshot and imported as a new replica, which
    /// replaces `replicaUUID` only once it imported completely.
    public var xva: Bool = false
    /// The same read also commits a backup version here.
    public var singlePass: SinglePassJob?
    /// method abd: the blocks go from a source-side appliance to a target-side one.
    public var abd: ApplianceRoute?

    public init(mode: Mode, targetPool: String, targetSR: String, targetSRName: String, replicaName: String, networks: [String: String], keep: Int,
                trustDestination: Bool, disks: [ReplicaDiskJob], replicaUUID: String?, xva: Bool = false, singlePass: SinglePassJob? = nil,
                abd: ApplianceRoute? = nil) {
        self.abd = abd
        self.xva = xva
        self.singlePass = singlePass
        self.mode = mode
        self.targetPool = targetPool
        self.targetSR = targetSR
        self.targetSRName = targetSRName
        self.replicaName = replicaName
        self.networks = networks
        self.keep = keep
        self.trustDestination = trustDestination
        self.disks = disks
        self.replicaUUID = replicaUUID
    }
}

/// How method abd moves a replica's blocks: the snapshot's disks are plugged into an appliance of
/// `source` (on the source pool), the replica's into one of `target` (on the target pool); with
/// `push` the source appliance's mover connects to the target's and writes, with `pull` the target
/// appliance's mover connects to the source's and reads (the target site opens no port).
public struct ApplianceRoute: Sendable, Codable, Hashable {
    public enum Direction: String, Sendable, Codable, Hashable { case push, pull }
    public var direction: Direction
    public var source: String
    public var target: String

    public init(direction: Direction, source: String, target: String) {
        self.direction = direction
        self.source = source
        self.target = target
    }
}

/// singlePass: the repository the replication's read also backs up into, and the version the
/// incremental patches (the one the last sync committed, whose chunks the new version references).
public struct SinglePassJob: Sendable, Codable, Hashable {
    public var repository: RepositoryTarget
    public var baseBackup: String?

    public init(repository: RepositoryTarget, baseBackup: String?) {
        self.repository = repository
        self.baseBackup = baseBackup
    }
}

/// One disk of a fail-back: the replica's disk (read), the original VM's disk (written), and the
/// CBT anchors that tell what changed on each side.
public struct FailbackDiskJob: Sendable, Codable, Hashable {
    public var key: String
    public var name: String
    public var size: Int64
    /// The original VM's VDI on the source pool.
    public var originalVDI: String
    /// The replica's VDI on the target pool.
    public var replicaVDI: String
    /// On the target: the replica's disk as it was at failover (CBT metadata); nil: every block.
    public var failoverAnchorVDI: String?
    /// On the source: the last sync's anchor, for what the original wrote after it; nil: every block.
    public var sourceAnchorVDI: String?

    public init(key: String, name: String, size: Int64, originalVDI: String, replicaVDI: String, failoverAnchorVDI: String?, sourceAnchorVDI: String?) {
        self.key = key
        self.name = name
        self.size = size
        self.originalVDI = originalVDI
        self.replicaVDI = replicaVDI
        self.failoverAnchorVDI = failoverAnchorVDI
        self.sourceAnchorVDI = sourceAnchorVDI
    }

    /// Whether only changed blocks are sent.
    public var incremental: Bool { failoverAnchorVDI != nil && sourceAnchorVDI != nil }
}

/// Fail-back after a failover: the blocks the running replica changed since the failover (and those
/// the original wrote after the last sync) sent back onto the halted original VM; then the normal
/// direction again (new anchors, a restore point, the replica blocked, the failover closed).
public struct FailbackJob: Sendable, Codable, Hashable {
    public var targetPool: String
    public var replicaUUID: String
    public var replicaName: String
    public var keep: Int
    public var disks: [FailbackDiskJob]

    public init(targetPool: String, replicaUUID: String, replicaName: String, keep: Int, disks: [FailbackDiskJob]) {
        self.targetPool = targetPool
        self.replicaUUID = replicaUUID
        self.replicaName = replicaName
        self.keep = keep
        self.disks = disks
    }
}

/// A replica haven made that is not the replica of record (an initial sync stopped before its disks
/// were recorded, or the previous xva replica a run stopped before removing), with its disks and
/// restore points; or replica disks never attached to a VM.
public struct ReplicaRemoval: Sendable, Codable, Hashable {
    public var pool: String
    public var vmUUID: String?
    public var vdis: [String]
    public var label: String
    /// The catalog intent that proves it haven's when the inventory does not (cleared afterwards).
    public var intent: String?

    public init(pool: String, vmUUID: String?, vdis: [String], label: String, intent: String? = nil) {
        self.pool = pool
        self.vmUUID = vmUUID
        self.vdis = vdis
        self.label = label
        self.intent = intent
    }
}

/// CBT switched on or off on one disk.
public struct CBTChange: Sendable, Codable, Hashable {
    public var disk: DiskJob

    public init(disk: DiskJob) { self.disk = disk }
}

/// An object haven made, to be destroyed: a snapshot VM (with its disks) or an anchor VDI.
public struct OwnedRemoval: Sendable, Codable, Hashable {
    public var uuid: String
    public var label: String
    /// A snapshot left by a run that died in `VM.snapshot`: not marked yet, proven haven's by the
    /// recorded intent of this name; it is marked (adopted), then removed.
    public var adoptIntent: String?

    public init(uuid: String, label: String, adoptIntent: String? = nil) {
        self.uuid = uuid
        self.label = label
        self.adoptIntent = adoptIntent
    }
}

/// A backup version to remove from its repository.
public struct PruneJob: Sendable, Codable, Hashable {
    public var version: String
    public var repository: RepositoryTarget

    public init(version: String, repository: RepositoryTarget) {
        self.version = version
        self.repository = repository
    }
}

/// Garbage collection of a repository after prunes.
public struct GCJob: Sendable, Codable, Hashable {
    public var repository: RepositoryTarget
    public var safetyWindowSeconds: Int

    public init(repository: RepositoryTarget, safetyWindowSeconds: Int) {
        self.repository = repository
        self.safetyWindowSeconds = safetyWindowSeconds
    }
}

/// What an action does, with its payload.
public enum Action: Sendable, Hashable {
    case provisionAppliance(ApplianceProvision)
    case startAppliance(ApplianceTarget)
    case removeAppliance(ApplianceTarget)
    case enableCBT(CBTChange)
    case disableCBT(CBTChange)
    case backup(BackupJob)
    case replicate(ReplicationJob)
    case failback(FailbackJob)
    case removeReplica(ReplicaRemoval)
    case deleteSnapshot(OwnedRemoval)
    /// A committed backup's clean-up left over: its anchor still holds the snapshot's data.
    case purgeSnapshotData(OwnedRemoval)
    case retireAnchor(OwnedRemoval)
    case prune(PruneJob)
    case gc(GCJob)

    public var kind: ActionKind {
        switch self {
        case .provisionAppliance: .provisionAppliance
        case .startAppliance: .startAppliance
        case .removeAppliance: .removeAppliance
        case .enableCBT: .enableCBT
        case .disableCBT: .disableCBT
        case .backup: .backup
        case .replicate: .replicate
        case .failback: .failback
        case .removeReplica: .removeReplica
        case .deleteSnapshot: .deleteSnapshot
        case .purgeSnapshotData: .purgeSnapshotData
        case .retireAnchor: .retireAnchor
        case .prune: .prune
        case .gc: .gc
        }
    }
}

/// One action of the plan: what, on which pool and VM, why, and what it waits for.
public struct PlannedAction: Sendable, Hashable {
    public var key: ActionKey
    public var action: Action
    public var vm: VMIdentity?
    public var reason: String
    /// Run only after these succeeded; when one fails or is skipped, this is skipped (and says why).
    public var requires: [ActionKey]
    /// Run only after these finished, whatever their outcome.
    public var after: [ActionKey]

    public init(key: ActionKey, action: Action, vm: VMIdentity? = nil, reason: String, requires: [ActionKey] = [], after: [ActionKey] = []) {
        self.key = key
        self.action = action
        self.vm = vm
        self.reason = reason
        self.requires = requires
        self.after = after
    }

    public var kind: ActionKind { action.kind }
    public var pool: String { key.pool }
    public var policy: String? { key.policy.isEmpty ? nil : key.policy }

    /// The one-line description `haven diff` prints after the symbol.
    public var headline: String {
        switch action {
        case .enableCBT(let c): return "enable CBT on \(c.disk.name) (disk \(c.disk.key))"
        case .disableCBT(let c): return "disable CBT on \(c.disk.name)"
        case .backup(let b):
            let what: String
            switch b.method {
            case .cbtIncremental: what = "incremental backup (changed blocks over NBD)"
            case .deltaIncremental: what = "incremental backup (VHD delta through /export_raw_vdi)"
            case .fullNBD: what = "full backup over NBD"
            case .fullExport: what = "full backup through /export_raw_vdi"
            case .xva: what = "XVA export"
            case .cbtAppliance: what = "incremental backup (changed blocks through an appliance of \(b.appliances ?? ""))"
            case .fullAppliance: what = "full backup through an appliance of \(b.appliances ?? "")"
            }
            var s = "\(what) of \(b.disks.count) disk\(b.disks.count == 1 ? "" : "s") (\(b.disks.map(\.name).joined(separator: ", "))) to \(b.repository.name)"
            if !b.skippedDisks.isEmpty { s += ", skipping \(b.skippedDisks.joined(separator: ", "))" }
            return s
        case .replicate(let r) where r.xva:
            return "export the VM whole (XVA) and import it as replica \(r.replicaName) on \(r.targetPool), SR \(r.targetSRName)"
                + (r.replicaUUID == nil ? "" : ", then remove the previous replica") + ", keeping \(r.keep) restore point\(r.keep == 1 ? "" : "s")"
                + (r.singlePass.map { ", and record a backup version in \($0.repository.name)" } ?? "")
        case .failback(let f):
            let changed = f.disks.allSatisfy(\.incremental)
            return "fail back from replica \(f.replicaName) on \(f.targetPool): \(changed ? "changed blocks" : "every block") of \(f.disks.count) disk\(f.disks.count == 1 ? "" : "s") (\(f.disks.map(\.name).joined(separator: ", "))) onto the original VM, then sync in the normal direction again"
        case .removeReplica(let r): return "remove \(r.label)"
        case .replicate(let r):
            let what: String
            switch r.mode {
            case .initial: what = "create replica \(r.replicaName) on \(r.targetPool) and copy"
            case .incremental: what = "sync replica \(r.replicaName) on \(r.targetPool): changed blocks of"
            case .full: what = "resynchronise replica \(r.replicaName) on \(r.targetPool): every block of"
            }
            let route = r.abd.map { a in
                a.direction == .push ? " through appliances (push: \(a.source) → \(a.target))" : " through appliances (pull: \(a.target) ← \(a.source))"
            } ?? ""
            return "\(what) \(r.disks.count) disk\(r.disks.count == 1 ? "" : "s") (\(r.disks.map(\.name).joined(separator: ", "))) to SR \(r.targetSRName)\(route), keeping \(r.keep) restore point\(r.keep == 1 ? "" : "s")"
                + (r.singlePass.map { ", and record a backup version in \($0.repository.name) from the same read" } ?? "")
        case .deleteSnapshot(let r): return "delete snapshot \(r.label)"
        case .retireAnchor(let r): return "retire CBT anchor \(r.label)"
        case .purgeSnapshotData(let r): return "destroy the data of snapshot disk \(r.label), keeping its CBT metadata"
        case .prune(let p): return "prune backup \(p.version) from \(p.repository.name)"
        case .gc(let g): return "collect garbage in repository \(g.repository.name)"
        case .provisionAppliance(let p):
            return "provision appliance \(p.name) (AppliancePool \(p.appliancePool)) from template \(p.template) on SR \(p.srName), network \(p.network), "
                + "\(p.memory / 1_048_576) MiB, \(p.address.ip.map { "static address \($0)" } ?? "address from DHCP")"
        case .startAppliance(let t): return "start appliance \(t.name) (AppliancePool \(t.appliancePool))"
        case .removeAppliance(let t): return "remove appliance \(t.name) (AppliancePool \(t.appliancePool)) and its disks"
        }
    }
}

extension PlannedAction: Codable {
    enum CodingKeys: String, CodingKey {
        case key, kind, pool, policy, vm, vmUUID, reason, requires, after, headline, symbol
        case enableCBT, disableCBT, backup, replicate, failback, removeReplica, deleteSnapshot, purgeSnapshotData, retireAnchor, prune, gc
        case provisionAppliance, startAppliance, removeAppliance
        // Flattened for readers of `diff --output json` (ignored when decoding).
        case method, disks, skippedDisks, repository, target
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(key, forKey: .key)
        try c.encode(kind, forKey: .kind)
        try c.encode(pool, forKey: .pool)
        try c.encodeIfPresent(policy, forKey: .policy)
        try c.encodeIfPresent(vm?.name, forKey: .vm)
        try c.encodeIfPresent(vm?.uuid, forKey: .vmUUID)
        try c.encode(reason, forKey: .reason)
        try c.encode(requires, forKey: .requires)
        try c.encode(after, forKey: .after)
        try c.encode(headline, forKey: .headline)
        try c.encode(kind.symbol, forKey: .symbol)
        switch action {
        case .enableCBT(let p):
            try c.encode(p, forKey: .enableCBT)
            try c.encode(p.disk.vdiUUID, forKey: .target)
        case .disableCBT(let p):
            try c.encode(p, forKey: .disableCBT)
            try c.encode(p.disk.vdiUUID, forKey: .target)
        case .backup(let p):
            try c.encode(p, forKey: .backup)
            try c.encode(p.method, forKey: .method)
            try c.encode(p.disks, forKey: .disks)
            try c.encode(p.skippedDisks, forKey: .skippedDisks)
            try c.encode(p.repository.name, forKey: .repository)
            try c.encodeIfPresent(vm?.name, forKey: .target)
        case .replicate(let p):
            try c.encode(p, forKey: .replicate)
            try c.encodeIfPresent(vm?.name, forKey: .target)
        case .failback(let p):
            try c.encode(p, forKey: .failback)
            try c.encodeIfPresent(vm?.name, forKey: .target)
        case .removeReplica(let p):
            try c.encode(p, forKey: .removeReplica)
            try c.encode(p.vmUUID ?? p.vdis.first ?? "", forKey: .target)
        case .deleteSnapshot(let p):
            try c.encode(p, forKey: .deleteSnapshot)
            try c.encode(p.uuid, forKey: .target)
        case .purgeSnapshotData(let p):
            try c.encode(p, forKey: .purgeSnapshotData)
            try c.encode(p.uuid, forKey: .target)
        case .retireAnchor(let p):
            try c.encode(p, forKey: .retireAnchor)
            try c.encode(p.uuid, forKey: .target)
        case .prune(let p):
            try c.encode(p, forKey: .prune)
            try c.encode(p.version, forKey: .target)
            try c.encode(p.repository.name, forKey: .repository)
        case .gc(let p):
            try c.encode(p, forKey: .gc)
            try c.encode(p.repository.name, forKey: .target)
            try c.encode(p.repository.name, forKey: .repository)
        case .provisionAppliance(let p):
            try c.encode(p, forKey: .provisionAppliance)
            try c.encode(p.name, forKey: .target)
        case .startAppliance(let p):
            try c.encode(p, forKey: .startAppliance)
            try c.encode(p.uuid, forKey: .target)
        case .removeAppliance(let p):
            try c.encode(p, forKey: .removeAppliance)
            try c.encode(p.uuid, forKey: .target)
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        key = try c.decode(ActionKey.self, forKey: .key)
        reason = try c.decode(String.self, forKey: .reason)
        requires = try c.decodeIfPresent([ActionKey].self, forKey: .requires) ?? []
        after = try c.decodeIfPresent([ActionKey].self, forKey: .after) ?? []
        if let uuid = try c.decodeIfPresent(String.self, forKey: .vmUUID) {
            vm = VMIdentity(uuid: uuid, name: try c.decodeIfPresent(String.self, forKey: .vm) ?? uuid)
        }
        switch try c.decode(ActionKind.self, forKey: .kind) {
        case .enableCBT: action = .enableCBT(try c.decode(CBTChange.self, forKey: .enableCBT))
        case .disableCBT: action = .disableCBT(try c.decode(CBTChange.self, forKey: .disableCBT))
        case .backup: action = .backup(try c.decode(BackupJob.self, forKey: .backup))
        case .replicate: action = .replicate(try c.decode(ReplicationJob.self, forKey: .replicate))
        case .failback: action = .failback(try c.decode(FailbackJob.self, forKey: .failback))
        case .removeReplica: action = .removeReplica(try c.decode(ReplicaRemoval.self, forKey: .removeReplica))
        case .deleteSnapshot: action = .deleteSnapshot(try c.decode(OwnedRemoval.self, forKey: .deleteSnapshot))
        case .retireAnchor: action = .retireAnchor(try c.decode(OwnedRemoval.self, forKey: .retireAnchor))
        case .purgeSnapshotData: action = .purgeSnapshotData(try c.decode(OwnedRemoval.self, forKey: .purgeSnapshotData))
        case .prune: action = .prune(try c.decode(PruneJob.self, forKey: .prune))
        case .gc: action = .gc(try c.decode(GCJob.self, forKey: .gc))
        case .provisionAppliance: action = .provisionAppliance(try c.decode(ApplianceProvision.self, forKey: .provisionAppliance))
        case .startAppliance: action = .startAppliance(try c.decode(ApplianceTarget.self, forKey: .startAppliance))
        case .removeAppliance: action = .removeAppliance(try c.decode(ApplianceTarget.self, forKey: .removeAppliance))
        }
    }
}

import Foundation

/// What haven would do, and why: the output of the planner, the input of the executor, and what
/// `haven diff` prints. Versioned JSON (`formatVersion`).
public struct Plan: Sendable, Codable {
    public var formatVersion = 1
    public var generatedAt: Date
    /// Digest of the observed pools, the catalog and the desired state the plan was made from:
    /// a saved plan whose digest no longer matches is stale and refused.
    public var fingerprint: String
    public var actions: [PlanAction]

    public init(generatedAt: Date, fingerprint: String, actions: [PlanAction]) {
        self.generatedAt = generatedAt
        self.fingerprint = fingerprint
        self.actions = actions
    }

    public var summary: Summary {
        var s = Summary()
        for a in actions {
            switch a.kind.symbol {
            case "+": s.add += 1
            case "~": s.change += 1
            case "-": s.destroy += 1
            default: s.warnings += 1
            }
        }
        return s
    }

    /// Nothing to do (warnings do not count: they are not changes).
    public var isEmpty: Bool { actions.allSatisfy { $0.kind == .warning } }

    public struct Summary: Sendable, Codable, Equatable {
        public var add = 0
        public var change = 0
        public var destroy = 0
        public var warnings = 0

        public var line: String {
            "Plan: \(add) to add, \(change) to change, \(destroy) to destroy, \(warnings) warning\(warnings == 1 ? "" : "s")."
        }
    }
}

/// One thing to do, with the reason it exists.
public struct PlanAction: Sendable, Codable, Hashable {
    public enum Kind: String, Sendable, Codable, Hashable {
        case enableCBT = "enable-cbt"
        case disableCBT = "disable-cbt"
        case backup
        case deleteSnapshot = "delete-snapshot"
        case prune
        case gc
        case warning

        public var symbol: String {
            switch self {
            case .backup: "+"
            case .enableCBT, .disableCBT: "~"
            case .deleteSnapshot, .prune, .gc: "-"
            case .warning: "!"
            }
        }
    }

    /// How a backup reads its disks.
    public enum Method: String, Sendable, Codable, Hashable {
        /// Changed blocks since the anchor, over NBD.
        case cbtIncremental = "cbt-incremental"
        /// The whole disk over NBD; the repository deduplicates.
        case fullNBD = "full-nbd"
        /// The whole disk through `/export_raw_vdi` (no NBD network).
        case fullExport = "full-export"
        /// The whole VM as XVA through `/export`.
        case xva
    }

    public struct Disk: Sendable, Codable, Hashable {
        public var key: String
        public var vdiUUID: String
        public var name: String
        public var size: Int64
        /// For an incremental: the anchor's snapshot VDI and the version it matches.
        public var anchorVDI: String?
        public var baseBackup: String?
    }

    public var kind: Kind
    public var pool: String
    public var vm: String?
    public var vmUUID: String?
    public var policy: String?
    public var reason: String
    /// What exactly: the CBT disk, the snapshot, the version, the repository.
    public var target: String
    public var method: Method?
    public var repository: String?
    public var disks: [Disk]
    public var skippedDisks: [String]
    /// The pool object acted on (a snapshot VM or an anchor VDI), for deletions.
    public var objectUUID: String?
    public var objectClass: String?

    public init(kind: Kind, pool: String, vm: String? = nil, vmUUID: String? = nil, policy: String? = nil, reason: String, target: String,
                method: Method? = nil, repository: String? = nil, disks: [Disk] = [], skippedDisks: [String] = [],
                objectUUID: String? = nil, objectClass: String? = nil) {
        self.objectUUID = objectUUID
        self.objectClass = objectClass
        self.kind = kind
        self.pool = pool
        self.vm = vm
        self.vmUUID = vmUUID
        self.policy = policy
        self.reason = reason
        self.target = target
        self.method = method
        self.repository = repository
        self.disks = disks
        self.skippedDisks = skippedDisks
    }

    /// The one-line description `haven diff` prints after the symbol.
    public var headline: String {
        switch kind {
        case .enableCBT: return "enable CBT on \(target)"
        case .disableCBT: return "disable CBT on \(target)"
        case .backup:
            let what: String
            switch method {
            case .cbtIncremental?: what = "incremental backup (changed blocks over NBD)"
            case .fullNBD?: what = "full backup over NBD"
            case .fullExport?: what = "full backup through /export_raw_vdi"
            case .xva?: what = "XVA export"
            case nil: what = "backup"
            }
            var s = "\(what) of \(disks.count) disk\(disks.count == 1 ? "" : "s") (\(disks.map(\.name).joined(separator: ", "))) to \(repository ?? "?")"
            if !skippedDisks.isEmpty { s += ", skipping \(skippedDisks.joined(separator: ", "))" }
            return s
        case .deleteSnapshot: return "delete snapshot \(target)"
        case .prune: return "prune backup \(target) from \(repository ?? "?")"
        case .gc: return "collect garbage in repository \(target)"
        case .warning: return target
        }
    }
}

import Foundation

/// What one pool looked like at one moment, read in a fixed number of calls (one
/// `get_all_records` per class) and reduced to what planning needs. Plain values: the planner
/// never talks to a pool.
public struct ObservedPool: Sendable, Codable {
    public var name: String
    public var apiMajor: Int64
    public var apiMinor: Int64
    /// `pool.restrictions["restrict_cbt"] == "false"`.
    public var cbtLicensed: Bool
    public var vms: [ObservedVM]
    public var snapshots: [ObservedSnapshot]
    public var vdis: [String: ObservedVDI]
    public var srs: [String: ObservedSR]
    /// name_labels of networks with purpose `nbd` or `insecure_nbd`.
    public var nbdNetworks: [String]
    /// Whether NBD is served with TLS (purpose `nbd`) rather than in the clear (`insecure_nbd`).
    public var nbdTLS: Bool = true
    /// name_labels of every network of the pool.
    public var networks: [String] = []
    /// uuid of the pool's default SR, when it has one.
    public var defaultSR: String?
    /// VMs carrying haven's appliance mark (this haven's or another's): never in `vms`.
    public var appliances: [ObservedAppliance] = []
    /// name_label -> uuid of the pool's templates (not snapshots).
    public var templates: [String: String] = [:]
    /// Templates (not snapshots) carrying a haven owner mark: an XVA import of one of its
    /// marked snapshots is a template with the snapshot's marks until it is made a replica, and
    /// a run stopped in between leaves one (only the replication planner looks at these).
    public var havenTemplates: [ObservedVM] = []
    /// Address -> name of the VM that reports it in its guest metrics, for every VM that is not
    /// an appliance of haven's (an appliance's addresses are kept with it). Read only for pools
    /// with an AppliancePool: nothing else needs it.
    public var guestAddresses: [String: String] = [:]
    /// Address -> "host NAME" for every IP a host interface (PIF) of the pool has: never handed to an
    /// appliance (a static list or CIDR may well include the hosts' own addresses). Read with guestAddresses.
    public var hostAddresses: [String: String] = [:]

    public init(name: String, apiMajor: Int64, apiMinor: Int64, cbtLicensed: Bool, vms: [ObservedVM], snapshots: [ObservedSnapshot],
                vdis: [String: ObservedVDI], srs: [String: ObservedSR], nbdNetworks: [String]) {
        self.name = name
        self.apiMajor = apiMajor
        self.apiMinor = apiMinor
        self.cbtLicensed = cbtLicensed
        self.vms = vms
        self.snapshots = snapshots
        self.vdis = vdis
        self.srs = srs
        self.nbdNetworks = nbdNetworks
    }

    public var hasCBTAPI: Bool { (apiMajor, apiMinor) >= (2, 8) }
    /// NBD came with the same release as CBT (API 2.8), and needs a network with an NBD purpose.
    public var nbdAvailable: Bool { hasCBTAPI && !nbdNetworks.isEmpty }
    public var apiVersion: String { "\(apiMajor).\(apiMinor)" }
}

public struct ObservedVM: Sendable, Codable, Hashable {
    public var uuid: String
    public var name: String
    public var powerState: String
    public var tags: [String]
    public var disks: [ObservedDisk]
    /// Networks (name_labels) of its VIFs.
    public var networks: [String] = []
    public var otherConfig: [String: String] = [:]

    /// A replica haven made (never selected by `all` or tags: explicit names only).
    public var isHavenReplica: Bool { otherConfig[OwnershipMarks.role] == "replica" }

    public init(uuid: String, name: String, powerState: String, tags: [String], disks: [ObservedDisk]) {
        self.uuid = uuid
        self.name = name
        self.powerState = powerState
        self.tags = tags
        self.disks = disks
    }
}

/// A data-mover appliance: a VM with haven's `haven.role=appliance` mark.
public struct ObservedAppliance: Sendable, Codable, Hashable {
    public var uuid: String
    public var name: String
    public var powerState: String
    /// `haven.owner`: the haven instance that made it.
    public var owner: String
    /// `haven.appliance-pool`: the AppliancePool it was made for.
    public var appliancePool: String
    /// The static address handed over in `xenstore_data` (`vm-data/haven/ip`); nil: DHCP.
    public var staticAddress: String?
    /// What its guest metrics report (the address it really has), sorted.
    public var addresses: [String]
    /// Disks plugged into it that are not its own (a transfer's snapshot or replica VDIs): it is in use.
    public var foreignDisks: [String]

    public init(uuid: String, name: String, powerState: String, owner: String, appliancePool: String, staticAddress: String?,
                addresses: [String], foreignDisks: [String] = []) {
        self.uuid = uuid
        self.name = name
        self.powerState = powerState
        self.owner = owner
        self.appliancePool = appliancePool
        self.staticAddress = staticAddress
        self.addresses = addresses
        self.foreignDisks = foreignDisks
    }

    public var isRunning: Bool { powerState.lowercased() == "running" }
    /// The address to reach it at: the reported one, else the static one it was given.
    public var address: String? { addresses.first ?? staticAddress }
}

/// A disk attachment of a VM: which VDI, at which position.
public struct ObservedDisk: Sendable, Codable, Hashable {
    public var userdevice: String
    public var device: String
    public var vdiUUID: String

    public init(userdevice: String, device: String, vdiUUID: String) {
        self.userdevice = userdevice
        self.device = device
        self.vdiUUID = vdiUUID
    }
}

public struct ObservedVDI: Sendable, Codable, Hashable {
    public var uuid: String
    public var name: String
    public var srUUID: String
    public var size: Int64
    public var type: String
    public var cbtEnabled: Bool
    public var isSnapshot: Bool
    public var snapshotOf: String
    public var otherConfig: [String: String]
    /// The VHD parent (`sm_config["vhd-parent"]`, a VDI uuid) of VHD-based SRs; nil at the chain's root.
    public var vhdParent: String?

    public init(uuid: String, name: String, srUUID: String, size: Int64, type: String, cbtEnabled: Bool, isSnapshot: Bool, snapshotOf: String,
                otherConfig: [String: String], vhdParent: String? = nil) {
        self.vhdParent = vhdParent
        self.uuid = uuid
        self.name = name
        self.srUUID = srUUID
        self.size = size
        self.type = type
        self.cbtEnabled = cbtEnabled
        self.isSnapshot = isSnapshot
        self.snapshotOf = snapshotOf
        self.otherConfig = otherConfig
    }
}

/// A snapshot VM, haven's or a user's (told apart by ownership marks).
public struct ObservedSnapshot: Sendable, Codable, Hashable {
    public var uuid: String
    public var name: String
    public var snapshotOf: String
    public var otherConfig: [String: String]
    public var disks: [ObservedDisk]

    public init(uuid: String, name: String, snapshotOf: String, otherConfig: [String: String], disks: [ObservedDisk]) {
        self.uuid = uuid
        self.name = name
        self.snapshotOf = snapshotOf
        self.otherConfig = otherConfig
        self.disks = disks
    }
}

public struct ObservedSR: Sendable, Codable, Hashable {
    public var uuid: String
    public var name: String
    public var type: String
    public var physicalSize: Int64
    public var physicalUtilisation: Int64
    public var supportsCBT: Bool

    public init(uuid: String, name: String, type: String, physicalSize: Int64, physicalUtilisation: Int64, supportsCBT: Bool) {
        self.uuid = uuid
        self.name = name
        self.type = type
        self.physicalSize = physicalSize
        self.physicalUtilisation = physicalUtilisation
        self.supportsCBT = supportsCBT
    }
}

/// The keys haven writes into `other_config` of everything it creates.
public enum OwnershipMarks {
    public static let owner = "haven.owner"
    public static let policy = "haven.policy"
    public static let role = "haven.role"
    public static let source = "haven.source"
    /// On a VDI whose CBT haven switched on.
    public static let cbt = "haven.cbt"
    /// On an appliance VM: the AppliancePool it belongs to.
    public static let appliancePool = "haven.appliance-pool"
    /// `haven.role` of an appliance VM, and of its own disks.
    public static let applianceRole = "appliance"
    public static let applianceDiskRole = "appliance-disk"
}


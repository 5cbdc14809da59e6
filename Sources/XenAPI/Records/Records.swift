import Foundation

// Typed views of the records haven reads. Each keeps only the fields haven needs; `fields` holds
// the whole record as the pool sent it (VM metadata goes into backup manifests unchanged).

public struct PoolRecord: XenRecord {
    public static let className = "pool"
    public var uuid: String
    public var nameLabel: String
    public var master: XenRef<HostRecord>
    public var defaultSR: XenRef<SRRecord>
    public var restrictions: [String: String]
    public var otherConfig: [String: String]

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        nameLabel = f.string("name_label")
        master = f.ref("master")
        defaultSR = f.ref("default_SR")
        restrictions = f.map("restrictions")
        otherConfig = f.map("other_config")
    }
}

public struct HostRecord: XenRecord {
    public static let className = "host"
    public var uuid: String
    public var nameLabel: String
    public var hostname: String
    public var address: String
    public var apiVersionMajor: Int64
    public var apiVersionMinor: Int64
    public var softwareVersion: [String: String]
    public var licenseParams: [String: String]
    public var enabled: Bool
    public var pbds: [XenRef<PBDRecord>]
    public var pifs: [XenRef<PIFRecord>]

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        nameLabel = f.string("name_label")
        hostname = f.string("hostname")
        address = f.string("address")
        apiVersionMajor = f.int("API_version_major")
        apiVersionMinor = f.int("API_version_minor")
        softwareVersion = f.map("software_version")
        licenseParams = f.map("license_params")
        enabled = f.bool("enabled")
        pbds = f.refs("PBDs")
        pifs = f.refs("PIFs")
    }
}

public enum PowerState: String, Sendable, Codable {
    case halted = "Halted", paused = "Paused", running = "Running", suspended = "Suspended"
}

public struct VMRecord: XenRecord {
    public static let className = "VM"
    public var uuid: String
    public var nameLabel: String
    public var nameDescription: String
    public var powerState: PowerState
    public var isATemplate: Bool
    public var isDefaultTemplate: Bool
    public var isASnapshot: Bool
    public var isControlDomain: Bool
    public var snapshotOf: XenRef<VMRecord>
    public var snapshots: [XenRef<VMRecord>]
    public var snapshotTime: String
    public var vbds: [XenRef<VBDRecord>]
    public var vifs: [XenRef<VIFRecord>]
    public var otherConfig: [String: String]
    public var tags: [String]
    public var blockedOperations: [String: String]
    public var allowedOperations: [String]
    public var residentOn: XenRef<HostRecord>
    /// "" (no HA), "restart" or "best-effort".
    public var haRestartPriority: String
    public var haAlwaysRun: Bool
    /// Runtime figures, among them `start_time` (when the VM last booted).
    public var metrics: XenRef<VMMetricsRecord>
    /// The snapshot this VM was last snapshotted to or reverted from.
    public var parent: XenRef<VMRecord>
    public var memoryStaticMin: Int64
    public var memoryStaticMax: Int64
    public var memoryDynamicMin: Int64
    public var memoryDynamicMax: Int64
    public var vcpusMax: Int64
    public var vcpusAtStartup: Int64
    public var hvmBootPolicy: String
    public var hvmBootParams: [String: String]
    public var pvBootloader: String
    public var platform: [String: String]
    public var domainType: String
    public var fields: [String: XenValue]

    /// A VM a user means when they say "VM": not a template, snapshot or dom0.
    public var isRealVM: Bool { !isATemplate && !isASnapshot && !isControlDomain }

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        nameLabel = f.string("name_label")
        nameDescription = f.string("name_description")
        powerState = PowerState(rawValue: f.string("power_state")) ?? .halted
        isATemplate = f.bool("is_a_template")
        isDefaultTemplate = f.bool("is_default_template")
        isASnapshot = f.bool("is_a_snapshot")
        isControlDomain = f.bool("is_control_domain")
        snapshotOf = f.ref("snapshot_of")
        snapshots = f.refs("snapshots")
        snapshotTime = f.string("snapshot_time")
        vbds = f.refs("VBDs")
        vifs = f.refs("VIFs")
        otherConfig = f.map("other_config")
        tags = f.strings("tags")
        blockedOperations = f.map("blocked_operations")
        allowedOperations = f.strings("allowed_operations")
        residentOn = f.ref("resident_on")
        haRestartPriority = f.string("ha_restart_priority")
        haAlwaysRun = f.bool("ha_always_run")
        metrics = f.ref("metrics")
        parent = f.ref("parent")
        memoryStaticMin = f.int("memory_static_min")
        memoryStaticMax = f.int("memory_static_max")
        memoryDynamicMin = f.int("memory_dynamic_min")
        memoryDynamicMax = f.int("memory_dynamic_max")
        vcpusMax = f.int("VCPUs_max")
        vcpusAtStartup = f.int("VCPUs_at_startup")
        hvmBootPolicy = f.string("HVM_boot_policy")
        hvmBootParams = f.map("HVM_boot_params")
        pvBootloader = f.string("PV_bootloader")
        platform = f.map("platform")
        domainType = f.string("domain_type")
        fields = f
    }
}

/// VM_metrics: what xapi knows of a VM's last run. `startTime` is stamped when the VM boots and
/// stays after it halts; the epoch (`19700101T00:00:00Z`) means never started since creation.
public struct VMMetricsRecord: XenRecord {
    public static let className = "VM_metrics"
    public var uuid: String
    /// xapi's datetime text, e.g. `20240115T10:30:00Z`.
    public var startTime: String
    public var installTime: String
    public var lastUpdated: String
    public var state: [String]
    public var memoryActual: Int64
    public var vcpusNumber: Int64

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        startTime = f.string("start_time")
        installTime = f.string("install_time")
        lastUpdated = f.string("last_updated")
        state = f.strings("state")
        memoryActual = f.int("memory_actual")
        vcpusNumber = f.int("VCPUs_number")
    }

    /// `startTime` as a date; nil for the epoch (never started) or unreadable text.
    public var startDate: Date? { XenDate.parse(startTime).flatMap { $0.timeIntervalSince1970 > 0 ? $0 : nil } }
}

/// xapi's datetime text: `YYYYMMDDTHH:MM:SSZ` (dashes tolerated). Read as UTC: xapi writes its
/// times in UTC.
public enum XenDate {
    public static func parse(_ text: String) -> Date? {
        var t = text.replacingOccurrences(of: "-", with: "")
        if t.hasSuffix("Z") { t.removeLast() }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HH:mm:ss"
        return f.date(from: String(t.prefix(17)))
    }
}

public struct VBDRecord: XenRecord {
    public static let className = "VBD"
    public var uuid: String
    public var vm: XenRef<VMRecord>
    public var vdi: XenRef<VDIRecord>
    public var device: String
    public var userdevice: String
    public var type: String
    public var mode: String
    public var bootable: Bool
    public var empty: Bool
    public var currentlyAttached: Bool
    public var otherConfig: [String: String]

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        vm = f.ref("VM")
        vdi = f.ref("VDI")
        device = f.string("device")
        userdevice = f.string("userdevice")
        type = f.string("type")
        mode = f.string("mode")
        bootable = f.bool("bootable")
        empty = f.bool("empty")
        currentlyAttached = f.bool("currently_attached")
        otherConfig = f.map("other_config")
    }
}

public struct VDIRecord: XenRecord {
    public static let className = "VDI"
    public var uuid: String
    public var nameLabel: String
    public var sr: XenRef<SRRecord>
    public var vbds: [XenRef<VBDRecord>]
    public var virtualSize: Int64
    public var physicalUtilisation: Int64
    public var type: String
    public var sharable: Bool
    public var readOnly: Bool
    public var isASnapshot: Bool
    public var snapshotOf: XenRef<VDIRecord>
    public var snapshots: [XenRef<VDIRecord>]
    public var snapshotTime: String
    public var cbtEnabled: Bool
    public var onBoot: String
    public var otherConfig: [String: String]
    public var smConfig: [String: String]
    public var missing: Bool

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        nameLabel = f.string("name_label")
        sr = f.ref("SR")
        vbds = f.refs("VBDs")
        virtualSize = f.int("virtual_size")
        physicalUtilisation = f.int("physical_utilisation")
        type = f.string("type")
        sharable = f.bool("sharable")
        readOnly = f.bool("read_only")
        isASnapshot = f.bool("is_a_snapshot")
        snapshotOf = f.ref("snapshot_of")
        snapshots = f.refs("snapshots")
        snapshotTime = f.string("snapshot_time")
        cbtEnabled = f.bool("cbt_enabled")
        onBoot = f.string("on_boot")
        otherConfig = f.map("other_config")
        smConfig = f.map("sm_config")
        missing = f.bool("missing")
    }
}

public struct SRRecord: XenRecord {
    public static let className = "SR"
    public var uuid: String
    public var nameLabel: String
    public var type: String
    public var contentType: String
    public var shared: Bool
    public var physicalSize: Int64
    public var physicalUtilisation: Int64
    public var virtualAllocation: Int64
    public var pbds: [XenRef<PBDRecord>]
    public var vdis: [XenRef<VDIRecord>]
    public var otherConfig: [String: String]

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        nameLabel = f.string("name_label")
        type = f.string("type")
        contentType = f.string("content_type")
        shared = f.bool("shared")
        physicalSize = f.int("physical_size")
        physicalUtilisation = f.int("physical_utilisation")
        virtualAllocation = f.int("virtual_allocation")
        pbds = f.refs("PBDs")
        vdis = f.refs("VDIs")
        otherConfig = f.map("other_config")
    }
}

public struct PBDRecord: XenRecord {
    public static let className = "PBD"
    public var uuid: String
    public var host: XenRef<HostRecord>
    public var sr: XenRef<SRRecord>
    public var currentlyAttached: Bool

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        host = f.ref("host")
        sr = f.ref("SR")
        currentlyAttached = f.bool("currently_attached")
    }
}

public struct SMRecord: XenRecord {
    public static let className = "SM"
    public var uuid: String
    public var type: String
    public var features: [String: Int64]

    public var supportsCBT: Bool { features["VDI_CONFIG_CBT"] != nil }

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        type = f.string("type")
        features = (f["features"]?.structValue ?? [:]).compactMapValues(\.intValue)
    }
}

public struct NetworkRecord: XenRecord {
    public static let className = "network"
    public var uuid: String
    public var nameLabel: String
    public var bridge: String
    public var purpose: [String]
    public var pifs: [XenRef<PIFRecord>]
    public var otherConfig: [String: String]

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        nameLabel = f.string("name_label")
        bridge = f.string("bridge")
        purpose = f.strings("purpose")
        pifs = f.refs("PIFs")
        otherConfig = f.map("other_config")
    }
}

public struct PIFRecord: XenRecord {
    public static let className = "PIF"
    public var uuid: String
    public var host: XenRef<HostRecord>
    public var network: XenRef<NetworkRecord>
    public var ip: String
    public var currentlyAttached: Bool

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        host = f.ref("host")
        network = f.ref("network")
        ip = f.string("IP")
        currentlyAttached = f.bool("currently_attached")
    }
}

public struct VIFRecord: XenRecord {
    public static let className = "VIF"
    public var uuid: String
    public var vm: XenRef<VMRecord>
    public var network: XenRef<NetworkRecord>
    public var device: String
    public var mac: String
    public var mtu: Int64
    public var macAutogenerated: Bool
    public var currentlyAttached: Bool
    public var lockingMode: String
    public var otherConfig: [String: String]

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        vm = f.ref("VM")
        network = f.ref("network")
        device = f.string("device")
        mac = f.string("MAC")
        mtu = f.int("MTU")
        macAutogenerated = f.bool("MAC_autogenerated")
        currentlyAttached = f.bool("currently_attached")
        lockingMode = f.string("locking_mode")
        otherConfig = f.map("other_config")
    }
}

public enum TaskStatus: String, Sendable, Codable {
    case pending, success, failure, cancelling, cancelled
}

public struct TaskRecord: XenRecord {
    public static let className = "task"
    public var uuid: String
    public var nameLabel: String
    public var status: TaskStatus
    public var progress: Double
    public var result: String
    public var errorInfo: [String]

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        nameLabel = f.string("name_label")
        status = TaskStatus(rawValue: f.string("status")) ?? .pending
        progress = f.double("progress")
        result = f.string("result")
        errorInfo = f.strings("error_info")
    }
}

public struct MessageRecord: XenRecord {
    public static let className = "message"
    public var uuid: String
    public var name: String
    public var priority: Int64
    public var cls: String
    public var objUUID: String
    public var timestamp: String
    public var body: String

    public init(_ f: [String: XenValue]) {
        uuid = f.string("uuid")
        name = f.string("name")
        priority = f.int("priority")
        cls = f.string("cls")
        objUUID = f.string("obj_uuid")
        timestamp = f.string("timestamp")
        body = f.string("body")
    }
}

/// One entry of `VDI.get_nbd_info`: where and how to read a disk over NBD.
public struct NBDServerInfo: Sendable, Hashable {
    public var exportName: String
    public var address: String
    public var port: Int
    public var cert: String
    public var subject: String

    public init(_ f: [String: XenValue]) {
        exportName = f.string("exportname")
        address = f.string("address")
        port = Int(f.int("port"))
        cert = f.string("cert")
        subject = f.string("subject")
    }
}

import Foundation

// Records for the `create` constructors, with every field xapi requires. xapi fails a create
// whose record lacks a required field (one without a default in the data model) with
// INTERNAL_ERROR ["Server_helpers.Dispatcher_FieldNotFound(\"<field>\")"], so these types fill
// each one; `extra` adds or overrides any other constructor field.

/// `VM.create`. xapi ignores `blocked_operations` in the record (set them after creating, with
/// `setBlockedOperations`) and adds an `other_config:mac_seed`; it validates vCPUs and memory
/// only when the VM starts.
public struct NewVM: Sendable {
    public var nameLabel: String
    public var nameDescription = ""
    public var memoryStaticMin: Int64
    public var memoryStaticMax: Int64
    public var memoryDynamicMin: Int64
    public var memoryDynamicMax: Int64
    public var vcpusMax: Int64 = 1
    public var vcpusAtStartup: Int64 = 1
    public var vcpusParams: [String: String] = [:]
    /// "BIOS order" for HVM guests; "" with a PV bootloader for PV ones.
    public var hvmBootPolicy = "BIOS order"
    public var hvmBootParams: [String: String] = ["order": "cd"]
    public var pvBootloader = ""
    public var pvKernel = ""
    public var pvRamdisk = ""
    public var pvArgs = ""
    public var pvBootloaderArgs = ""
    public var pvLegacyArgs = ""
    public var platform: [String: String] = [:]
    public var pciBus = ""
    public var recommendations = ""
    public var otherConfig: [String: String] = [:]
    public var actionsAfterShutdown = "destroy"
    public var actionsAfterReboot = "restart"
    public var actionsAfterCrash = "restart"
    public var affinity: XenRef<HostRecord> = XenRef("OpaqueRef:NULL")
    public var userVersion: Int64 = 1
    public var isATemplate = false
    /// "", "restart" or "best-effort".
    public var haRestartPriority = ""
    public var tags: [String] = []
    /// Any other constructor field (e.g. `domain_type`, `NVRAM`, `xenstore_data`), wire-named.
    public var extra: [String: XenValue] = [:]

    public init(nameLabel: String, memory: Int64) {
        self.nameLabel = nameLabel
        memoryStaticMin = memory
        memoryStaticMax = memory
        memoryDynamicMin = memory
        memoryDynamicMax = memory
    }

    public var record: [String: XenValue] {
        var r: [String: XenValue] = [
            "name_label": .string(nameLabel), "name_description": .string(nameDescription), "user_version": .int(userVersion),
            "is_a_template": .bool(isATemplate), "affinity": affinity.value, "memory_static_max": .int(memoryStaticMax),
            "memory_dynamic_max": .int(memoryDynamicMax), "memory_dynamic_min": .int(memoryDynamicMin),
            "memory_static_min": .int(memoryStaticMin), "VCPUs_params": .map(vcpusParams), "VCPUs_max": .int(vcpusMax),
            "VCPUs_at_startup": .int(vcpusAtStartup), "actions_after_shutdown": .string(actionsAfterShutdown),
            "actions_after_reboot": .string(actionsAfterReboot), "actions_after_crash": .string(actionsAfterCrash),
            "PV_bootloader": .string(pvBootloader), "PV_kernel": .string(pvKernel), "PV_ramdisk": .string(pvRamdisk),
            "PV_args": .string(pvArgs), "PV_bootloader_args": .string(pvBootloaderArgs), "PV_legacy_args": .string(pvLegacyArgs),
            "HVM_boot_policy": .string(hvmBootPolicy), "HVM_boot_params": .map(hvmBootParams), "platform": .map(platform),
            "PCI_bus": .string(pciBus), "other_config": .map(otherConfig), "recommendations": .string(recommendations),
            "ha_restart_priority": .string(haRestartPriority), "tags": .strings(tags),
        ]
        for (k, v) in extra { r[k] = v }
        return r
    }
}

/// `VDI.create`: a `user` disk, not sharable, writable.
public struct NewVDI: Sendable {
    public var sr: SRRef
    public var virtualSize: Int64
    public var nameLabel = ""
    public var nameDescription = ""
    public var type = "user"
    public var sharable = false
    public var readOnly = false
    public var otherConfig: [String: String] = [:]
    public var smConfig: [String: String] = [:]
    public var tags: [String] = []

    public init(sr: SRRef, virtualSize: Int64, nameLabel: String = "") {
        self.sr = sr
        self.virtualSize = virtualSize
        self.nameLabel = nameLabel
    }

    public var record: [String: XenValue] {
        [
            "SR": sr.value, "virtual_size": .int(virtualSize), "name_label": .string(nameLabel),
            "name_description": .string(nameDescription), "type": .string(type), "sharable": .bool(sharable),
            "read_only": .bool(readOnly), "other_config": .map(otherConfig), "sm_config": .map(smConfig), "tags": .strings(tags),
        ]
    }
}

/// `VBD.create`: a read-write, non-empty disk slot by default.
public struct NewVBD: Sendable {
    public var vm: VMRef
    public var vdi: VDIRef
    /// "0", "1", … or "autodetect".
    public var userdevice: String
    public var bootable = false
    public var mode = "RW"
    public var type = "Disk"
    public var empty = false
    public var unpluggable = true
    public var otherConfig: [String: String] = [:]

    public init(vm: VMRef, vdi: VDIRef, userdevice: String, bootable: Bool = false) {
        self.vm = vm
        self.vdi = vdi
        self.userdevice = userdevice
        self.bootable = bootable
    }

    public var record: [String: XenValue] {
        [
            "VM": vm.value, "VDI": vdi.value, "userdevice": .string(userdevice), "bootable": .bool(bootable), "mode": .string(mode),
            "type": .string(type), "empty": .bool(empty), "unpluggable": .bool(unpluggable), "other_config": .map(otherConfig),
            "qos_algorithm_type": "", "qos_algorithm_params": [:],
        ]
    }
}

/// `VIF.create`. An empty MAC lets xapi pick one (MAC_autogenerated true).
public struct NewVIF: Sendable {
    public var vm: VMRef
    public var network: NetworkRef
    /// "0", "1", …: one VIF per device on a VM.
    public var device: String
    public var mac = ""
    public var mtu: Int64 = 1500
    public var otherConfig: [String: String] = [:]

    public init(vm: VMRef, network: NetworkRef, device: String, mac: String = "", mtu: Int64 = 1500) {
        self.vm = vm
        self.network = network
        self.device = device
        self.mac = mac
        self.mtu = mtu
    }

    public var record: [String: XenValue] {
        [
            "device": .string(device), "network": network.value, "VM": vm.value, "MAC": .string(mac), "MTU": .int(mtu),
            "other_config": .map(otherConfig), "qos_algorithm_type": "", "qos_algorithm_params": [:],
        ]
    }
}

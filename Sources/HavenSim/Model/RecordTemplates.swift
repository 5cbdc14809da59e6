import DiskFormats
import Foundation
import XenAPI

/// Default records per class, with the fields and types xapi sends (a subset of the full data
/// model: clients must tolerate both missing and unknown fields).
enum Templates {
    static let null: XenValue = "OpaqueRef:NULL"
    static let epoch: XenValue = .dateTime("19700101T00:00:00Z")

    static func now() -> XenValue { .dateTime(xapiDate(Date())) }

    static func xapiDate(_ date: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HH:mm:ss'Z'"
        return f.string(from: date)
    }

    static func vm(name: String, power: String = "Halted", template: Bool = false, memory: Int64 = 1 << 30) -> [String: XenValue] {
        [
            "name_label": .string(name), "name_description": "", "power_state": .string(power),
            "is_a_template": .bool(template), "is_default_template": false, "is_a_snapshot": false,
            "snapshot_of": null, "snapshots": [], "snapshot_time": epoch, "snapshot_info": [:], "snapshot_metadata": "",
            "transportable_snapshot_id": "", "parent": null, "children": [], "is_control_domain": false,
            "resident_on": null, "affinity": null, "VBDs": [], "VIFs": [], "VTPMs": [], "VGPUs": [], "VUSBs": [],
            "consoles": [], "crash_dumps": [], "attached_PCIs": [], "suspend_VDI": null, "suspend_SR": null,
            "other_config": [:], "tags": [], "blocked_operations": [:], "allowed_operations": [],
            "current_operations": [:], "memory_static_max": .int(memory), "memory_static_min": .int(memory / 2),
            "memory_dynamic_max": .int(memory), "memory_dynamic_min": .int(memory), "memory_target": .int(memory),
            "memory_overhead": .int(memory / 64), "VCPUs_max": 2, "VCPUs_at_startup": 2, "VCPUs_params": [:],
            "actions_after_shutdown": "destroy", "actions_after_reboot": "restart", "actions_after_crash": "restart",
            "PV_bootloader": "", "PV_kernel": "", "PV_ramdisk": "", "PV_args": "", "PV_bootloader_args": "", "PV_legacy_args": "",
            "actions_after_softreboot": "soft_reboot", "scheduled_to_be_resident_on": null,
            "HVM_boot_policy": "BIOS order", "HVM_boot_params": ["order": "dc"], "HVM_shadow_multiplier": .double(1),
            "platform": ["vga": "std", "videoram": "8"], "PCI_bus": "", "domid": -1, "domarch": "",
            "user_version": 1, "ha_restart_priority": "", "ha_always_run": false, "is_snapshot_from_vmpp": false,
            "is_vmss_snapshot": false, "metrics": null, "guest_metrics": null, "xenstore_data": [:],
            "recommendations": "", "last_boot_CPU_flags": [:], "last_booted_record": "", "bios_strings": [:],
            "protection_policy": null, "snapshot_schedule": null, "appliance": null, "start_delay": 0,
            "shutdown_delay": 0, "order": 0, "generation_id": "", "hardware_platform_version": 0,
            "has_vendor_device": false, "requires_reboot": false, "reference_label": "", "domain_type": "hvm",
            "NVRAM": [:], "pending_guidances": [],
        ]
    }

    /// VM_metrics: xapi makes one per VM at creation with every time at the epoch; starting the
    /// VM stamps `start_time` (what a guard reads to tell whether a VM was booted).
    static func vmMetrics() -> [String: XenValue] {
        [
            "memory_actual": 0, "VCPUs_number": 0, "VCPUs_utilisation": ["0": .double(0)], "VCPUs_CPU": [:], "VCPUs_params": [:],
            "VCPUs_flags": [:], "state": [], "start_time": epoch, "install_time": epoch, "last_updated": epoch,
            "other_config": [:], "hvm": false, "nested_virt": false, "nomigrate": false, "current_domain_type": "unspecified",
        ]
    }

    static func vdi(name: String, sr: String, size: Int64, type: String = "user") -> [String: XenValue] {
        [
            "name_label": .string(name), "name_description": "", "allowed_operations": [], "current_operations": [:],
            "SR": .string(sr), "VBDs": [], "crash_dumps": [], "virtual_size": .int(size), "physical_utilisation": 0,
            "type": .string(type), "sharable": false, "read_only": false, "other_config": [:], "storage_lock": false,
            "location": "", "managed": true, "missing": false, "parent": null, "xenstore_data": [:], "sm_config": [:],
            "is_a_snapshot": false, "snapshot_of": null, "snapshots": [], "snapshot_time": epoch, "tags": [],
            "allow_caching": false, "on_boot": "persist", "metadata_of_pool": null, "metadata_latest": false,
            "is_tools_iso": false, "cbt_enabled": false,
        ]
    }

    static func vbd(vm: String, vdi: String, userdevice: String, type: String = "Disk", mode: String = "RW", bootable: Bool = false)
        -> [String: XenValue]
    {
        [
            "allowed_operations": [], "current_operations": [:], "VM": .string(vm), "VDI": .string(vdi),
            "device": "", "userdevice": .string(userdevice), "bootable": .bool(bootable), "mode": .string(mode),
            "type": .string(type), "unpluggable": true, "storage_lock": false, "empty": .bool(vdi == "OpaqueRef:NULL"),
            "other_config": [:], "currently_attached": false, "status_code": 0, "status_detail": "",
            "runtime_properties": [:], "qos_algorithm_type": "", "qos_algorithm_params": [:],
            "qos_supported_algorithms": [], "metrics": null,
        ]
    }

    static func vif(vm: String, network: String, device: String, mac: String) -> [String: XenValue] {
        [
            "allowed_operations": [], "current_operations": [:], "device": .string(device), "network": .string(network),
            "VM": .string(vm), "MAC": .string(mac), "MTU": 1500, "other_config": [:], "currently_attached": false,
            "status_code": 0, "status_detail": "", "runtime_properties": [:], "qos_algorithm_type": "",
            "qos_algorithm_params": [:], "qos_supported_algorithms": [], "metrics": null, "MAC_autogenerated": true,
            "locking_mode": "network_default", "ipv4_allowed": [], "ipv6_allowed": [], "ipv4_configuration_mode": "None",
            "ipv4_addresses": [], "ipv4_gateway": "", "ipv6_configuration_mode": "None", "ipv6_addresses": [],
            "ipv6_gateway": "",
        ]
    }

    static func macAddress(_ rng: inout SplitMix64) -> String {
        let b = (0..<5).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        return (["0a"] + b.map { String(format: "%02x", $0) }).joined(separator: ":")
    }
}

import Foundation
import HavenData
import XenAPI

/// Recreates a VM from a backup version on a pool: the VM from its stored record, each disk as a
/// new VDI on the chosen SR written through `/import_raw_vdi` (VHD, only the blocks with data),
/// its VBDs and VIFs. When the original VM still exists the copy gets a new name and new MACs;
/// otherwise it takes back the original name and MACs.
public struct VMRestore: Sendable {
    public let client: XenAPIClient
    public let repository: BackupRepository

    public init(client: XenAPIClient, repository: BackupRepository) {
        self.client = client
        self.repository = repository
    }

    public struct Outcome: Sendable {
        public var vm: VMRef
        public var name: String
        public var keptIdentity: Bool
    }

    public func restore(_ manifest: BackupManifest, srName: String, name requested: String?, log: @escaping @Sendable (String) -> Void) async throws -> Outcome {
        let srs = try await client.records(SRRecord.self)
        guard let (srRef, _) = srs.first(where: { $0.value.nameLabel == srName }) else {
            throw EngineError(.restore, srName, "no SR named '\(srName)' on the target pool (there are: \(srs.values.map(\.nameLabel).sorted().joined(separator: ", ")))")
        }
        let vms = try await client.records(VMRecord.self)
        let originalExists = vms.values.contains { $0.uuid == manifest.vmUUID && $0.isRealVM }
        let stamp = ISO8601DateFormatter().string(from: manifest.createdAt)
        let name = requested ?? (originalExists ? "\(manifest.vmName) (restored \(stamp))" : manifest.vmName)
        var record: [String: XenValue] = [:]
        let copied = ["name_description", "memory_static_max", "memory_static_min", "memory_dynamic_max", "memory_dynamic_min", "memory_target",
                      "VCPUs_max", "VCPUs_at_startup", "VCPUs_params", "actions_after_shutdown", "actions_after_reboot", "actions_after_crash",
                      "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args", "PV_bootloader_args", "PV_legacy_args", "HVM_boot_policy",
                      "HVM_boot_params", "HVM_shadow_multiplier", "platform", "PCI_bus", "other_config", "recommendations", "xenstore_data",
                      "ha_always_run", "ha_restart_priority", "tags", "blocked_operations", "protection_policy", "is_snapshot_from_vmpp",
                      "appliance", "start_delay", "shutdown_delay", "order", "suspend_SR", "hardware_platform_version", "has_vendor_device",
                      "user_version", "affinity", "domain_type", "bios_strings", "NVRAM"]
        for k in copied { if let v = manifest.vmRecord[k] { record[k] = v } }
        // References of the source pool mean nothing here.
        for (k, v) in record where (v.stringValue ?? "").hasPrefix("OpaqueRef:") { record[k] = "OpaqueRef:NULL" }
        var other = record["other_config"]?.structValue ?? [:]
        for k in other.keys where k.hasPrefix("haven.") { other[k] = nil }
        other["haven.restored-from"] = .string(manifest.id)
        record["other_config"] = .structure(other)
        record["name_label"] = .string(name)
        record["is_a_template"] = false
        let vm = try await client.createVM(record)
        log("created VM \(name)")
        for disk in manifest.disks {
            let vdi = try await client.createVDI([
                "name_label": .string(disk.name), "name_description": .string("restored from \(manifest.id)"), "SR": srRef.value,
                "virtual_size": .int(disk.size), "type": "user", "sharable": false, "read_only": false, "other_config": [:],
            ])
            let restore = DiskRestore(repository: repository)
            let length = try restore.vhdSize(disk)
            let stream = VHDPipe(restore: restore, disk: disk)
            try await client.importRawVDI(vdi, format: .vhd, length: length) { try stream.read(into: $0) }
            try stream.finish()
            _ = try await client.createVBD([
                "VM": vm.value, "VDI": vdi.value, "userdevice": .string(disk.key), "bootable": .bool(disk.key == "0"), "mode": "RW",
                "type": "Disk", "empty": false, "other_config": [:], "qos_algorithm_type": "", "qos_algorithm_params": [:],
            ])
            log("restored disk \(disk.key) (\(disk.name), \(disk.size) bytes)")
        }
        let networks = try await client.records(NetworkRecord.self)
        for vif in manifest.vifs ?? [] {
            guard let (net, _) = networks.first(where: { $0.value.nameLabel == vif.network }) ?? networks.first else { continue }
            _ = try await client.createVIF([
                "VM": vm.value, "network": net.value, "device": .string(vif.device), "MAC": .string(originalExists ? "" : vif.mac), "MTU": 1500,
                "other_config": [:], "qos_algorithm_type": "", "qos_algorithm_params": [:],
            ])
        }
        return Outcome(vm: vm, name: name, keptIdentity: !originalExists)
    }
}

/// Turns DiskRestore's push-style VHD stream into the pull-style reads an upload wants, holding
/// at most a few MiB: a producer thread writes, the upload reads.
final class VHDPipe: @unchecked Sendable {
    // @unchecked: `buffer`, `done` and `error` are guarded by `condition`.
    let condition = NSCondition()
    var buffer: [UInt8] = []
    var done = false
    var error: (any Error)?
    let limit = 8 << 20

    init(restore: DiskRestore, disk: DiskVersion) {
        let t = Thread { [self] in
            do {
                try restore.toVHDStream(disk) { bytes in
                    condition.lock()
                    while buffer.count > limit && error == nil { condition.wait() }
                    buffer.append(contentsOf: bytes)
                    condition.broadcast()
                    condition.unlock()
                }
            } catch {
                condition.lock()
                self.error = error
                condition.unlock()
            }
            condition.lock()
            done = true
            condition.broadcast()
            condition.unlock()
        }
        t.start()
    }

    func read(into out: UnsafeMutableRawBufferPointer) throws -> Int {
        condition.lock()
        defer { condition.unlock() }
        while buffer.isEmpty && !done { condition.wait() }
        if let error { throw error }
        let n = min(out.count, buffer.count)
        buffer.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
        buffer.removeFirst(n)
        condition.broadcast()
        return n
    }

    func finish() throws {
        condition.lock()
        defer { condition.unlock() }
        if let error { throw error }
    }
}

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

    /// What a restore has made on the pool so far, removed again when it fails, and what it is doing.
    final class Progress: @unchecked Sendable {
        // @unchecked: used by the one task running the restore, one step after the other.
        var vm: VMRef?
        var vdis: [VDIRef] = []
        var step = "reading the target pool"
    }

    /// Restores the VM; on failure removes what it created (the VM, the disks made or imported)
    /// and says what it was doing, so a failed restore is neither a half VM nor a bare xapi code.
    public func restore(_ manifest: BackupManifest, srName: String, name requested: String?, log: @escaping @Sendable (String) -> Void) async throws -> Outcome {
        let progress = Progress()
        do {
            return try await restore(manifest, srName: srName, name: requested, progress: progress, log: log)
        } catch let e as EngineError where progress.vm == nil && progress.vdis.isEmpty {
            throw e
        } catch {
            let undone = await undo(progress)
            throw EngineError(.restore, manifest.id, "restoring \(manifest.vmName) from \(manifest.id) failed while \(progress.step): \(error); \(undone)")
        }
    }

    func undo(_ p: Progress) async -> String {
        guard p.vm != nil || !p.vdis.isEmpty else { return "nothing was created on the pool" }
        var left: [String] = []
        if let vm = p.vm {
            // An imported VM's disks are its VBDs' (VM.destroy leaves disks behind).
            if let record = try? await client.record(vm) {
                for vbd in record.vbds {
                    if let b = try? await client.record(vbd), b.type == "Disk", !b.vdi.isNull, !p.vdis.contains(b.vdi) { p.vdis.append(b.vdi) }
                }
            }
            do { try await client.destroy(vm) } catch { left.append("VM \(vm.raw) (\(error))") }
        }
        for v in p.vdis {
            do { try await client.destroy(v) } catch let e as XenAPIError where e.code == XenAPIError.Code.handleInvalid {
            } catch { left.append("VDI \(v.raw) (\(error))") }
        }
        return left.isEmpty ? "what it had created on the pool was removed" : "could not remove \(left.joined(separator: ", ")); remove them by hand"
    }

    func restore(_ manifest: BackupManifest, srName: String, name requested: String?, progress: Progress,
                 log: @escaping @Sendable (String) -> Void) async throws -> Outcome {
        let srs = try await client.records(SRRecord.self)
        guard let (srRef, _) = srs.first(where: { $0.value.nameLabel == srName }) else {
            throw EngineError(.restore, srName, "no SR named '\(srName)' on the target pool (there are: \(srs.values.map(\.nameLabel).sorted().joined(separator: ", ")))")
        }
        let vms = try await client.records(VMRecord.self)
        let originalExists = vms.values.contains { $0.uuid == manifest.vmUUID && $0.isRealVM }
        let stamp = ISO8601DateFormatter().string(from: manifest.createdAt)
        let name = requested ?? (originalExists ? "\(manifest.vmName) (restored \(stamp))" : manifest.vmName)
        if let archive = XVAArchive.stream(of: manifest) {
            return try await restoreXVA(manifest, archive: archive, sr: srRef, name: name, originalExists: originalExists, progress: progress, log: log)
        }
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
        progress.step = "creating the VM"
        let vm = try await client.createVM(record)
        progress.vm = vm
        log("created VM \(name)")
        for disk in manifest.disks {
            progress.step = "creating disk \(disk.key) (\(disk.name), \(disk.size) bytes) on SR \(srName)"
            let vdi = try await client.createVDI([
                "name_label": .string(disk.name), "name_description": .string("restored from \(manifest.id)"), "SR": srRef.value,
                "virtual_size": .int(disk.size), "type": "user", "sharable": false, "read_only": false, "other_config": [:],
            ])
            progress.vdis.append(vdi)
            progress.step = "writing disk \(disk.key) (\(disk.name)) through /import_raw_vdi"
            let restore = DiskRestore(repository: repository)
            let length = try restore.vhdSize(disk)
            let stream = StreamPipe(vhdOf: disk, restore: restore)
            do {
                try await client.importRawVDI(vdi, format: .vhd, length: length) { try stream.read(into: $0) }
                try stream.finish()
            } catch {
                stream.abandon()
                throw error
            }
            progress.step = "attaching disk \(disk.key) to the VM"
            _ = try await client.createVBD([
                "VM": vm.value, "VDI": vdi.value, "userdevice": .string(disk.key), "bootable": .bool(disk.key == "0"), "mode": "RW",
                "type": "Disk", "empty": false, "other_config": [:], "qos_algorithm_type": "", "qos_algorithm_params": [:],
            ])
            log("restored disk \(disk.key) (\(disk.name), \(disk.size) bytes)")
        }
        progress.step = "creating the network interfaces"
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

extension VMRestore {
    /// An XVA version goes back through xapi's own VM import: the archive is streamed to
    /// `/import` and xapi recreates the VM, its disks (the exported bytes), VBDs and VIFs (with new
    /// MACs and uuids, as any import without `restore=true`). What the import cannot know is
    /// put right afterwards.
    func restoreXVA(_ manifest: BackupManifest, archive: DiskVersion, sr: SRRef, name: String, originalExists: Bool, progress: Progress,
                    log: @escaping @Sendable (String) -> Void) async throws -> Outcome {
        progress.step = "importing the XVA archive through /import"
        let pipe = StreamPipe(rawOf: archive, restore: DiskRestore(repository: repository))
        let imported: [VMRef]
        do {
            // The archive's ova.xml goes without haven's marks: imported with them, the restored
            // VM and its disks carried the snapshot's ownership marks until haven removed them, and
            // a restore killed in between left a VM and disks marked as haven's that no inventory
            // or plan covers (kill sweep). The marks stay removed below for archives this cannot parse.
            let head = try XVAArchive.unmarkedHead(read: { try pipe.read(into: $0) })
            let feed = PrefixedReader(prefix: head.bytes) { try pipe.read(into: $0) }
            imported = try await client.importXVA(sr: sr, length: archive.size - head.replaced + Int64(head.bytes.count)) { try feed.read(into: $0) }
            try pipe.finish()
        } catch {
            pipe.abandon()
            throw error
        }
        if imported.count == 1 { progress.vm = imported[0] }
        progress.step = "setting up the imported VM"
        guard imported.count == 1, let vm = imported.first else {
            throw EngineError(.restore, manifest.id, "importing the XVA of \(manifest.id) gave \(imported.count) VMs (\(imported.map(\.raw).joined(separator: ", "))), expected one")
        }
        log("imported the XVA archive (\(archive.size) bytes) as a new VM")
        let record = try await client.record(vm)
        // The archive is an export of haven's snapshot, and xapi's snapshots are templates; an
        // export keeps is_a_template, so the import is a template until made a VM again.
        if record.isATemplate { try await client.setIsATemplate(vm, false) }
        try await client.setNameLabel(vm, name)
        // The snapshot (and its disks) carried haven's ownership marks, which the export copied:
        // left on the restored VM they would make haven treat the user's VM as its own leftover.
        for key in record.otherConfig.keys.sorted() where key.hasPrefix("haven.") {
            try await client.removeOtherConfig(vm, key: key)
        }
        try await client.setOtherConfig(vm, key: "haven.restored-from", value: manifest.id)
        var disks: [(String, VDIRecord)] = []
        for vbd in record.vbds {
            let b = try await client.record(vbd)
            guard b.type != "CD", !b.vdi.isNull else { continue }
            let vdi = try await client.record(b.vdi)
            for key in vdi.otherConfig.keys.sorted() where key.hasPrefix("haven.") {
                _ = try await client.call(.vdiRemoveFromOtherConfig, [b.vdi.value, .string(key)])
            }
            disks.append((b.userdevice, vdi))
        }
        for (device, vdi) in disks.sorted(by: { (Int($0.0) ?? Int.max, $0.0) < (Int($1.0) ?? Int.max, $1.0) }) {
            log("restored disk \(device) (\(vdi.nameLabel), \(vdi.virtualSize) bytes) from the XVA")
        }
        // Taking back the original identity: the import gave new MACs, and a VIF's MAC is fixed
        // when it is created, so each interface is recreated on its network with the old MAC.
        if !originalExists {
            let original = manifest.vifs ?? []
            for ref in record.vifs {
                let vif = try await client.record(ref)
                guard let old = original.first(where: { $0.device == vif.device }), !old.mac.isEmpty,
                      old.mac.lowercased() != vif.mac.lowercased() else { continue }
                try await client.destroy(ref)
                _ = try await client.createVIF([
                    "VM": vm.value, "network": vif.network.value, "device": .string(vif.device), "MAC": .string(old.mac), "MTU": 1500,
                    "other_config": [:], "qos_algorithm_type": "", "qos_algorithm_params": [:],
                ])
            }
        }
        return Outcome(vm: vm, name: name, keptIdentity: !originalExists)
    }
}

/// Turns DiskRestore's push-style streams into the pull-style reads an upload wants, holding
/// at most a few MiB: a producer thread writes, the upload reads.
final class StreamPipe: @unchecked Sendable {
    // @unchecked: `buffer`, `head`, `done`, `abandoned` and `error` are guarded by `condition`.
    let condition = NSCondition()
    var buffer: [UInt8] = []
    /// Bytes at the front of `buffer` already read: dropping them on every read would move the
    /// whole buffer for each few KiB the upload takes.
    var head = 0
    var done = false
    /// The reader gave up (the upload failed): the producer stops instead of waiting forever.
    var abandoned = false
    var error: (any Error)?
    let limit = 8 << 20

    /// A disk version as a dynamic VHD (what `/import_raw_vdi?format=vhd` takes).
    convenience init(vhdOf disk: DiskVersion, restore: DiskRestore) {
        self.init { emit in try restore.toVHDStream(disk, emit: emit) }
    }

    /// A stored stream byte for byte (an XVA archive for `/import`).
    convenience init(rawOf disk: DiskVersion, restore: DiskRestore) {
        self.init { emit in try restore.toRawStream(disk, emit: emit) }
    }

    init(produce: @escaping @Sendable (_ emit: (UnsafeRawBufferPointer) throws -> Void) throws -> Void) {
        let t = Thread { [self] in
            do {
                try produce { bytes in
                    condition.lock()
                    while buffer.count - head > limit && error == nil && !abandoned { condition.wait() }
                    if abandoned {
                        condition.unlock()
                        throw CancellationError()
                    }
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
        while buffer.count == head && !done { condition.wait() }
        if let error { throw error }
        let n = min(out.count, buffer.count - head)
        buffer.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress! + head, byteCount: n) }
        head += n
        if head == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= limit {
            buffer.removeFirst(head)
            head = 0
        }
        condition.broadcast()
        return n
    }

    func finish() throws {
        condition.lock()
        defer { condition.unlock() }
        if let error { throw error }
    }

    /// Lets the producer thread end when the upload stopped reading early.
    func abandon() {
        condition.lock()
        abandoned = true
        condition.broadcast()
        condition.unlock()
    }
}

import DiskFormats
import Foundation
import XenAPI

extension SimPool {
    /// xapi's lifecycle check order: blocked operations, then power state, then templates and
    /// snapshots, then the control domain.
    func checkOperation(_ c: SimCall, _ vm: String, _ op: String, allowed states: [String]) throws {
        let f = db.get(vm, "VM")!
        if let reason = f["blocked_operations"]?.structValue?[op]?.stringValue {
            throw c.fail(XenAPIError.Code.operationBlocked, vm, reason)
        }
        let isSnapshot = f["is_a_snapshot"]?.boolValue == true
        let isTemplate = f["is_a_template"]?.boolValue == true
        let power = f["power_state"]?.stringValue ?? "Halted"
        if !states.contains(power) {
            throw c.fail(XenAPIError.Code.vmBadPowerState, vm, states.map { $0.lowercased() }.joined(separator: ", "), power.lowercased())
        }
        if isSnapshot, !["revert", "clone", "copy", "export", "destroy", "hard_shutdown", "metadata_export"].contains(op) {
            throw c.fail(XenAPIError.Code.vmIsSnapshot, vm, op)
        }
        if isTemplate, !isSnapshot, !["clone", "copy", "export", "metadata_export", "provision", "destroy"].contains(op) {
            throw c.fail(XenAPIError.Code.vmIsTemplate, vm, op)
        }
        if f["is_control_domain"]?.boolValue == true {
            throw c.fail(XenAPIError.Code.operationNotAllowed, "Operation not allowed on the control domain")
        }
    }

    func checkSRSpace(_ c: SimCall, sr: String, adding bytes: Int64) throws {
        let name = db.field(sr, "name_label")?.stringValue ?? ""
        if faults.contains(where: { $0.kind == .srFull && $0.target == name }) {
            let size = db.field(sr, "physical_size")?.intValue ?? 0
            throw c.fail(XenAPIError.Code.srFull, String(bytes), String(size))
        }
        let size = db.field(sr, "physical_size")?.intValue ?? 0
        let used = db.field(sr, "physical_utilisation")?.intValue ?? 0
        if size > 0, used + bytes > size { throw c.fail(XenAPIError.Code.srFull, String(bytes), String(size - used)) }
    }

    func snapshotVM(_ c: SimCall, vm: String, name: String, ignore: Set<String>) throws -> String {
        try checkOperation(c, vm, "snapshot", allowed: ["Halted", "Running", "Paused", "Suspended"])
        let source = db.get(vm, "VM")!
        // Refuse before creating anything, as SM would.
        for vbd in source["VBDs"]?.stringArray ?? [] {
            guard let vdi = db.field(vbd, "VDI")?.stringValue, db.get(vdi, "VDI") != nil, !ignore.contains(vdi) else { continue }
            if let sr = db.field(vdi, "SR")?.stringValue { try checkSRSpace(c, sr: sr, adding: 0) }
        }
        var record = source
        record["uuid"] = nil
        // What VM.revert restores (xapi keeps it as snapshot_metadata).
        var metadata = source
        for k in metadata.keys where k.hasPrefix("__") { metadata[k] = nil }
        record["__snapshot_metadata"] = .structure(metadata)
        record["metrics"] = .string(copyMetrics(of: source))
        record["name_label"] = .string(name)
        record["is_a_snapshot"] = true
        record["is_a_template"] = true
        record["snapshot_of"] = .string(vm)
        record["snapshots"] = []
        record["snapshot_time"] = Templates.now()
        record["snapshot_info"] = .map(["disk-snapshot-type": "crash_consistent", "power-state-at-snapshot": source["power_state"]?.stringValue ?? "Halted"])
        record["power_state"] = "Halted"
        // xapi_vm_clone.ml copy_vm_record: snapshots and clones never inherit ha_always_run.
        record["ha_always_run"] = false
        record["resident_on"] = Templates.null
        record["blocked_operations"] = [:]
        record["current_operations"] = [:]
        record["VBDs"] = []
        record["VIFs"] = []
        record["domid"] = -1
        record["children"] = []
        var other = source["other_config"]?.structValue ?? [:]
        other["default_template"] = nil
        for k in other.keys where k.hasPrefix("xensource_internal") { other[k] = nil }
        record["other_config"] = .structure(other)
        let snap = db.insert("VM", record)
        db.set(vm, "parent", .string(snap))
        db.addToSet(vm, "snapshots", snap)
        for vbd in source["VBDs"]?.stringArray ?? [] {
            guard let vbdRec = db.get(vbd, "VBD") else { continue }
            var newVDI = Templates.null
            let vdi = vbdRec["VDI"]?.stringValue ?? "OpaqueRef:NULL"
            if vbdRec["type"]?.stringValue == "CD" {
                newVDI = .string(vdi)
            } else if db.get(vdi, "VDI") != nil {
                if ignore.contains(vdi) { continue }
                newVDI = .string(try snapshotVDI(c, vdi))
            }
            var r = Templates.vbd(vm: snap, vdi: newVDI.stringValue!, userdevice: vbdRec["userdevice"]?.stringValue ?? "0",
                                  type: vbdRec["type"]?.stringValue ?? "Disk", mode: vbdRec["mode"]?.stringValue ?? "RW",
                                  bootable: vbdRec["bootable"]?.boolValue ?? false)
            r["device"] = vbdRec["device"] ?? ""
            r["other_config"] = .map(["owner": ""])
            let newVBD = db.insert("VBD", r)
            db.addToSet(snap, "VBDs", newVBD)
            if let v = newVDI.stringValue, db.get(v, "VDI") != nil { db.addToSet(v, "VBDs", newVBD) }
        }
        for vif in source["VIFs"]?.stringArray ?? [] {
            guard let v = db.get(vif, "VIF") else { continue }
            let copy = db.insert("VIF", Templates.vif(vm: snap, network: v["network"]?.stringValue ?? "", device: v["device"]?.stringValue ?? "0",
                                                      mac: v["MAC"]?.stringValue ?? ""))
            db.addToSet(snap, "VIFs", copy)
            if let net = v["network"]?.stringValue { db.addToSet(net, "VIFs", copy) }
        }
        refreshAllowedOperations(snap)
        return snap
    }

    /// A VM_metrics object of its own for a copy of a VM (snapshot, clone): xapi never shares one.
    /// Lock held.
    func copyMetrics(of source: [String: XenValue]) -> String {
        var m = (source["metrics"]?.stringValue).flatMap { db.get($0, "VM_metrics") } ?? Templates.vmMetrics()
        m["uuid"] = nil
        return db.insert("VM_metrics", m)
    }

    func destroyVM(_ c: SimCall, _ vm: String) throws {
        try checkOperation(c, vm, "destroy", allowed: ["Halted", "Suspended"])
        let f = db.get(vm, "VM")!
        // A destroyed appliance's DHCP leases go back to the pool (its VIFs and their MACs go).
        if isAppliance(vm) { releaseLeases(vm) }
        for vbd in f["VBDs"]?.stringArray ?? [] {
            if let vdi = db.field(vbd, "VDI")?.stringValue { db.removeFromSet(vdi, "VBDs", vbd) }
            db.remove(vbd)
        }
        for vif in f["VIFs"]?.stringArray ?? [] {
            if let net = db.field(vif, "network")?.stringValue { db.removeFromSet(net, "VIFs", vif) }
            db.remove(vif)
        }
        if let of = f["snapshot_of"]?.stringValue, db.get(of) != nil { db.removeFromSet(of, "snapshots", vm) }
        if let m = f["metrics"]?.stringValue, db.get(m, "VM_metrics") != nil { db.remove(m) }
        deleteGuestMetrics(vm)
        if isAppliance(vm) {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent("appliances/\(f["uuid"]?.stringValue ?? "-")"))
        }
        db.remove(vm)
    }

    func cloneVM(_ c: SimCall, _ vm: String, name: String, sr: String?) throws -> String {
        let source = db.get(vm, "VM")!
        let isSnapshot = source["is_a_snapshot"]?.boolValue == true
        try checkOperation(c, vm, sr == nil ? "clone" : "copy", allowed: isSnapshot ? ["Halted", "Suspended"] : ["Halted"])
        var record = source
        record["uuid"] = nil
        record["__snapshot_metadata"] = nil
        record["metrics"] = .string(copyMetrics(of: source))
        record["name_label"] = .string(name)
        record["is_a_snapshot"] = false
        record["snapshot_of"] = Templates.null
        record["snapshots"] = []
        record["snapshot_time"] = Templates.epoch
        record["ha_always_run"] = false
        record["snapshot_info"] = [:]
        record["VBDs"] = []
        record["VIFs"] = []
        record["parent"] = Templates.null
        record["children"] = []
        if isSnapshot { record["is_a_template"] = true }
        let copy = db.insert("VM", record)
        var rng = SplitMix64(state: UInt64.random(in: 1...UInt64.max))
        for vbd in source["VBDs"]?.stringArray ?? [] {
            guard let v = db.get(vbd, "VBD") else { continue }
            var newVDI = v["VDI"]?.stringValue ?? "OpaqueRef:NULL"
            if v["type"]?.stringValue != "CD", db.get(newVDI, "VDI") != nil { newVDI = try cloneVDI(c, newVDI, sr: sr) }
            let r = Templates.vbd(vm: copy, vdi: newVDI, userdevice: v["userdevice"]?.stringValue ?? "0", type: v["type"]?.stringValue ?? "Disk",
                                  mode: v["mode"]?.stringValue ?? "RW", bootable: v["bootable"]?.boolValue ?? false)
            let nv = db.insert("VBD", r)
            db.addToSet(copy, "VBDs", nv)
            if db.get(newVDI, "VDI") != nil { db.addToSet(newVDI, "VBDs", nv) }
        }
        for vif in source["VIFs"]?.stringArray ?? [] {
            guard let v = db.get(vif, "VIF") else { continue }
            let nv = db.insert("VIF", Templates.vif(vm: copy, network: v["network"]?.stringValue ?? "", device: v["device"]?.stringValue ?? "0",
                                                    mac: Templates.macAddress(&rng)))
            db.addToSet(copy, "VIFs", nv)
            if let net = v["network"]?.stringValue { db.addToSet(net, "VIFs", nv) }
        }
        refreshAllowedOperations(copy)
        return copy
    }

    func changePower(_ c: SimCall, _ vm: String, op: String) throws {
        switch op {
        case "start", "start_on":
            try checkOperation(c, vm, op, allowed: ["Halted"])
            try validateBootParameters(c, vm)
            // xapi drops the guest metrics at start (a clone's would be wrong); the guest agent
            // reports fresh ones.
            deleteGuestMetrics(vm)
            powerOn(vm)
            startAppliance(vm)
        case "clean_shutdown":
            try checkOperation(c, vm, "clean_shutdown", allowed: ["Running"])
            powerOff(vm)
            stopAppliance(vm)
        default:
            try checkOperation(c, vm, "hard_shutdown", allowed: ["Running", "Paused", "Suspended"])
            powerOff(vm)
            stopAppliance(vm)
        }
        refreshAllowedOperations(vm)
    }

    /// Constructor fields without a default, in the data model's order: xapi looks each up in
    /// the record as it unmarshals it, and the first one missing fails the call.
    static let requiredCreateFields: [String: [String]] = [
        "VM": ["user_version", "is_a_template", "affinity", "memory_static_max", "memory_dynamic_max", "memory_dynamic_min",
               "memory_static_min", "VCPUs_params", "VCPUs_max", "VCPUs_at_startup", "actions_after_shutdown",
               "actions_after_reboot", "actions_after_crash", "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args",
               "PV_bootloader_args", "PV_legacy_args", "HVM_boot_policy", "HVM_boot_params", "platform", "PCI_bus",
               "other_config", "recommendations"],
        "VDI": ["SR", "virtual_size", "type", "sharable", "read_only", "other_config"],
        "VBD": ["VM", "VDI", "userdevice", "bootable", "mode", "type", "empty", "other_config", "qos_algorithm_type",
                "qos_algorithm_params"],
        "VIF": ["device", "network", "VM", "MAC", "MTU", "other_config", "qos_algorithm_type", "qos_algorithm_params"],
    ]

    /// The record argument of `<cls>.create` as the wire gave it, checked for the required fields:
    /// xapi's server raises `Dispatcher_FieldNotFound` for a missing one, which its exception
    /// mapper turns into INTERNAL_ERROR with the printed exception (server_helpers.ml, exnHelper.ml).
    func constructorRecord(_ c: SimCall, _ cls: String) throws -> [String: XenValue] {
        guard let r = c.params.first?.structValue else { throw c.fail(XenAPIError.Code.internalError, "Failure(\"bad __structure\")") }
        for field in Self.requiredCreateFields[cls] ?? [] where r[field] == nil {
            throw c.fail(XenAPIError.Code.internalError, "Server_helpers.Dispatcher_FieldNotFound(\"\(field)\")")
        }
        return r
    }

    /// VM.create: a new halted VM from a record (xapi_vm.ml `create`). As in xapi,
    /// blocked_operations, bios_strings and the protection fields of the record are ignored (set
    /// blocked_operations afterwards), a `mac_seed` is added to other_config, a VM_metrics object
    /// is made, domain_type follows HVM_boot_policy when unspecified, and the values are only
    /// validated when the VM starts.
    func createVM(_ c: SimCall, _ r: [String: XenValue]) throws -> String {
        var record = Templates.vm(name: r["name_label"]?.stringValue ?? "", memory: r["memory_static_max"]?.intValue ?? 1 << 30)
        let settable = ["name_label", "name_description", "user_version", "is_a_template", "affinity", "memory_static_max",
                        "memory_dynamic_max", "memory_dynamic_min", "memory_static_min", "memory_target", "VCPUs_params", "VCPUs_max",
                        "VCPUs_at_startup", "actions_after_softreboot", "actions_after_shutdown", "actions_after_reboot",
                        "actions_after_crash", "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args", "PV_bootloader_args",
                        "PV_legacy_args", "HVM_boot_policy", "HVM_boot_params", "HVM_shadow_multiplier", "platform", "PCI_bus",
                        "other_config", "recommendations", "xenstore_data", "ha_always_run", "ha_restart_priority", "tags",
                        "appliance", "start_delay", "shutdown_delay", "order", "suspend_SR", "generation_id",
                        "hardware_platform_version", "has_vendor_device", "reference_label", "NVRAM"]
        for key in settable { if let v = r[key] { record[key] = v } }
        if r["memory_target"] == nil { record["memory_target"] = record["memory_dynamic_max"] }
        var other = record["other_config"]?.structValue ?? [:]
        if other["mac_seed"] == nil { other["mac_seed"] = .string(Database.newUUID()) }
        record["other_config"] = .structure(other)
        let domainType = r["domain_type"]?.stringValue ?? "unspecified"
        if domainType == "unspecified" {
            record["domain_type"] = (record["HVM_boot_policy"]?.stringValue ?? "").isEmpty ? "pv" : "hvm"
        } else {
            record["domain_type"] = .string(domainType)
        }
        record["metrics"] = .string(db.insert("VM_metrics", Templates.vmMetrics()))
        let vm = db.insert("VM", record)
        refreshAllowedOperations(vm)
        return vm
    }

    /// The checks xapi makes on a VM's settings when it starts (xapi_vm_helpers.ml
    /// `validate_basic_parameters`): vCPU counts, then memory ranges that cannot be coerced.
    func validateBootParameters(_ c: SimCall, _ vm: String) throws {
        let f = db.get(vm, "VM")!
        let vcpusMax = f["VCPUs_max"]?.intValue ?? 1
        let vcpusStart = f["VCPUs_at_startup"]?.intValue ?? 1
        if vcpusMax < 1 { throw c.fail(XenAPIError.Code.invalidValue, "VCPUs_max", String(vcpusMax)) }
        if vcpusStart < 1 { throw c.fail(XenAPIError.Code.invalidValue, "VCPUs-at-startup", String(vcpusStart)) }
        if vcpusStart > vcpusMax {
            throw c.fail("VALUE_NOT_SUPPORTED", "VCPUs-at-startup", String(vcpusStart), "value greater than VCPUs-max")
        }
        let staticMin = f["memory_static_min"]?.intValue ?? 0
        let staticMax = f["memory_static_max"]?.intValue ?? 0
        let dynamicMin = f["memory_dynamic_min"]?.intValue ?? 0
        let dynamicMax = f["memory_dynamic_max"]?.intValue ?? 0
        if staticMax < staticMin || dynamicMax < dynamicMin { throw c.fail("MEMORY_CONSTRAINT_VIOLATION") }
    }

    /// VM.set_ha_restart_priority: "", "restart" or "best-effort" (xapi_vm_helpers.ml
    /// `validate_restart_priority`); with HA off nothing else is checked. As xapi (xapi_vm.ml): on a
    /// running VM ha_always_run follows (true for "restart"); a halted VM's is left as it is.
    func setHARestartPriority(_ c: SimCall, _ vm: String, _ value: String) throws {
        guard ["", "restart", "best-effort"].contains(value) else { throw c.fail(XenAPIError.Code.invalidValue, "ha_restart_priority", value) }
        db.set(vm, "ha_restart_priority", .string(value))
        if db.field(vm, "power_state")?.stringValue == "Running" { db.set(vm, "ha_always_run", .bool(value == "restart")) }
    }

    // MARK: revert

    /// Fields of a VM that a revert leaves as they are (xapi_vm_snapshot.ml `do_not_copy`): identity,
    /// runtime state, devices (rebuilt from the snapshot's), the snapshot tree, tags and affinity.
    static let revertKeeps: Set<String> = [
        "uuid", "suspend_VDI", "power_state", "parent", "current_operations", "allowed_operations", "metrics", "guest_metrics",
        "resident_on", "domid", "protection_policy", "snapshot_schedule", "scheduled_to_be_resident_on", "snapshots", "tags",
        "affinity", "groups", "consoles", "VBDs", "VIFs", "VGPUs", "VUSBs", "VTPMs", "attached_PCIs", "is_snapshot_from_vmpp",
    ]

    /// VM.revert(snapshot), as xapi does it on SRs without VDI.revert (every SMAPIv1 SR): the VM's
    /// disks that the snapshot holds a copy of are destroyed, the snapshot's disks are cloned
    /// (new VDIs, new uuids, CBT off: SM does not carry the log over to a clone) and attached in
    /// their place, older snapshots of the old disks are re-pointed at the clones, disks the
    /// snapshot lacks are detached but kept, VIFs are copied from the snapshot with their MACs,
    /// and the VM's settings return to those recorded at snapshot time (blocked_operations and
    /// other_config included). The VM ends in the snapshot's power state.
    func revertVM(_ c: SimCall, snapshot: String) throws {
        let snap = db.get(snapshot, "VM")!
        // Revert is allowed in every power state; the lifecycle checks (blocked, template) come
        // before the "snapshots only" one.
        try checkOperation(c, snapshot, "revert", allowed: ["Halted", "Running", "Paused", "Suspended"])
        // api_errors.ml `only_revert_snapshot`, without parameters.
        guard snap["is_a_snapshot"]?.boolValue == true else { throw c.fail("REVERT_ONLY_ALLOWED_ON_SNAPSHOT") }
        guard let vm = snap["snapshot_of"]?.stringValue, db.get(vm, "VM") != nil else {
            // xapi would first recreate the VM from the snapshot's metadata; the simulator does not.
            throw c.fail("VM_REVERT_FAILED", snapshot, snap["snapshot_of"]?.stringValue ?? "OpaqueRef:NULL")
        }
        try checkOperation(c, vm, "reverting", allowed: ["Halted", "Running", "Paused", "Suspended"])
        // The old disks cannot be destroyed while attached: xapi fails the revert then.
        if db.field(vm, "power_state")?.stringValue != "Halted" { throw c.fail("VM_REVERT_FAILED", snapshot, vm) }

        func vbds(_ of: String, disks: Bool) -> [String] {
            (db.field(of, "VBDs")?.stringArray ?? []).filter { (db.field($0, "type")?.stringValue == "Disk") == disks }
        }
        let snapDiskVBDs = vbds(snapshot, disks: true)
        let snapDisks = snapDiskVBDs.compactMap { db.field($0, "VDI")?.stringValue }.filter { db.get($0, "VDI") != nil }
        let snapshotOf = Set(snapDisks.compactMap { db.field($0, "snapshot_of")?.stringValue })
        for vdi in snapDisks {
            if let sr = db.field(vdi, "SR")?.stringValue { try checkSRSpace(c, sr: sr, adding: db.field(vdi, "virtual_size")?.intValue ?? 0) }
        }
        // Old devices out: every VBD goes; disks the snapshot has a copy of are destroyed.
        for vbd in db.field(vm, "VBDs")?.stringArray ?? [] {
            let vdi = db.field(vbd, "VDI")?.stringValue ?? ""
            try destroyVBD(c, vbd)
            if db.field(vbd, "type")?.stringValue != "CD", snapshotOf.contains(vdi), db.get(vdi, "VDI") != nil {
                try destroyVDI(c, vdi)
            }
        }
        // New disks: clones of the snapshot's, in the old disks' place in the snapshot tree.
        for vbd in snapDiskVBDs + vbds(snapshot, disks: false) {
            guard let v = db.get(vbd, "VBD") else { continue }
            var vdi = v["VDI"]?.stringValue ?? "OpaqueRef:NULL"
            if v["type"]?.stringValue == "Disk", db.get(vdi, "VDI") != nil {
                let previous = db.field(vdi, "snapshot_of")?.stringValue ?? "OpaqueRef:NULL"
                let clone = try cloneVDI(c, vdi, sr: nil)
                for other in db.find("VDI", where: { $0["snapshot_of"]?.stringValue == previous }) where previous != "OpaqueRef:NULL" {
                    db.set(other, "snapshot_of", .string(clone))
                    db.addToSet(clone, "snapshots", other)
                }
                vdi = clone
            }
            var r = Templates.vbd(vm: vm, vdi: vdi, userdevice: v["userdevice"]?.stringValue ?? "0", type: v["type"]?.stringValue ?? "Disk",
                                  mode: v["mode"]?.stringValue ?? "RW", bootable: v["bootable"]?.boolValue ?? false)
            r["other_config"] = v["other_config"] ?? [:]
            r["unpluggable"] = v["unpluggable"] ?? true
            let nv = db.insert("VBD", r)
            db.addToSet(vm, "VBDs", nv)
            if db.get(vdi, "VDI") != nil { db.addToSet(vdi, "VBDs", nv) }
        }
        for vif in db.field(vm, "VIFs")?.stringArray ?? [] {
            if let net = db.field(vif, "network")?.stringValue { db.removeFromSet(net, "VIFs", vif) }
            db.remove(vif)
        }
        db.set(vm, "VIFs", [])
        for vif in snap["VIFs"]?.stringArray ?? [] {
            guard var r = db.get(vif, "VIF") else { continue }
            r["uuid"] = nil
            r["VM"] = .string(vm)
            r["currently_attached"] = false
            let nv = db.insert("VIF", r)
            db.addToSet(vm, "VIFs", nv)
            if let net = r["network"]?.stringValue { db.addToSet(net, "VIFs", nv) }
        }
        // Settings as they were when the snapshot was taken.
        if case .structure(let metadata)? = snap["__snapshot_metadata"] {
            db.update(vm) { f in
                for (k, v) in metadata where !Self.revertKeeps.contains(k) { f[k] = v }
            }
        }
        if let old = db.field(vm, "metrics")?.stringValue, db.get(old, "VM_metrics") != nil { db.remove(old) }
        var metrics = (snap["metrics"]?.stringValue).flatMap { db.get($0, "VM_metrics") } ?? Templates.vmMetrics()
        metrics["uuid"] = nil
        db.set(vm, "metrics", .string(db.insert("VM_metrics", metrics)))
        db.set(vm, "parent", .string(snapshot))
        db.update(vm) { f in
            f["power_state"] = snap["power_state"] ?? "Halted"
            f["ha_always_run"] = false
        }
        refreshAllowedOperations(vm)
    }

    // MARK: VIF

    func createVIF(_ c: SimCall, _ r: [String: XenValue]) throws -> String {
        guard let vm = r["VM"]?.stringValue, db.get(vm, "VM") != nil else {
            throw c.fail(XenAPIError.Code.handleInvalid, "VM", r["VM"]?.stringValue ?? "")
        }
        guard let net = r["network"]?.stringValue, db.get(net, "network") != nil else {
            throw c.fail(XenAPIError.Code.handleInvalid, "network", r["network"]?.stringValue ?? "")
        }
        let device = r["device"]?.stringValue ?? "0"
        // xapi_vif_helpers.ml: one VIF per device number on a VM.
        if (db.field(vm, "VIFs")?.stringArray ?? []).contains(where: { db.field($0, "device")?.stringValue == device }) {
            throw c.fail("DEVICE_ALREADY_EXISTS", device)
        }
        var rng = SplitMix64(state: UInt64.random(in: 1...UInt64.max))
        let mac = r["MAC"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 } ?? Templates.macAddress(&rng)
        var record = Templates.vif(vm: vm, network: net, device: device, mac: mac)
        record["MAC_autogenerated"] = .bool(r["MAC"]?.stringValue?.isEmpty ?? true)
        for key in ["other_config", "MTU", "qos_algorithm_type", "qos_algorithm_params", "locking_mode", "ipv4_allowed", "ipv6_allowed"] {
            if let v = r[key] { record[key] = v }
        }
        let vif = db.insert("VIF", record)
        db.addToSet(vm, "VIFs", vif)
        db.addToSet(net, "VIFs", vif)
        return vif
    }

    // MARK: network

    func changePurpose(_ c: SimCall, _ net: String, _ purpose: String, add: Bool) throws {
        guard ["nbd", "insecure_nbd"].contains(purpose) else { throw c.fail(XenAPIError.Code.invalidValue, "purpose", purpose) }
        if add {
            let other = purpose == "nbd" ? "insecure_nbd" : "nbd"
            if db.refs("network").contains(where: { db.field($0, "purpose")?.stringArray.contains(other) == true }) {
                throw c.fail(XenAPIError.Code.networkIncompatiblePurposes, purpose, other)
            }
            db.addToSet(net, "purpose", purpose)
        } else {
            db.removeFromSet(net, "purpose", purpose)
        }
        // The NBD daemons pick their TLS mode from the purposes; restart them outside the lock,
        // on the supervisor's long-lived thread (see NBDSupervisor for why it matters).
        let pool = self
        nbdSupervisor.submit { try? pool.reconfigureNBD() }
    }
}

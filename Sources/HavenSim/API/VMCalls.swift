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
        record["name_label"] = .string(name)
        record["is_a_snapshot"] = true
        record["is_a_template"] = true
        record["snapshot_of"] = .string(vm)
        record["snapshots"] = []
        record["snapshot_time"] = Templates.now()
        record["snapshot_info"] = .map(["disk-snapshot-type": "crash_consistent", "power-state-at-snapshot": source["power_state"]?.stringValue ?? "Halted"])
        record["power_state"] = "Halted"
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

    func destroyVM(_ c: SimCall, _ vm: String) throws {
        try checkOperation(c, vm, "destroy", allowed: ["Halted", "Suspended"])
        let f = db.get(vm, "VM")!
        for vbd in f["VBDs"]?.stringArray ?? [] {
            if let vdi = db.field(vbd, "VDI")?.stringValue { db.removeFromSet(vdi, "VBDs", vbd) }
            db.remove(vbd)
        }
        for vif in f["VIFs"]?.stringArray ?? [] {
            if let net = db.field(vif, "network")?.stringValue { db.removeFromSet(net, "VIFs", vif) }
            db.remove(vif)
        }
        if let of = f["snapshot_of"]?.stringValue, db.get(of) != nil { db.removeFromSet(of, "snapshots", vm) }
        db.remove(vm)
    }

    func cloneVM(_ c: SimCall, _ vm: String, name: String, sr: String?) throws -> String {
        let source = db.get(vm, "VM")!
        let isSnapshot = source["is_a_snapshot"]?.boolValue == true
        try checkOperation(c, vm, sr == nil ? "clone" : "copy", allowed: isSnapshot ? ["Halted", "Suspended"] : ["Halted"])
        var record = source
        record["uuid"] = nil
        record["name_label"] = .string(name)
        record["is_a_snapshot"] = false
        record["snapshot_of"] = Templates.null
        record["snapshots"] = []
        record["snapshot_time"] = Templates.epoch
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
        case "start":
            try checkOperation(c, vm, "start", allowed: ["Halted"])
            powerOn(vm)
        case "clean_shutdown":
            try checkOperation(c, vm, "clean_shutdown", allowed: ["Running"])
            powerOff(vm)
        default:
            try checkOperation(c, vm, "hard_shutdown", allowed: ["Running", "Paused", "Suspended"])
            powerOff(vm)
        }
        refreshAllowedOperations(vm)
    }

    /// VM.create: a new halted VM from a record; fields not given take xapi's defaults.
    func createVM(_ c: SimCall, _ r: [String: XenValue]) throws -> String {
        guard let name = r["name_label"]?.stringValue else { throw c.fail(XenAPIError.Code.invalidValue, "name_label", "") }
        var record = Templates.vm(name: name, memory: r["memory_static_max"]?.intValue ?? 1 << 30)
        let settable = ["name_description", "memory_static_max", "memory_static_min", "memory_dynamic_max", "memory_dynamic_min",
                        "memory_target", "VCPUs_max", "VCPUs_at_startup", "VCPUs_params", "actions_after_shutdown",
                        "actions_after_reboot", "actions_after_crash", "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args",
                        "HVM_boot_policy", "HVM_boot_params", "platform", "other_config", "tags", "blocked_operations",
                        "xenstore_data", "domain_type", "bios_strings", "is_a_template", "user_version"]
        for key in settable { if let v = r[key] { record[key] = v } }
        let vm = db.insert("VM", record)
        refreshAllowedOperations(vm)
        return vm
    }

    // MARK: VIF

    func createVIF(_ c: SimCall, _ r: [String: XenValue]) throws -> String {
        guard let vm = r["VM"]?.stringValue, db.get(vm, "VM") != nil else {
            throw c.fail(XenAPIError.Code.handleInvalid, "VM", r["VM"]?.stringValue ?? "")
        }
        guard let net = r["network"]?.stringValue, db.get(net, "network") != nil else {
            throw c.fail(XenAPIError.Code.handleInvalid, "network", r["network"]?.stringValue ?? "")
        }
        var rng = SplitMix64(state: UInt64.random(in: 1...UInt64.max))
        let mac = r["MAC"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 } ?? Templates.macAddress(&rng)
        var record = Templates.vif(vm: vm, network: net, device: r["device"]?.stringValue ?? "0", mac: mac)
        record["MAC_autogenerated"] = .bool(r["MAC"]?.stringValue?.isEmpty ?? true)
        record["other_config"] = r["other_config"] ?? [:]
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

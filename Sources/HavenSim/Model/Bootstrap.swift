import DiskFormats
import Foundation
import XenAPI

extension SimPool {
    /// Creates the pool's objects from the world file (first start only; later starts load db.json).
    func bootstrap() throws {
        // Seeded from the pool's name (not String.hashValue, which changes every run), so a world file
        // gives the same MACs on every machine.
        let name = Array(spec.name.utf8)
        var rng = SplitMix64(state: name.withUnsafeBytes { XXHash64.hash($0) } | 1)
        let cbtLicensed = spec.licence?.cbt ?? true
        try db.withLock {
            // Hosts and their control domains.
            for h in hosts {
                db.insert(
                    "host",
                    [
                        "name_label": .string(h.name), "name_description": "", "hostname": .string(h.name),
                        "address": .string(h.address), "API_version_major": .int(apiMajor),
                        "API_version_minor": .int(apiMinor), "API_version_vendor": "XenSource",
                        "software_version": .map([
                            "product_brand": "XCP-ng", "product_version": "8.3.0", "platform_name": "XCP",
                            "platform_version": "3.4.0", "xapi": "\(apiMajor == 2 && apiMinor >= 21 ? "24.39" : "1.249")",
                            "hostname": h.name, "build_number": "haven-sim",
                        ]),
                        "license_params": .map(["restrict_cbt": cbtLicensed ? "false" : "true"]),
                        "edition": cbtLicensed ? "xcp-ng" : "free", "enabled": true, "PBDs": [], "PIFs": [],
                        "resident_VMs": [], "other_config": [:], "tags": [], "cpu_info": ["cpu_count": "2"],
                        "uuid": .string(Database.newUUID()),
                    ], ref: h.ref)
                var dom0 = Templates.vm(name: "Control domain on host: \(h.name)", power: "Running", memory: 1 << 30)
                dom0["is_control_domain"] = true
                dom0["resident_on"] = .string(h.ref)
                dom0["domid"] = 0
                dom0["metrics"] = .string(db.insert("VM_metrics", Templates.vmMetrics()))
                let dom0Ref = db.insert("VM", dom0)
                db.addToSet(h.ref, "resident_VMs", dom0Ref)
            }
            // Storage: SRs, their SM drivers, and PBDs (shared SRs on every host, local ones on the first).
            var srByName: [String: String] = [:]
            var defaultSR = Templates.null
            for (i, s) in (spec.srs ?? [World.SRSpec(name: "Local storage", type: "ext", size: "64Gi", shared: false)]).enumerated() {
                let type = s.type ?? "ext"
                let size = try World.bytes(s.size ?? "64Gi")
                let sr = db.insert(
                    "SR",
                    [
                        "name_label": .string(s.name), "name_description": "", "type": .string(type),
                        "content_type": type == "iso" ? "iso" : "user", "shared": .bool(s.shared ?? false), "PBDs": [],
                        "VDIs": [], "physical_size": .int(size), "physical_utilisation": 0, "virtual_allocation": 0,
                        "other_config": [:], "sm_config": [:], "allowed_operations": [], "current_operations": [:],
                        "tags": [],
                    ])
                srByName[s.name] = sr
                if s.default == true || i == 0 { defaultSR = .string(sr) }
                if db.find("SM", where: { $0["type"]?.stringValue == type }).isEmpty {
                    var features: [String: XenValue] = ["VDI_CREATE": 1, "VDI_DELETE": 1, "VDI_SNAPSHOT": 1, "VDI_CLONE": 1]
                    if ["ext", "nfs", "lvm", "lvmoiscsi", "lvmohba", "smb", "file"].contains(type) { features["VDI_CONFIG_CBT"] = 1 }
                    db.insert("SM", ["type": .string(type), "name_label": .string(type), "features": .structure(features),
                                     "capabilities": [], "other_config": [:]])
                }
                for h in (s.shared ?? false) ? hosts : [hosts[0]] {
                    let pbd = db.insert("PBD", ["host": .string(h.ref), "SR": .string(sr), "device_config": [:],
                                                "currently_attached": true, "other_config": [:]])
                    db.addToSet(sr, "PBDs", pbd)
                    db.addToSet(h.ref, "PBDs", pbd)
                }
            }
            db.insert("pool", [
                "name_label": .string(spec.name), "name_description": "", "master": .string(hosts[0].ref),
                "default_SR": defaultSR, "suspend_image_SR": defaultSR, "crash_dump_SR": defaultSR,
                "restrictions": .map(["restrict_cbt": cbtLicensed ? "false" : "true", "restrict_checkpoint": "false"]),
                "other_config": [:], "tags": [], "ha_enabled": false,
            ])
            // Networks with a PIF per host carrying the host's address.
            var netByName: [String: String] = [:]
            let nets = spec.networks ?? [World.NetworkSpec(name: "Pool-wide network associated with eth0", purpose: nil, bridge: nil)]
            for (i, n) in nets.enumerated() {
                let net = db.insert("network", [
                    "name_label": .string(n.name), "name_description": "", "bridge": .string(n.bridge ?? "xenbr\(i)"),
                    "MTU": 1500, "PIFs": [], "VIFs": [], "other_config": [:], "managed": true, "tags": [],
                    "purpose": .strings(n.purpose ?? []), "allowed_operations": [], "current_operations": [:],
                ])
                netByName[n.name] = net
                if let dhcp = n.dhcp {
                    _ = try DHCPRange(dhcp, network: n.name)
                    db.set(net, "__dhcp_range", .string(dhcp))
                }
                for h in hosts {
                    let pif = db.insert("PIF", [
                        "device": .string("eth\(i)"), "network": .string(net), "host": .string(h.ref),
                        "IP": .string(i == 0 ? h.address : ""), "netmask": "255.0.0.0", "gateway": "",
                        "ip_configuration_mode": i == 0 ? "Static" : "None", "currently_attached": true,
                        "management": .bool(i == 0), "MAC": .string(Templates.macAddress(&rng)), "MTU": 1500,
                        "other_config": [:], "IPv6": [], "primary_address_type": "IPv4",
                    ])
                    db.addToSet(net, "PIFs", pif)
                    db.addToSet(h.ref, "PIFs", pif)
                }
            }
            // Templates, then VMs.
            for t in spec.templates ?? [] {
                try createVM(t, template: true, srByName: srByName, netByName: netByName, defaultSR: defaultSR.stringValue!, rng: &rng)
            }
            for v in spec.vms ?? [] {
                try createVM(v, template: false, srByName: srByName, netByName: netByName, defaultSR: defaultSR.stringValue!, rng: &rng)
            }
        }
        flush()
    }

    /// Call with the lock held.
    private func createVM(
        _ v: World.VMSpec, template: Bool, srByName: [String: String], netByName: [String: String], defaultSR: String,
        rng: inout SplitMix64
    ) throws {
        let memory = try v.memory.map(World.bytes) ?? (template ? 128 << 20 : 1 << 30)
        var record = Templates.vm(name: v.name, power: template ? "Halted" : (v.power ?? "Halted"), template: template, memory: memory)
        record["tags"] = .strings(v.tags ?? [])
        record["other_config"] = .map(v.otherConfig ?? [:])
        record["metrics"] = .string(db.insert("VM_metrics", Templates.vmMetrics()))
        if v.appliance == true { record["__appliance"] = true }
        let vm = db.insert("VM", record)
        for (n, d) in (v.disks ?? []).enumerated() {
            var sr = defaultSR
            if let name = d.sr {
                guard let named = srByName[name] else {
                    throw SimError("VM \(v.name): disk \(n) names SR '\(name)', which the world does not declare")
                }
                sr = named
            }
            let size = try World.bytes(d.size)
            let vdi = db.insert("VDI", Templates.vdi(name: d.name ?? "\(v.name) disk \(n)", sr: sr, size: size))
            let uuid = db.field(vdi, "uuid")!.stringValue!
            db.set(vdi, "location", .string(uuid))
            try disks.create(uuid: uuid, size: size)
            if let fill = d.fill { try BlockPatterns.fill(store: disks, uuid: uuid, size: size, spec: fill) }
            db.set(vdi, "physical_utilisation", .int(disks.allocated(uuid)))
            db.addToSet(sr, "VDIs", vdi)
            let vbd = db.insert("VBD", Templates.vbd(vm: vm, vdi: vdi, userdevice: String(n), bootable: n == 0))
            db.addToSet(vm, "VBDs", vbd)
            db.addToSet(vdi, "VBDs", vbd)
        }
        for (n, netName) in (v.networks ?? Array(netByName.keys.sorted().prefix(1))).enumerated() {
            guard let net = netByName[netName] else { throw SimError("VM \(v.name): unknown network '\(netName)'") }
            let vif = db.insert("VIF", Templates.vif(vm: vm, network: net, device: String(n), mac: Templates.macAddress(&rng)))
            db.addToSet(vm, "VIFs", vif)
            db.addToSet(net, "VIFs", vif)
        }
        if v.power == "Running", !template { powerOn(vm) }
        refreshAllowedOperations(vm)
    }

    /// Marks a VM running on the master and its devices attached. Lock held.
    func powerOn(_ vm: String) {
        let master = db.refs("pool").first.flatMap { db.field($0, "master")?.stringValue } ?? hosts[0].ref
        db.update(vm) { f in
            f["power_state"] = "Running"
            f["resident_on"] = .string(master)
            f["domid"] = .int(Int64.random(in: 1...999))
        }
        db.addToSet(master, "resident_VMs", vm)
        // What a guard reads to tell that a VM was booted: VM_metrics.start_time (xapi stamps it
        // from xenopsd's last_start_time, whole seconds).
        var metrics = db.field(vm, "metrics")?.stringValue ?? ""
        if db.get(metrics, "VM_metrics") == nil {
            metrics = db.insert("VM_metrics", Templates.vmMetrics())
            db.set(vm, "metrics", .string(metrics))
        }
        let vcpus = db.field(vm, "VCPUs_at_startup") ?? 1
        let memory = db.field(vm, "memory_dynamic_max") ?? 0
        let hvm = !(db.field(vm, "HVM_boot_policy")?.stringValue ?? "").isEmpty
        db.update(metrics) { m in
            m["start_time"] = Templates.now()
            m["last_updated"] = Templates.now()
            m["VCPUs_number"] = vcpus
            m["memory_actual"] = memory
            m["state"] = ["running"]
            m["hvm"] = .bool(hvm)
            m["current_domain_type"] = hvm ? "hvm" : "pv"
        }
        for (i, vbd) in (db.field(vm, "VBDs")?.stringArray ?? []).enumerated() {
            db.update(vbd) { f in
                f["currently_attached"] = true
                f["device"] = .string("xvd" + String(UnicodeScalar(UInt8(97 + (Int(f["userdevice"]?.stringValue ?? "") ?? i) % 26))))
            }
        }
        for vif in db.field(vm, "VIFs")?.stringArray ?? [] { db.set(vif, "currently_attached", true) }
    }

    /// Lock held.
    func powerOff(_ vm: String) {
        if let host = db.field(vm, "resident_on")?.stringValue { db.removeFromSet(host, "resident_VMs", vm) }
        db.update(vm) { f in
            f["power_state"] = "Halted"
            f["resident_on"] = Templates.null
            f["domid"] = -1
        }
        for vbd in db.field(vm, "VBDs")?.stringArray ?? [] { db.set(vbd, "currently_attached", false) }
        for vif in db.field(vm, "VIFs")?.stringArray ?? [] { db.set(vif, "currently_attached", false) }
        if let metrics = db.field(vm, "metrics")?.stringValue, db.get(metrics, "VM_metrics") != nil {
            db.update(metrics) { m in
                m["state"] = []
                m["VCPUs_number"] = 0
                m["memory_actual"] = 0
                m["last_updated"] = Templates.now()
            }
        }
    }

    /// allowed_operations as xapi computes them from the power state and the VM's kind. Lock held.
    func refreshAllowedOperations(_ vm: String) {
        guard let f = db.get(vm, "VM") else { return }
        let power = f["power_state"]?.stringValue ?? "Halted"
        var ops: [String]
        if f["is_a_snapshot"]?.boolValue == true {
            ops = ["revert", "clone", "copy", "export", "destroy", "metadata_export"]
        } else if f["is_a_template"]?.boolValue == true {
            ops = ["clone", "copy", "export", "provision", "destroy", "metadata_export"]
        } else {
            switch power {
            case "Running": ops = ["clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "snapshot", "checkpoint", "suspend", "pause", "pool_migrate"]
            case "Suspended": ops = ["resume", "hard_shutdown", "snapshot", "export", "destroy"]
            case "Paused": ops = ["unpause", "hard_shutdown", "snapshot", "checkpoint"]
            default: ops = ["start", "start_on", "clone", "copy", "snapshot", "export", "destroy", "provision", "make_into_template"]
            }
        }
        db.set(vm, "allowed_operations", .strings(ops))
    }
}

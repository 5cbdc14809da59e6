import DiskFormats
import Foundation
import XenAPI

/// XVA export and import: a ustar stream with `ova.xml` first, then each disk in 1 MiB chunks
/// `Ref:<n>/NNNNNNNN` each followed by its `.xxhash` member; all-zero chunks are left out except
/// the first and the last.
extension SimPool {
    static let xvaChunk = 1 << 20

    func exportXVA(_ req: HTTPServerRequest, _ res: HTTPServerResponse, host: SimHost) {
        guard let session = httpSession(req, host: host) else {
            res.send(401, Array("unauthorised".utf8), contentType: "text/plain")
            return
        }
        let task = httpTask(req, session: session, label: "export")
        guard let vm = resolve("VM", req.query["ref"] ?? req.query["uuid"]) else {
            finishTask(task, .failure(XenAPIError(code: XenAPIError.Code.handleInvalid, parameters: ["VM", req.query["ref"] ?? req.query["uuid"] ?? ""])))
            res.send(404, Array("no such VM".utf8), contentType: "text/plain", extra: [("task-id", task)])
            return
        }
        let power = db.withLock { db.field(vm, "power_state")?.stringValue ?? "Halted" }
        guard power == "Halted" || power == "Suspended" else {
            finishTask(task, .failure(XenAPIError(code: XenAPIError.Code.vmBadPowerState, parameters: [vm, "halted, suspended", power.lowercased()])))
            res.send(500, Array("VM_BAD_POWER_STATE".utf8), contentType: "text/plain", extra: [("task-id", task)])
            return
        }
        let (ova, disksToSend) = db.withLock { buildOVA(vm) }
        res.version = "HTTP/1.0"
        res.head(200, headers: [("task-id", task), ("Content-Type", "application/octet-stream"),
                                ("Content-Disposition", "attachment; filename=\"export.xva\"")], contentLength: nil)
        func member(_ name: String, _ bytes: UnsafeRawBufferPointer) {
            res.write(Tar.header(name: name, size: bytes.count, mtime: Int(Date().timeIntervalSince1970)))
            res.write(bytes)
            res.write([UInt8](repeating: 0, count: Tar.padding(for: bytes.count)))
        }
        ova.withUnsafeBytes { member("ova.xml", $0) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.xvaChunk, alignment: 4096)
        defer { buffer.deallocate() }
        for (id, uuid, size) in disksToSend {
            let chunks = Int((size + Int64(Self.xvaChunk) - 1) / Int64(Self.xvaChunk))
            for i in 0..<max(chunks, 1) where !res.failed {
                let offset = Int64(i) * Int64(Self.xvaChunk)
                let n = Int(max(0, min(Int64(Self.xvaChunk), size - offset)))
                let view = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                _ = disks.read(uuid, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
                if view.allZero && i != 0 && i != chunks - 1 { continue }
                let name = "\(id)/" + String(format: "%08d", i)
                member(name, view)
                let hash = Array(XXHash64.hex(view).utf8)
                hash.withUnsafeBytes { member(name + ".xxhash", $0) }
            }
        }
        res.write(Tar.end)
        finishTask(task, res.failed ? .failure(XenAPIError(code: "CLIENT_ERROR")) : .success(""))
    }

    /// ova.xml for a VM and its devices, refs rewritten to export-local ids. Lock held.
    private func buildOVA(_ vm: String) -> ([UInt8], [(String, String, Int64)]) {
        var ids: [String: String] = [:]
        func id(_ ref: String) -> String {
            if let i = ids[ref] { return i }
            let i = "Ref:\(ids.count)"
            ids[ref] = i
            return i
        }
        _ = id(vm)
        var objects: [(String, String)] = [("VM", vm)]
        var sendDisks: [(String, String, Int64)] = []
        for vbd in db.field(vm, "VBDs")?.stringArray ?? [] {
            _ = id(vbd)
            objects.append(("VBD", vbd))
            if let vdi = db.field(vbd, "VDI")?.stringValue, db.get(vdi, "VDI") != nil, db.field(vbd, "type")?.stringValue != "CD" {
                if ids[vdi] == nil {
                    objects.append(("VDI", vdi))
                    sendDisks.append((id(vdi), db.field(vdi, "uuid")?.stringValue ?? "", db.field(vdi, "virtual_size")?.intValue ?? 0))
                    if let sr = db.field(vdi, "SR")?.stringValue, ids[sr] == nil {
                        _ = id(sr)
                        objects.append(("SR", sr))
                    }
                }
            }
        }
        for vif in db.field(vm, "VIFs")?.stringArray ?? [] {
            _ = id(vif)
            objects.append(("VIF", vif))
            if let net = db.field(vif, "network")?.stringValue, ids[net] == nil {
                _ = id(net)
                objects.append(("network", net))
            }
        }
        func rewrite(_ v: XenValue) -> XenValue {
            switch v {
            case .string(let s) where s.hasPrefix("OpaqueRef:"): return .string(ids[s] ?? "OpaqueRef:NULL")
            case .array(let a): return .array(a.map(rewrite).filter { $0 != .string("OpaqueRef:NULL") })
            default: return v
            }
        }
        var list: [XenValue] = []
        for (cls, ref) in objects {
            var snap = wireRecord(ref)
            if cls == "VM" {
                // xapi's plain export (no snapshot metadata) writes the VM as a VM even when it
                // is a snapshot: is_a_snapshot false and the snapshot links cleared; is_a_template
                // is kept, which is why an exported snapshot imports as a template. Power state
                // Halted (no preserve_power_state here), no operations in progress.
                snap["is_a_snapshot"] = false
                snap["snapshot_of"] = Templates.null
                snap["snapshots"] = []
                snap["snapshot_time"] = Templates.epoch
                snap["transportable_snapshot_id"] = ""
                snap["parent"] = Templates.null
                snap["children"] = []
                snap["power_state"] = "Halted"
                snap["current_operations"] = [:]
                snap["allowed_operations"] = []
            }
            for (k, v) in snap where k != "other_config" { snap[k] = rewrite(v) }
            list.append(["class": .string(cls), "id": .string(ids[ref]!), "snapshot": .structure(snap)])
        }
        let version: XenValue = [
            "hostname": .string(hosts[0].name), "date": .string(Templates.xapiDate(Date())), "product_version": "8.3.0",
            "product_brand": "XCP-ng", "build_number": "haven-sim", "xapi_major": .int(apiMajor), "xapi_minor": .int(apiMinor),
            "export_vsn": 2,
        ]
        var out: [UInt8] = []
        XMLRPC.encode(["version": version, "objects": .array(list)], style: .server, into: &out)
        return (out, sendDisks)
    }

    func importXVA(_ req: HTTPServerRequest, _ res: HTTPServerResponse, host: SimHost) {
        guard let session = httpSession(req, host: host) else {
            res.send(401, Array("unauthorised".utf8), contentType: "text/plain")
            return
        }
        let task = httpTask(req, session: session, label: "import")
        if req.headers["transfer-encoding"] != nil {
            finishTask(task, .failure(XenAPIError(code: "IMPORT_ERROR_CANNOT_HANDLE_CHUNKED")))
            res.send(403, Array("IMPORT_ERROR_CANNOT_HANDLE_CHUNKED".utf8), contentType: "text/plain", extra: [("task-id", task)])
            res.markClose()
            return
        }
        let restore = req.query["restore"] == "true"
        let force = req.query["force"] == "true"
        let srRef: String? = resolve("SR", req.query["sr_id"] ?? req.query["sr_uuid"]) ?? db.withLock {
            db.refs("pool").first.flatMap { db.field($0, "default_SR")?.stringValue }.flatMap { db.get($0, "SR") != nil ? $0 : nil }
        }
        guard let sr = srRef else {
            finishTask(task, .failure(XenAPIError(code: "DEFAULT_SR_NOT_FOUND", parameters: [req.query["sr_id"] ?? ""])))
            res.send(500, Array("DEFAULT_SR_NOT_FOUND".utf8), contentType: "text/plain", extra: [("task-id", task)])
            return
        }
        do {
            let vms = try readXVA(req, sr: sr, session: session, host: host, restore: restore, force: force)
            finishTask(task, .success(.strings(vms)))
            res.send(200, [], contentType: "text/plain", extra: [("task-id", task)])
        } catch let e as XenAPIError {
            finishTask(task, .failure(e))
            res.send(500, Array(e.description.utf8), contentType: "text/plain", extra: [("task-id", task)])
            res.markClose()
        } catch {
            finishTask(task, .failure(XenAPIError(code: "IMPORT_ERROR", parameters: ["\(error)"])))
            res.send(500, Array("IMPORT_ERROR".utf8), contentType: "text/plain", extra: [("task-id", task)])
            res.markClose()
        }
    }

    private func readXVA(_ req: HTTPServerRequest, sr: String, session: String, host: SimHost, restore: Bool, force: Bool) throws -> [String] {
        func readExactly(_ n: Int) throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: n)
            var filled = 0
            while filled < n {
                let got = out.withUnsafeMutableBytes { req.readBody(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled...])) }
                if got == 0 { throw XenAPIError(code: "IMPORT_ERROR_PREMATURE_EOF") }
                filled += got
            }
            return out
        }
        func next() throws -> (Tar.Member, [UInt8])? {
            guard let m = try Tar.parseHeader(try readExactly(512)) else { return nil }
            let data = try readExactly(m.size)
            _ = try readExactly(Tar.padding(for: m.size))
            return (m, data)
        }
        guard let (first, ovaBytes) = try next(), first.name == "ova.xml" else {
            throw XenAPIError(code: "IMPORT_ERROR_UNEXPECTED_FILE", parameters: ["ova.xml", "?"])
        }
        let ova = try XMLRPC.parseValue(String(decoding: ovaBytes, as: UTF8.self))
        let objects = ova["objects"]?.arrayValue ?? []
        var newRefs: [String: String] = [:]
        var vdiUUID: [String: String] = [:]
        let call = SimCall(pool: self, host: host, method: "import", params: [], session: session)
        // Disks first, so chunks that follow have somewhere to go.
        try db.withLock {
            for o in objects where o["class"]?.stringValue == "VDI" {
                let snap = o["snapshot"]?.structValue ?? [:]
                let vdi = try createVDI(call, ["SR": .string(sr), "virtual_size": snap["virtual_size"] ?? 0,
                                               "type": snap["type"] ?? "user", "name_label": snap["name_label"] ?? "",
                                               "other_config": snap["other_config"] ?? [:]])
                newRefs[o["id"]?.stringValue ?? ""] = vdi
                vdiUUID[o["id"]?.stringValue ?? ""] = db.field(vdi, "uuid")?.stringValue ?? ""
            }
        }
        var lastChunk: [String: Int] = [:]
        var pendingHash: (String, String)?
        var badChecksums = 0
        while let (m, data) = try next() {
            let parts = m.name.split(separator: "/").map(String.init)
            guard parts.count == 2, let uuid = vdiUUID[parts[0]] else {
                throw XenAPIError(code: "IMPORT_ERROR_UNEXPECTED_FILE", parameters: ["Ref:n/NNNNNNNN", m.name])
            }
            if parts[1].hasSuffix(".xxhash") || parts[1].hasSuffix(".checksum") {
                if let (name, hash) = pendingHash, parts[1].hasPrefix(name) {
                    let stored = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).uppercased()
                    if parts[1].hasSuffix(".xxhash"), stored != hash { badChecksums += 1 }
                }
                pendingHash = nil
                continue
            }
            guard let index = Int(parts[1]) else { throw XenAPIError(code: "IMPORT_ERROR_UNEXPECTED_FILE", parameters: ["NNNNNNNN", m.name]) }
            if let last = lastChunk[parts[0]], index <= last {
                throw XenAPIError(code: "IMPORT_ERROR", parameters: ["chunk indices must increase: \(m.name)"])
            }
            lastChunk[parts[0]] = index
            try data.withUnsafeBytes { buf in
                if !buf.allZero { try disks.write(uuid, offset: Int64(index) * Int64(Self.xvaChunk), buf) }
                pendingHash = (parts[1], XXHash64.hex(buf))
            }
        }
        if badChecksums > 0 && !force { throw XenAPIError(code: "IMPORT_ERROR_SOME_CHECKSUMS_FAILED") }
        return try db.withLock {
            var created: [String] = []
            let networks = db.refs("network")
            for o in objects where o["class"]?.stringValue == "VM" {
                var snap = o["snapshot"]?.structValue ?? [:]
                let oldUUID = snap["uuid"]?.stringValue ?? ""
                snap["uuid"] = restore && db.byUUID("VM", oldUUID) == nil ? .string(oldUUID) : .string(Database.newUUID())
                // Like xapi: is_a_snapshot (and is_a_template) as the archive says — false in a
                // plain export — and snapshot_of resolved below among the imported VMs only.
                snap["is_a_snapshot"] = .bool(snap["is_a_snapshot"]?.boolValue ?? false)
                snap["snapshots"] = []
                // Without restore=true xapi gives the VM a fresh MAC seed.
                if !restore {
                    var other = snap["other_config"]?.structValue ?? [:]
                    other["mac_seed"] = .string(Database.newUUID())
                    snap["other_config"] = .structure(other)
                }
                snap["power_state"] = "Halted"
                snap["resident_on"] = Templates.null
                snap["VBDs"] = []
                snap["VIFs"] = []
                snap["parent"] = Templates.null
                snap["children"] = []
                let vm = db.insert("VM", snap)
                newRefs[o["id"]?.stringValue ?? ""] = vm
                created.append(vm)
            }
            for vm in created {
                let of = db.field(vm, "snapshot_of")?.stringValue ?? ""
                if let target = newRefs[of] {
                    db.set(vm, "snapshot_of", .string(target))
                    db.addToSet(target, "snapshots", vm)
                } else {
                    db.set(vm, "snapshot_of", Templates.null)
                }
            }
            var rng = SplitMix64(state: UInt64.random(in: 1...UInt64.max))
            for o in objects {
                let s = o["snapshot"]?.structValue ?? [:]
                switch o["class"]?.stringValue {
                case "VBD":
                    guard let vm = newRefs[s["VM"]?.stringValue ?? ""] else { continue }
                    let vdi = newRefs[s["VDI"]?.stringValue ?? ""] ?? "OpaqueRef:NULL"
                    let vbd = db.insert("VBD", Templates.vbd(vm: vm, vdi: vdi, userdevice: s["userdevice"]?.stringValue ?? "0",
                                                             type: s["type"]?.stringValue ?? "Disk", mode: s["mode"]?.stringValue ?? "RW",
                                                             bootable: s["bootable"]?.boolValue ?? false))
                    db.addToSet(vm, "VBDs", vbd)
                    if vdi != "OpaqueRef:NULL" { db.addToSet(vdi, "VBDs", vbd) }
                case "VIF":
                    guard let vm = newRefs[s["VM"]?.stringValue ?? ""] else { continue }
                    let wantedName = objects.first { $0["id"]?.stringValue == s["network"]?.stringValue }?["snapshot"]?["name_label"]?.stringValue
                    let net = networks.first { db.field($0, "name_label")?.stringValue == wantedName } ?? networks.first ?? ""
                    let mac = restore ? (s["MAC"]?.stringValue ?? Templates.macAddress(&rng)) : Templates.macAddress(&rng)
                    let vif = db.insert("VIF", Templates.vif(vm: vm, network: net, device: s["device"]?.stringValue ?? "0", mac: mac))
                    db.addToSet(vm, "VIFs", vif)
                    if !net.isEmpty { db.addToSet(net, "VIFs", vif) }
                default: break
                }
            }
            for vm in created { refreshAllowedOperations(vm) }
            for (_, uuid) in vdiUUID {
                if let vdi = db.byUUID("VDI", uuid) { db.set(vdi, "physical_utilisation", .int(disks.allocated(uuid))) }
            }
            refreshSRUsage(sr)
            return created
        }
    }
}

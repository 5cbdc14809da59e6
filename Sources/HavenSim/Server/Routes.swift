import Foundation
import XenAPI

extension SimPool {
    /// Routes one HTTP request: XML-RPC, JSON-RPC, the data handlers, and the simulator's control.
    func handle(_ req: HTTPServerRequest, _ res: HTTPServerResponse, host: SimHost) {
        let cors = [("Access-Control-Allow-Origin", "*")]
        if req.path != "/haven-sim/control", cutOff() {
            res.abort()
            return
        }
        switch (req.method, req.path) {
        case ("OPTIONS", _):
            res.send(200, [], contentType: "text/plain", extra: cors + [("Access-Control-Allow-Methods", "POST, GET, PUT, OPTIONS"),
                                                                         ("Access-Control-Allow-Headers", "content-type")])
        case ("POST", "/"), ("POST", "/RPC2"):
            guard let body = try? req.readWholeBody(limit: 32 << 20), let (method, params) = try? XMLRPC.parseRequest(body) else {
                res.send(500, Array("<html><body>XML-RPC parse error</body></html>".utf8), contentType: "text/html")
                return
            }
            let outcome = dispatch(method: method, params: params, host: host)
            res.send(200, XMLRPC.response(outcome), contentType: "text/xml", extra: cors)
        case ("POST", "/jsonrpc"):
            guard let body = try? req.readWholeBody(limit: 32 << 20), let call = try? JSONRPC.parseRequest(body) else {
                res.send(500, Array("Jsonrpc.Malformed_method_request".utf8), contentType: "text/plain")
                return
            }
            let outcome = dispatch(method: call.method, params: call.params, host: host)
            res.send(200, JSONRPC.response(outcome, id: call.id, version2: call.isVersion2), contentType: "application/json", extra: cors)
        case ("GET", "/export_raw_vdi"):
            exportRawVDI(req, res, host: host)
        case ("PUT", "/import_raw_vdi"):
            importRawVDI(req, res, host: host)
        case ("GET", "/export"):
            exportXVA(req, res, host: host)
        case ("PUT", "/import"):
            importXVA(req, res, host: host)
        case ("POST", "/haven-sim/control"):
            control(req, res)
        default:
            res.send(404, Array("not found".utf8), contentType: "text/plain")
        }
    }

    /// The `unreachable` fault: true while it holds (a counted rule is used up one request at a time).
    func cutOff() -> Bool {
        db.withLock {
            guard let i = faults.firstIndex(where: { $0.kind == .unreachable }) else { return false }
            if let n = faults[i].remaining {
                if n <= 1 { faults.remove(at: i) } else { faults[i].remaining = n - 1 }
            }
            return true
        }
    }

    /// The `upload-cut` fault: how many body bytes this upload may send before the link drops
    /// (a counted rule is used up one upload at a time); nil when no rule holds.
    func uploadCut() -> Int? {
        let cut: Int? = db.withLock {
            guard let i = faults.firstIndex(where: { $0.kind == .uploadCut }) else { return nil }
            let bytes = Int(faults[i].bytes)
            if let n = faults[i].remaining {
                if n <= 1 { faults.remove(at: i) } else { faults[i].remaining = n - 1 }
            }
            return bytes
        }
        if cut != nil { saveFaults() }
        return cut
    }

    /// The session behind an HTTP data request: `session_id` in the query or a cookie, or HTTP
    /// Basic credentials (xapi logs in and out around the request).
    func httpSession(_ req: HTTPServerRequest, host: SimHost) -> String? {
        if let s = req.query["session_id"] ?? req.cookies["session_id"] { return checkSession(s) == nil ? s : nil }
        if let auth = req.headers["authorization"], auth.hasPrefix("Basic "),
            let decoded = Data(base64Encoded: String(auth.dropFirst(6))).map({ String(decoding: $0, as: UTF8.self) })
        {
            let parts = decoded.split(separator: ":", maxSplits: 1).map(String.init)
            if parts.count == 2, parts[0] == username, parts[1] == password {
                return db.withLock {
                    let ref = Database.newRef()
                    db.sessions[ref] = SimSession(ref: ref, user: parts[0], originator: "basic-auth", created: Date(), lastActive: Date())
                    return ref
                }
            }
        }
        return nil
    }

    /// The task a data request reports into: the client's `task_id`, or one of its own.
    func httpTask(_ req: HTTPServerRequest, session: String, label: String) -> String {
        if let t = req.query["task_id"] ?? req.cookies["task_id"], db.withLock({ db.get(t, "task") != nil }) { return t }
        return db.withLock { newTask(label: label, description: "", session: session) }
    }

    func resolve(_ cls: String, _ refOrUUID: String?) -> String? {
        guard let v = refOrUUID, !v.isEmpty else { return nil }
        return db.withLock { db.get(v, cls) != nil ? v : db.byUUID(cls, v) }
    }

    // MARK: NBD

    /// Which mode the NBD daemons run in: TLS when a network has purpose `nbd`, plain for
    /// `insecure_nbd`, and none for neither (or, by misconfiguration, both).
    func reconfigureNBD() throws {
        let purposes: [String] = db.withLock { db.refs("network").flatMap { db.field($0, "purpose")?.stringArray ?? [] } }
        let mode: NBDServer.Mode
        switch (purposes.contains("nbd"), purposes.contains("insecure_nbd")) {
        case (true, false): mode = .tls
        case (false, true): mode = .plain
        default: mode = .off
        }
        for h in hosts {
            if h.nbd == nil {
                let plugin = directory.appendingPathComponent("nbd-plugin.py")
                try NBDPlugin.source.write(to: plugin, atomically: true, encoding: .utf8)
                let nbd = NBDServer(
                    address: h.address, directory: directory, pluginPath: plugin.path,
                    pluginArgs: ["control_host=\(h.address)", "control_port=\(port)", "scheme=\(useTLS ? "https" : "http")",
                                 "token=\(controlToken)", "cafile=\(h.certificate)"])
                try nbd.prepareTLS(certificate: h.certificate, key: h.key)
                try nbd.startForwarder()
                h.nbd = nbd
            }
            let drop = db.withLock { faults.first { $0.kind == .nbdDrop }?.bytes ?? 0 }
            h.nbd?.setDropAfter(drop)
            try h.nbd?.configure(mode: mode)
        }
    }

    /// xapi-nbd's checks for a new connection: a live session, a VDI by uuid that still has data;
    /// the connection becomes a read-only VBD on the control domain while it lasts.
    func nbdOpen(export: String, hostAddress: String) -> XenValue {
        guard export.hasPrefix("/"), let q = export.firstIndex(of: "?") else { return ["error": "bad export name"] }
        let uuid = String(export[export.index(after: export.startIndex)..<q])
        let query = export[export.index(after: q)...]
        guard query.hasPrefix("session_id=") else { return ["error": "no session_id in export name"] }
        let session = String(query.dropFirst("session_id=".count))
        if let e = checkSession(session) { return ["error": .string(e.description)] }
        return db.withLock {
            guard let vdi = db.byUUID("VDI", uuid), let f = db.get(vdi, "VDI") else { return ["error": .string("no VDI \(uuid)")] }
            if f["type"]?.stringValue == "cbt_metadata" { return ["error": .string("VDI \(uuid) has no data (cbt_metadata)")] }
            let host = hosts.first { $0.address == hostAddress } ?? hosts[0]
            let dom0 = db.find("VM") { $0["is_control_domain"]?.boolValue == true && $0["resident_on"]?.stringValue == host.ref }.first
            var vbd = ""
            if let dom0 {
                var r = Templates.vbd(vm: dom0, vdi: vdi, userdevice: "autodetect", mode: "RO")
                r["currently_attached"] = true
                r["userdevice"] = .string(String(db.field(dom0, "VBDs")?.stringArray.count ?? 0))
                r["other_config"] = .map(["xapi-nbd": "true"])
                vbd = db.insert("VBD", r)
                db.addToSet(dom0, "VBDs", vbd)
                db.addToSet(vdi, "VBDs", vbd)
            }
            return ["path": .string(disks.path(uuid)), "size": f["virtual_size"] ?? 0, "vbd": .string(vbd)]
        }
    }

    func nbdClose(vbd: String) {
        db.withLock { nbdCloseLocked(vbd: vbd) }
    }

    /// nbdClose with `db.lock` held.
    func nbdCloseLocked(vbd: String) {
        guard db.get(vbd, "VBD") != nil else { return }
        if let vm = db.field(vbd, "VM")?.stringValue { db.removeFromSet(vm, "VBDs", vbd) }
        if let vdi = db.field(vbd, "VDI")?.stringValue { db.removeFromSet(vdi, "VBDs", vbd) }
        db.remove(vbd)
    }
}

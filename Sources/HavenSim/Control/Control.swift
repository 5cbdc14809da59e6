import Foundation
import XenAPI

extension SimPool {
    /// The simulator's own endpoint (not part of XenAPI): guest writes, power, faults, and the
    /// NBD plugin's connection bookkeeping. Guarded by the token in the state directory.
    func control(_ req: HTTPServerRequest, _ res: HTTPServerResponse) {
        guard req.headers["x-haven-sim-token"] == controlToken, !controlToken.isEmpty else {
            res.send(401, Array("{\"error\":\"bad control token\"}".utf8), contentType: "application/json")
            return
        }
        let reply: XenValue
        do {
            let body = try req.readWholeBody(limit: 1 << 20)
            reply = try runControl(try JSON.parse(body))
        } catch {
            reply = ["error": .string("\(error)")]
        }
        res.send(reply["error"] == nil ? 200 : 400, JSON.encode(reply), contentType: "application/json")
    }

    func runControl(_ cmd: XenValue) throws -> XenValue {
        switch cmd["command"]?.stringValue ?? "" {
        case "nbd-open":
            return nbdOpen(export: cmd["export"]?.stringValue ?? "", hostAddress: cmd["host"]?.stringValue ?? "")
        case "nbd-close":
            nbdClose(vbd: cmd["vbd"]?.stringValue ?? "")
            return ["ok": true]
        case "write":
            let vm = try findVM(cmd["vm"]?.stringValue ?? "")
            let disk = Int(cmd["disk"]?.intValue ?? 0)
            let vdi: String = try db.withLock {
                let vbds = (db.field(vm, "VBDs")?.stringArray ?? []).filter { db.field($0, "type")?.stringValue == "Disk" }
                    .sorted { (Int(db.field($0, "userdevice")?.stringValue ?? "") ?? 0) < (Int(db.field($1, "userdevice")?.stringValue ?? "") ?? 0) }
                guard disk < vbds.count, let vdi = db.field(vbds[disk], "VDI")?.stringValue, db.get(vdi, "VDI") != nil else {
                    throw SimError("VM has no disk \(disk)")
                }
                return vdi
            }
            let blocks = try guestWrite(
                vdi: vdi, percent: cmd["percent"]?.doubleValue ?? 1, clustered: cmd["pattern"]?.stringValue == "clustered",
                seed: UInt64(cmd["seed"]?.intValue ?? Int64.random(in: 1...Int64.max)))
            return ["blocks": .array(blocks.map { .int(Int64($0)) }), "vdi": .string(db.withLock { db.field(vdi, "uuid")?.stringValue ?? "" })]
        case "has-vm":
            return ["found": .bool((try? findVM(cmd["vm"]?.stringValue ?? "")) != nil)]
        case "power":
            let vm = try findVM(cmd["vm"]?.stringValue ?? "")
            let action = cmd["action"]?.stringValue ?? ""
            try db.withLock {
                let power = db.field(vm, "power_state")?.stringValue ?? "Halted"
                switch action {
                case "start":
                    if power != "Running" {
                        deleteGuestMetrics(vm)
                        powerOn(vm)
                        startAppliance(vm)
                    }
                case "shutdown":
                    if power != "Halted" {
                        powerOff(vm)
                        stopAppliance(vm)
                    }
                default: throw SimError("power action must be start or shutdown")
                }
                refreshAllowedOperations(vm)
            }
            return ["power_state": .string(db.withLock { db.field(vm, "power_state")?.stringValue ?? "" })]
        case "fault":
            let rule = try FaultRule.parse(cmd["rule"]?.stringValue ?? "")
            try apply(rule)
            return ["faults": .strings(db.withLock { faults.map(\.text) })]
        case "fault-clear":
            let hadDeny = db.withLock {
                defer { faults.removeAll() }
                return faults.contains { $0.kind == .denyInbound }
            }
            saveFaults()
            for h in hosts { h.nbd?.setDropAfter(0) }
            if hadDeny { restartAppliances() }
            return ["faults": []]
        case "faults":
            return ["faults": .strings(db.withLock { faults.map(\.text) })]
        default:
            throw SimError("unknown control command")
        }
    }

    private func findVM(_ name: String) throws -> String {
        let found = db.withLock {
            db.find("VM") {
                ($0["name_label"]?.stringValue == name || $0["uuid"]?.stringValue == name) && $0["is_a_snapshot"]?.boolValue != true
                    && $0["is_a_template"]?.boolValue != true
            }
        }
        guard let vm = found.first else { throw SimError("no VM named '\(name)' in pool \(self.name)") }
        return vm
    }

    /// Adds a rule; failover and NBD drops take effect at once.
    func apply(_ rule: FaultRule) throws {
        if rule.kind == .failover {
            guard let target = hosts.first(where: { $0.address == rule.target || $0.name == rule.target }) else {
                throw SimError("failover: no host \(rule.target) in pool \(name)")
            }
            db.withLock {
                if let pool = db.refs("pool").first { db.set(pool, "master", .string(target.ref)) }
                // Sessions do not survive a change of master.
                for ref in db.sessions.keys {
                    db.sessions[ref] = nil
                    if db.get(ref) != nil { db.remove(ref) }
                }
            }
            return
        }
        let wasDenied = denyInbound
        db.withLock { faults.append(rule) }
        saveFaults()
        if rule.kind == .nbdDrop { for h in hosts { h.nbd?.setDropAfter(rule.bytes) } }
        if rule.kind == .denyInbound, !wasDenied { restartAppliances() }
    }
}

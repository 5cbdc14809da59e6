import Foundation
import XenAPI

extension SimPool {
    /// The explicit methods; everything else is tried against the generic accessors.
    static let table: [String: SimMethod] = {
        var t: [String: SimMethod] = [:]
        // session
        t["session.login_with_password"] = SimMethod(arity: 4, optional: 2, needsSession: false, async: false) { c in
            try c.pool.login(c)
        }
        t["session.logout"] = SimMethod(arity: 0, async: false) { c in
            c.db.sessions[c.session] = nil
            if c.db.get(c.session) != nil { c.db.remove(c.session) }
            return ""
        }
        t["session.local_logout"] = t["session.logout"]
        t["session.get_uuid"] = SimMethod(arity: 1, async: false) { c in
            c.db.field(try c.ref(0, "session"), "uuid") ?? ""
        }
        // host
        t["host.get_server_certificate"] = SimMethod(arity: 1) { c in
            let ref = try c.ref(0, "host")
            return .string(c.pool.host(ref: ref)?.pemCertificate ?? "")
        }
        // VM
        t["VM.snapshot"] = SimMethod(arity: 3, optional: 1) { c in
            if c.params.count == 3 && !c.pool.snapshotHasIgnoreVDIs {
                throw c.fail(XenAPIError.Code.messageParameterCountMismatch, "VM.snapshot", "2", "3")
            }
            let ignore = c.params.count > 2 ? c.params[2].stringArray : []
            return .string(try c.pool.snapshotVM(c, vm: try c.ref(0, "VM"), name: try c.string(1), ignore: Set(ignore)))
        }
        t["VM.snapshot_with_quiesce"] = SimMethod(arity: 2) { c in
            if (c.pool.apiMajor, c.pool.apiMinor) >= (2, 14) { throw c.fail(XenAPIError.Code.messageRemoved) }
            throw c.fail(XenAPIError.Code.vmSnapshotWithQuiesceNotSupported, try c.ref(0, "VM"))
        }
        t["VM.create"] = SimMethod(arity: 1) { c in .string(try c.pool.createVM(c, try c.pool.constructorRecord(c, "VM"))) }
        t["VM.destroy"] = SimMethod(arity: 1) { c in try c.pool.destroyVM(c, try c.ref(0, "VM")); return "" }
        t["VM.clone"] = SimMethod(arity: 2) { c in .string(try c.pool.cloneVM(c, try c.ref(0, "VM"), name: try c.string(1), sr: nil)) }
        t["VM.copy"] = SimMethod(arity: 3) { c in
            let sr = try c.string(2)
            if sr != "OpaqueRef:NULL" { _ = try c.ref(2, "SR") }
            return .string(try c.pool.cloneVM(c, try c.ref(0, "VM"), name: try c.string(1), sr: sr == "OpaqueRef:NULL" ? nil : sr))
        }
        t["VM.provision"] = SimMethod(arity: 1) { c in
            let vm = try c.ref(0, "VM")
            guard c.db.field(vm, "is_a_template")?.boolValue == true else { throw c.fail("PROVISION_ONLY_ALLOWED_ON_TEMPLATE") }
            return ""
        }
        t["VM.start"] = SimMethod(arity: 3) { c in try c.pool.changePower(c, try c.ref(0, "VM"), op: "start"); return "" }
        t["VM.start_on"] = SimMethod(arity: 4) { c in
            _ = try c.ref(1, "host")
            try c.pool.changePower(c, try c.ref(0, "VM"), op: "start_on")
            return ""
        }
        t["VM.revert"] = SimMethod(arity: 1) { c in try c.pool.revertVM(c, snapshot: try c.ref(0, "VM")); return "" }
        t["VM.set_ha_restart_priority"] = SimMethod(arity: 2) { c in
            try c.pool.setHARestartPriority(c, try c.ref(0, "VM"), try c.string(1)); return ""
        }
        // xapi_vm.ml `set_memory_limits`: a halted VM, static_min ≤ dynamic_min ≤ dynamic_max ≤ static_max.
        t["VM.set_memory_limits"] = SimMethod(arity: 5) { c in
            let vm = try c.ref(0, "VM")
            let values = try (1...4).map { i -> Int64 in
                guard let v = c.params[i].intValue ?? c.params[i].stringValue.flatMap({ Int64($0) }) else { throw c.fail("FIELD_TYPE_ERROR", "param \(i)") }
                return v
            }
            let power = c.db.field(vm, "power_state")?.stringValue ?? "Halted"
            guard power == "Halted" else { throw c.fail(XenAPIError.Code.vmBadPowerState, vm, "halted", power.lowercased()) }
            guard values[0] <= values[2], values[2] <= values[3], values[3] <= values[1] else { throw c.fail("MEMORY_CONSTRAINT_VIOLATION") }
            c.db.update(vm) { f in
                for (i, k) in ["memory_static_min", "memory_static_max", "memory_dynamic_min", "memory_dynamic_max"].enumerated() { f[k] = .int(values[i]) }
                f["memory_target"] = .int(values[3])
            }
            return ""
        }
        t["VM.clean_shutdown"] = SimMethod(arity: 1) { c in try c.pool.changePower(c, try c.ref(0, "VM"), op: "clean_shutdown"); return "" }
        t["VM.hard_shutdown"] = SimMethod(arity: 1) { c in try c.pool.changePower(c, try c.ref(0, "VM"), op: "hard_shutdown"); return "" }
        // VDI
        t["VDI.enable_cbt"] = SimMethod(arity: 1, needsCBTAPI: true) { c in try c.pool.setCBT(c, try c.ref(0, "VDI"), on: true); return "" }
        t["VDI.disable_cbt"] = SimMethod(arity: 1, needsCBTAPI: true) { c in try c.pool.setCBT(c, try c.ref(0, "VDI"), on: false); return "" }
        t["VDI.list_changed_blocks"] = SimMethod(arity: 2, needsCBTAPI: true) { c in
            .string(try c.pool.listChangedBlocks(c, from: try c.ref(0, "VDI"), to: try c.ref(1, "VDI")))
        }
        t["VDI.data_destroy"] = SimMethod(arity: 1, needsCBTAPI: true) { c in try c.pool.dataDestroy(c, try c.ref(0, "VDI")); return "" }
        t["VDI.get_nbd_info"] = SimMethod(arity: 1, needsCBTAPI: true, async: false) { c in try c.pool.nbdInfo(c, try c.ref(0, "VDI")) }
        t["VDI.create"] = SimMethod(arity: 1) { c in .string(try c.pool.createVDI(c, try c.pool.constructorRecord(c, "VDI"))) }
        t["VDI.destroy"] = SimMethod(arity: 1) { c in try c.pool.destroyVDI(c, try c.ref(0, "VDI")); return "" }
        t["VDI.snapshot"] = SimMethod(arity: 2, optional: 1) { c in .string(try c.pool.snapshotVDI(c, try c.ref(0, "VDI"))) }
        t["VDI.clone"] = SimMethod(arity: 2, optional: 1) { c in .string(try c.pool.cloneVDI(c, try c.ref(0, "VDI"), sr: nil)) }
        t["VDI.copy"] = SimMethod(arity: 4, optional: 2) { c in .string(try c.pool.cloneVDI(c, try c.ref(0, "VDI"), sr: try c.ref(1, "SR"))) }
        // VBD
        t["VBD.create"] = SimMethod(arity: 1) { c in .string(try c.pool.createVBD(c, try c.pool.constructorRecord(c, "VBD"))) }
        t["VBD.destroy"] = SimMethod(arity: 1) { c in try c.pool.destroyVBD(c, try c.ref(0, "VBD")); return "" }
        t["VBD.plug"] = SimMethod(arity: 1) { c in try c.pool.plugVBD(c, try c.ref(0, "VBD"), plug: true); return "" }
        t["VBD.unplug"] = SimMethod(arity: 1) { c in try c.pool.plugVBD(c, try c.ref(0, "VBD"), plug: false); return "" }
        t["VBD.unplug_force"] = t["VBD.unplug"]
        // VIF
        t["VIF.create"] = SimMethod(arity: 1) { c in .string(try c.pool.createVIF(c, try c.pool.constructorRecord(c, "VIF"))) }
        t["VIF.destroy"] = SimMethod(arity: 1) { c in
            let vif = try c.ref(0, "VIF")
            if let vm = c.db.field(vif, "VM")?.stringValue { c.db.removeFromSet(vm, "VIFs", vif) }
            if let net = c.db.field(vif, "network")?.stringValue { c.db.removeFromSet(net, "VIFs", vif) }
            c.db.remove(vif)
            return ""
        }
        // network
        t["network.add_purpose"] = SimMethod(arity: 2, needsCBTAPI: true) { c in
            try c.pool.changePurpose(c, try c.ref(0, "network"), try c.string(1), add: true); return ""
        }
        t["network.remove_purpose"] = SimMethod(arity: 2, needsCBTAPI: true) { c in
            try c.pool.changePurpose(c, try c.ref(0, "network"), try c.string(1), add: false); return ""
        }
        // task
        t["task.create"] = SimMethod(arity: 2, async: false) { c in
            .string(c.pool.newTask(label: try c.string(0), description: try c.string(1), session: c.session))
        }
        t["task.destroy"] = SimMethod(arity: 1, async: false) { c in c.db.remove(try c.ref(0, "task")); return "" }
        t["task.cancel"] = SimMethod(arity: 1) { c in
            let task = try c.ref(0, "task")
            if c.db.field(task, "status")?.stringValue == "pending" {
                c.db.update(task) { f in
                    f["status"] = "cancelled"
                    f["error_info"] = .strings([XenAPIError.Code.taskCancelled, task])
                    f["finished"] = Templates.now()
                }
            }
            return ""
        }
        // event
        t["event.from"] = SimMethod(arity: 3, async: false) { c in try c.pool.eventFrom(c) }
        t["event.inject"] = SimMethod(arity: 2, async: false) { c in
            let ref = try c.string(1)
            guard c.db.get(ref) != nil else { throw c.fail(XenAPIError.Code.handleInvalid, try c.string(0), ref) }
            c.db.update(ref) { f in f["__injected"] = .int(Int64(Date().timeIntervalSince1970 * 1000)) }
            c.db.update(ref) { f in f["__injected"] = nil }
            return .string(c.pool.token(c.db.generation))
        }
        t["event.get_current_id"] = SimMethod(arity: 0, async: false) { c in .string(String(c.db.generation)) }
        return t
    }()

    func method(cls: String, message: String) -> SimMethod? {
        if let m = Self.table["\(cls).\(message)"] { return m }
        guard Self.classes.contains(cls) else { return nil }
        return generic(cls: cls, message: message)
    }

    /// get_record, get_all, get_all_records, get_by_uuid, get_by_name_label, get_<field>,
    /// set_<field>, add_to_<map>, remove_from_<map>, add_<set>/remove_<set> (tags).
    private func generic(cls: String, message: String) -> SimMethod? {
        switch message {
        case "get_all":
            return SimMethod(arity: 0, async: false) { c in .strings(c.db.refs(cls)) }
        case "get_all_records":
            return SimMethod(arity: 0, async: false) { c in
                .structure(Dictionary(uniqueKeysWithValues: c.db.refs(cls).map { ($0, .structure(c.pool.wireRecord($0))) }))
            }
        case "get_record":
            return SimMethod(arity: 1, async: false) { c in .structure(c.pool.wireRecord(try c.ref(0, cls))) }
        case "get_by_uuid":
            return SimMethod(arity: 1, async: false) { c in
                let uuid = try c.string(0)
                guard let r = c.db.byUUID(cls, uuid) else { throw c.fail(XenAPIError.Code.uuidInvalid, cls, uuid) }
                return .string(r)
            }
        case "get_by_name_label":
            return SimMethod(arity: 1, async: false) { c in
                let name = try c.string(0)
                return .strings(c.db.find(cls) { $0["name_label"]?.stringValue == name })
            }
        default: break
        }
        let writable = Self.writableFields[cls] ?? []
        if message.hasPrefix("get_") {
            let field = String(message.dropFirst(4))
            return SimMethod(arity: 1, async: false) { c in
                let ref = try c.ref(0, cls)
                guard let v = c.pool.wireRecord(ref)[field] else { throw c.fail(XenAPIError.Code.messageMethodUnknown, "\(cls).\(message)") }
                return v
            }
        }
        if message.hasPrefix("set_"), writable.contains(String(message.dropFirst(4))) {
            let field = String(message.dropFirst(4))
            return SimMethod(arity: 2) { c in
                let ref = try c.ref(0, cls)
                c.db.set(ref, field, c.params[1])
                if cls == "VM" { c.pool.refreshAllowedOperations(ref) }
                return ""
            }
        }
        if message.hasPrefix("add_to_"), writable.contains(String(message.dropFirst(7))) {
            let field = String(message.dropFirst(7))
            return SimMethod(arity: 3) { c in
                let ref = try c.ref(0, cls)
                let key = try c.string(1)
                if c.db.field(ref, field)?.structValue?[key] != nil {
                    throw c.fail(XenAPIError.Code.mapDuplicateKey, cls, field, ref, key)
                }
                c.db.update(ref) { f in
                    var m = f[field]?.structValue ?? [:]
                    m[key] = c.params[2]
                    f[field] = .structure(m)
                }
                return ""
            }
        }
        if message.hasPrefix("remove_from_"), writable.contains(String(message.dropFirst(12))) {
            let field = String(message.dropFirst(12))
            return SimMethod(arity: 2) { c in
                let ref = try c.ref(0, cls)
                let key = try c.string(1)
                c.db.update(ref) { f in
                    var m = f[field]?.structValue ?? [:]
                    m[key] = nil
                    f[field] = .structure(m)
                }
                return ""
            }
        }
        if message == "add_tags" || message == "remove_tags", writable.contains("tags") {
            return SimMethod(arity: 2) { c in
                let ref = try c.ref(0, cls)
                let tag = try c.string(1)
                if message == "add_tags" { c.db.addToSet(ref, "tags", tag) } else { c.db.removeFromSet(ref, "tags", tag) }
                return ""
            }
        }
        return nil
    }

    /// A record as the wire shows it: internal bookkeeping keys (`__…`) left out.
    func wireRecord(_ ref: String) -> [String: XenValue] {
        guard var f = db.get(ref)?.fields else { return [:] }
        for k in f.keys where k.hasPrefix("__") { f[k] = nil }
        return f
    }

    // MARK: session

    func login(_ c: SimCall) throws -> XenValue {
        let user = try c.string(0)
        let pass = try c.string(1)
        let master = db.refs("pool").first.flatMap { db.field($0, "master")?.stringValue } ?? hosts[0].ref
        if c.host.ref != master {
            let address = host(ref: master)?.address ?? ""
            throw c.fail(XenAPIError.Code.hostIsSlave, address)
        }
        guard user == username, pass == password else {
            throw c.fail(XenAPIError.Code.sessionAuthenticationFailed, user, "Authentication failure")
        }
        let originator = c.params.count > 3 ? (c.params[3].stringValue ?? "") : ""
        let ref = db.insert("session", [
            "this_host": .string(c.host.ref), "this_user": Templates.null, "last_active": Templates.now(), "pool": false,
            "other_config": [:], "is_local_superuser": true, "subject": Templates.null, "validation_time": Templates.now(),
            "auth_user_sid": "", "auth_user_name": .string(user), "rbac_permissions": [], "tasks": [], "parent": Templates.null,
            "originator": .string(originator), "client_certificate": false,
        ])
        db.sessions[ref] = SimSession(ref: ref, user: user, originator: originator, created: Date(), lastActive: Date())
        return .string(ref)
    }
}

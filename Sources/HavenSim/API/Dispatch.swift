import Foundation
import XenAPI

/// One XenAPI call being served.
struct SimCall: Sendable {
    let pool: SimPool
    let host: SimHost
    let method: String
    let params: [XenValue]
    let session: String
    var task: String?

    var db: Database { pool.db }

    func fail(_ code: String, _ params: String...) -> XenAPIError { XenAPIError(code: code, parameters: params) }

    func string(_ i: Int) throws -> String {
        guard i < params.count, let s = params[i].stringValue else { throw fail("FIELD_TYPE_ERROR", "param \(i)") }
        return s
    }

    func bool(_ i: Int) throws -> Bool {
        guard i < params.count, let b = params[i].boolValue else { throw fail("FIELD_TYPE_ERROR", "param \(i)") }
        return b
    }

    /// A reference that must name an object of `cls`, else HANDLE_INVALID [cls, ref].
    func ref(_ i: Int, _ cls: String) throws -> String {
        let r = try string(i)
        guard db.get(r, cls) != nil else { throw fail(XenAPIError.Code.handleInvalid, cls, r) }
        return r
    }
}

/// A served method: how many parameters (after the session), and what it does. Handlers run with
/// the database lock held; they may wait on it (which releases it) but must not do long I/O.
struct SimMethod: Sendable {
    var arity: Int
    /// Trailing parameters that may be left out (xapi fills their defaults).
    var optional: Int = 0
    var needsSession = true
    /// Introduced with API 2.8 (CBT, NBD, network purposes): unknown to older pools.
    var needsCBTAPI = false
    var async = true
    var handler: @Sendable (inout SimCall) throws -> XenValue
}

extension SimPool {
    /// Classes whose generic getters, setters and map operations are served.
    static let classes = ["session", "pool", "host", "VM", "VM_metrics", "VM_guest_metrics", "VBD", "VDI", "SR", "PBD", "SM", "network", "PIF", "VIF", "task",
                          "message"]

    static let writableFields: [String: Set<String>] = [
        "VM": ["name_label", "name_description", "other_config", "tags", "blocked_operations", "is_a_template", "xenstore_data",
               "memory_static_max", "memory_dynamic_max", "VCPUs_max", "VCPUs_at_startup", "platform", "HVM_boot_params",
               "actions_after_shutdown", "actions_after_reboot", "affinity", "user_version", "PV_args", "recommendations"],
        "VDI": ["name_label", "name_description", "other_config", "sm_config", "tags", "xenstore_data"],
        "VBD": ["other_config", "userdevice", "mode", "bootable"],
        "SR": ["name_label", "name_description", "other_config", "tags"],
        "network": ["name_label", "name_description", "other_config", "tags", "MTU"],
        "pool": ["name_label", "name_description", "other_config", "tags", "default_SR"],
        "host": ["name_label", "name_description", "other_config", "tags"],
        "task": ["other_config"], "VIF": ["other_config"], "VM_metrics": ["other_config"], "VM_guest_metrics": ["other_config"], "PIF": ["other_config"], "PBD": ["other_config"],
        "SM": ["other_config"], "message": [], "session": ["other_config"],
    ]

    /// Splits `Async.VM.snapshot`, `VM_snapshot` and friends into (async, class, message).
    static func parseMethodName(_ name: String) -> (async: Bool, cls: String, message: String)? {
        var rest = name
        var isAsync = false
        if rest.hasPrefix("Async.") || rest.hasPrefix("Async_") {
            isAsync = true
            rest.removeFirst(6)
        }
        if let dot = rest.firstIndex(of: ".") {
            return (isAsync, String(rest[..<dot]), String(rest[rest.index(after: dot)...]))
        }
        // Underscore spelling: the longest known class name that prefixes it.
        for cls in classes.sorted(by: { $0.count > $1.count }) where rest.hasPrefix(cls + "_") {
            return (isAsync, cls, String(rest.dropFirst(cls.count + 1)))
        }
        return nil
    }

    /// Serves one call: checks the method, the arity, the session and faults, then runs it
    /// (or, for `Async.`, starts a task and returns its ref).
    func dispatch(method wireName: String, params: [XenValue], host: SimHost) -> Result<XenValue, XenAPIError> {
        callsServed.add(1, ordering: .relaxed)
        guard let (isAsync, cls, message) = Self.parseMethodName(wireName) else {
            return .failure(XenAPIError(code: XenAPIError.Code.messageMethodUnknown, parameters: [wireName]))
        }
        let name = "\(cls).\(message)"
        guard let m = method(cls: cls, message: message) else {
            return .failure(XenAPIError(code: XenAPIError.Code.messageMethodUnknown, parameters: [wireName]))
        }
        if m.needsCBTAPI && !hasCBTAPI {
            return .failure(XenAPIError(code: XenAPIError.Code.messageMethodUnknown, parameters: [wireName]))
        }
        if isAsync && !m.async {
            return .failure(XenAPIError(code: "INTERNAL_ERROR", parameters: ["No async mode for this operation"]))
        }
        let given = params.count - (m.needsSession ? 1 : 0)
        if given > m.arity || given < m.arity - m.optional {
            return .failure(XenAPIError(
                code: XenAPIError.Code.messageParameterCountMismatch, parameters: [name, String(m.arity), String(max(0, given))]))
        }
        var session = ""
        if m.needsSession {
            session = params.first?.stringValue ?? ""
            if let e = checkSession(session) { return .failure(e) }
        }
        if let delay = latency(for: name) { Thread.sleep(forTimeInterval: delay) }
        if let injected = injectedError(for: name) { return .failure(injected) }
        var call = SimCall(pool: self, host: host, method: name, params: Array(params.dropFirst(m.needsSession ? 1 : 0)), session: session)
        if isAsync {
            return .success(.string(startTask(name: wireName, call: call, handler: m.handler)))
        }
        // xapi runs a synchronous call inside a server-side task too: when that task fails, the
        // call fails with the task's error, and nothing of it is done.
        if let code = taskFailure(for: name) { return .failure(XenAPIError(code: code, parameters: [])) }
        do {
            let v = try db.withLock { try m.handler(&call) }
            return .success(v)
        } catch let e as XenAPIError {
            return .failure(e)
        } catch {
            return .failure(XenAPIError(code: "INTERNAL_ERROR", parameters: ["\(error)"]))
        }
    }

    func checkSession(_ ref: String) -> XenAPIError? {
        db.withLock {
            guard var s = db.sessions[ref] else { return XenAPIError(code: XenAPIError.Code.sessionInvalid, parameters: [ref]) }
            // As xapi: a session ends after a time without use (its last_active), not at an age.
            if let expiry = faults.first(where: { $0.kind == .sessionExpiry }), Date().timeIntervalSince(s.lastActive) > expiry.seconds {
                db.sessions[ref] = nil
                if let obj = db.find("session", where: { _ in true }).first(where: { $0 == ref }) { db.remove(obj) }
                return XenAPIError(code: XenAPIError.Code.sessionInvalid, parameters: [ref])
            }
            s.lastActive = Date()
            db.sessions[ref] = s
            return nil
        }
    }

    private func latency(for method: String) -> Double? {
        db.withLock { faults.first { $0.kind == .latency && $0.matches(method) }?.seconds }
    }

    /// The first error rule that fires for this method, counting down `@count` rules.
    private func injectedError(for method: String) -> XenAPIError? {
        let fired: XenAPIError? = db.withLock {
            for (i, rule) in faults.enumerated() where rule.kind == .error && rule.matches(method) {
                if let p = rule.probability, Double.random(in: 0..<1) >= p { continue }
                if let n = rule.remaining {
                    if n <= 1 { faults.remove(at: i) } else { faults[i].remaining = n - 1 }
                }
                return XenAPIError(code: rule.code, parameters: rule.parameters)
            }
            return nil
        }
        if fired != nil { saveFaults() }
        return fired
    }

    /// The code of the first `task-fail` rule that fires for this method, counting down
    /// `@count` rules and honouring `@p`, as error rules do.
    func taskFailure(for method: String) -> String? {
        let fired: String? = db.withLock {
            for (i, rule) in faults.enumerated() where rule.kind == .taskFail && rule.matches(method) {
                if let p = rule.probability, Double.random(in: 0..<1) >= p { continue }
                if let n = rule.remaining {
                    if n <= 1 { faults.remove(at: i) } else { faults[i].remaining = n - 1 }
                }
                return rule.code
            }
            return nil
        }
        if fired != nil { saveFaults() }
        return fired
    }

    // MARK: tasks

    /// Creates a task, runs the call on a thread of its own, and records its outcome in the task
    /// the way xapi does (result as XML-RPC text, error_info as [code, params…]).
    func startTask(name: String, call: SimCall, handler: @escaping @Sendable (inout SimCall) throws -> XenValue) -> String {
        let taskRef: String = db.withLock { newTask(label: name, description: "", session: call.session) }
        let failMidway = taskFailure(for: call.method)
        var prepared = call
        prepared.task = taskRef
        let taskCall = prepared
        let work = Thread { [self] in
            var call = taskCall
            db.withLock { db.set(taskRef, "progress", .double(0.1)) }
            if let failMidway {
                Thread.sleep(forTimeInterval: 0.05)
                db.withLock { db.set(taskRef, "progress", .double(0.5)) }
                finishTask(taskRef, .failure(XenAPIError(code: failMidway, parameters: [])))
                return
            }
            let outcome: Result<XenValue, XenAPIError>
            do {
                outcome = .success(try db.withLock { try handler(&call) })
            } catch let e as XenAPIError {
                outcome = .failure(e)
            } catch {
                outcome = .failure(XenAPIError(code: "INTERNAL_ERROR", parameters: ["\(error)"]))
            }
            finishTask(taskRef, outcome)
        }
        work.start()
        return taskRef
    }

    /// Lock held.
    func newTask(label: String, description: String, session: String) -> String {
        db.insert("task", [
            "name_label": .string(label), "name_description": .string(description), "allowed_operations": ["cancel"],
            "current_operations": [:], "created": Templates.now(), "finished": Templates.epoch, "status": "pending",
            "resident_on": .string(hosts[0].ref), "progress": .double(0), "type": "", "result": "", "error_info": [],
            "other_config": [:], "subtask_of": Templates.null, "subtasks": [], "backtrace": "()",
        ])
    }

    func finishTask(_ task: String, _ outcome: Result<XenValue, XenAPIError>) {
        db.withLock {
            guard db.get(task, "task") != nil else { return }
            db.update(task) { f in
                f["progress"] = .double(1)
                f["finished"] = Templates.now()
                f["allowed_operations"] = ["destroy"]
                switch outcome {
                case .success(let v):
                    var out: [UInt8] = []
                    XMLRPC.encode(v, style: .server, into: &out)
                    f["status"] = "success"
                    f["result"] = .string(String(decoding: out, as: UTF8.self))
                case .failure(let e):
                    f["status"] = e.code == XenAPIError.Code.taskCancelled ? "cancelled" : "failure"
                    f["error_info"] = .strings([e.code] + e.parameters)
                }
            }
        }
    }
}

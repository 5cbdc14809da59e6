import Foundation

public typealias VMRef = XenRef<VMRecord>
public typealias VDIRef = XenRef<VDIRecord>
public typealias VBDRef = XenRef<VBDRecord>
public typealias SRRef = XenRef<SRRecord>
public typealias NetworkRef = XenRef<NetworkRecord>
public typealias TaskRef = XenRef<TaskRecord>
public typealias HostRef = XenRef<HostRecord>

extension XenAPIClient {
    // MARK: VM

    /// Snapshots a VM. `ignoreVDIs` is sent only to pools whose API has the parameter; older ones
    /// get the two-parameter call (sending three gives MESSAGE_PARAMETER_COUNT_MISMATCH there).
    public func snapshot(_ vm: VMRef, name: String, ignoreVDIs: [VDIRef] = []) async throws -> VMRef {
        let caps = try await currentCapabilities()
        let v: XenValue
        if caps.snapshotTakesIgnoreVDIs {
            v = try await call(.vmSnapshot, [vm.value, .string(name), .array(ignoreVDIs.map(\.value))])
        } else {
            v = try await call(.vmSnapshotLegacy, [vm.value, .string(name)])
        }
        return XenRef(v.stringValue ?? "")
    }

    public func destroy(_ vm: VMRef) async throws { _ = try await call(.vmDestroy, [vm.value]) }
    /// Creates a VM from a record (the fields xapi requires and any others to set).
    public func createVM(_ record: [String: XenValue]) async throws -> VMRef {
        XenRef(try await call(.vmCreate, [.structure(record)]).stringValue ?? "")
    }
    /// Creates a halted VM with every field xapi requires.
    public func createVM(_ spec: NewVM) async throws -> VMRef { try await createVM(spec.record) }
    public func vm(uuid: String) async throws -> VMRef { XenRef(try await call(.vmGetByUUID, [.string(uuid)]).stringValue ?? "") }
    public func vdi(uuid: String) async throws -> VDIRef { XenRef(try await call(.vdiGetByUUID, [.string(uuid)]).stringValue ?? "") }
    public func sr(uuid: String) async throws -> SRRef { XenRef(try await call(.srGetByUUID, [.string(uuid)]).stringValue ?? "") }
    public func clone(_ vm: VMRef, name: String) async throws -> VMRef {
        XenRef(try await call(.vmClone, [vm.value, .string(name)]).stringValue ?? "")
    }
    public func copy(_ vm: VMRef, name: String, sr: SRRef) async throws -> VMRef {
        XenRef(try await call(.vmCopy, [vm.value, .string(name), sr.value]).stringValue ?? "")
    }
    public func provision(_ vm: VMRef) async throws { _ = try await call(.vmProvision, [vm.value]) }
    public func start(_ vm: VMRef, paused: Bool = false, force: Bool = false) async throws {
        _ = try await call(.vmStart, [vm.value, .bool(paused), .bool(force)])
    }
    public func cleanShutdown(_ vm: VMRef) async throws { _ = try await call(.vmCleanShutdown, [vm.value]) }
    public func hardShutdown(_ vm: VMRef) async throws { _ = try await call(.vmHardShutdown, [vm.value]) }
    public func setNameLabel(_ vm: VMRef, _ name: String) async throws { _ = try await call(.vmSetNameLabel, [vm.value, .string(name)]) }
    public func setIsATemplate(_ vm: VMRef, _ value: Bool) async throws { _ = try await call(.vmSetIsATemplate, [vm.value, .bool(value)]) }

    /// Sets a key of a VM's other_config, replacing an existing value (xapi's add refuses
    /// duplicates with MAP_DUPLICATE_KEY, so the key is removed first).
    public func setOtherConfig(_ vm: VMRef, key: String, value: String) async throws {
        _ = try await call(.vmRemoveFromOtherConfig, [vm.value, .string(key)])
        _ = try await call(.vmAddToOtherConfig, [vm.value, .string(key), .string(value)])
    }
    public func removeOtherConfig(_ vm: VMRef, key: String) async throws {
        _ = try await call(.vmRemoveFromOtherConfig, [vm.value, .string(key)])
    }
    public func block(_ vm: VMRef, operation: String, reason: String) async throws {
        _ = try await call(.vmRemoveFromBlockedOperations, [vm.value, .string(operation)])
        _ = try await call(.vmAddToBlockedOperations, [vm.value, .string(operation), .string(reason)])
    }
    public func unblock(_ vm: VMRef, operation: String) async throws {
        _ = try await call(.vmRemoveFromBlockedOperations, [vm.value, .string(operation)])
    }
    /// Replaces the whole blocked_operations map (operation -> reason). xapi's VM.start, start_on,
    /// resume… then fail with OPERATION_BLOCKED [vm, reason] before any other check.
    public func setBlockedOperations(_ vm: VMRef, _ operations: [String: String]) async throws {
        _ = try await call(.vmSetBlockedOperations, [vm.value, .map(operations)])
    }
    /// "", "restart" or "best-effort"; anything else gives INVALID_VALUE.
    public func setHARestartPriority(_ vm: VMRef, _ priority: String) async throws {
        _ = try await call(.vmSetHARestartPriority, [vm.value, .string(priority)])
    }
    public func start(_ vm: VMRef, on host: HostRef, paused: Bool = false, force: Bool = false) async throws {
        _ = try await call(.vmStartOn, [vm.value, host.value, .bool(paused), .bool(force)])
    }
    /// Reverts the snapshot's VM to it. The VM's disks are replaced by clones of the snapshot's
    /// (new VDI refs and uuids, CBT off on them), its VIFs by copies of the snapshot's, and its
    /// settings (other_config and blocked_operations included) by those at snapshot time; it ends
    /// halted. REVERT_ONLY_ALLOWED_ON_SNAPSHOT on a VM that is not a snapshot.
    public func revert(to snapshot: VMRef) async throws { _ = try await call(.vmRevert, [snapshot.value]) }
    /// The VM's VM_metrics record (`startDate` tells when it last booted).
    public func metrics(of vm: VMRef) async throws -> VMMetricsRecord {
        let ref = try await record(vm).metrics
        return try await record(ref)
    }
    public func addTag(_ vm: VMRef, _ tag: String) async throws { _ = try await call(.vmAddTags, [vm.value, .string(tag)]) }
    public func removeTag(_ vm: VMRef, _ tag: String) async throws { _ = try await call(.vmRemoveTags, [vm.value, .string(tag)]) }

    // MARK: VDI

    public func enableCBT(_ vdi: VDIRef) async throws { _ = try await call(.vdiEnableCBT, [vdi.value]) }
    public func disableCBT(_ vdi: VDIRef) async throws { _ = try await call(.vdiDisableCBT, [vdi.value]) }
    /// The base64 bitmap of 64 KiB blocks changed between `from` (older) and `to` (newer).
    public func listChangedBlocks(from: VDIRef, to: VDIRef) async throws -> String {
        try await call(.vdiListChangedBlocks, [from.value, to.value]).stringValue ?? ""
    }
    public func dataDestroy(_ vdi: VDIRef) async throws { _ = try await call(.vdiDataDestroy, [vdi.value]) }
    public func nbdInfo(_ vdi: VDIRef) async throws -> [NBDServerInfo] {
        (try await call(.vdiGetNBDInfo, [vdi.value]).arrayValue ?? []).map { NBDServerInfo($0.structValue ?? [:]) }
    }
    public func destroy(_ vdi: VDIRef) async throws { _ = try await call(.vdiDestroy, [vdi.value]) }
    public func snapshot(_ vdi: VDIRef) async throws -> VDIRef {
        XenRef(try await call(.vdiSnapshot, [vdi.value, .structure([:])]).stringValue ?? "")
    }
    /// Creates a VDI; `record` holds at least SR, virtual_size, type, sharable, read_only, other_config.
    public func createVDI(_ record: [String: XenValue]) async throws -> VDIRef {
        XenRef(try await call(.vdiCreate, [.structure(record)]).stringValue ?? "")
    }
    public func createVDI(_ spec: NewVDI) async throws -> VDIRef { try await createVDI(spec.record) }
    public func setOtherConfig(_ vdi: VDIRef, key: String, value: String) async throws {
        _ = try await call(.vdiRemoveFromOtherConfig, [vdi.value, .string(key)])
        _ = try await call(.vdiAddToOtherConfig, [vdi.value, .string(key), .string(value)])
    }
    public func setNameLabel(_ vdi: VDIRef, _ name: String) async throws { _ = try await call(.vdiSetNameLabel, [vdi.value, .string(name)]) }

    // MARK: VBD

    public func createVBD(_ record: [String: XenValue]) async throws -> VBDRef {
        XenRef(try await call(.vbdCreate, [.structure(record)]).stringValue ?? "")
    }
    public func createVBD(_ spec: NewVBD) async throws -> VBDRef { try await createVBD(spec.record) }
    public func plug(_ vbd: VBDRef) async throws { _ = try await call(.vbdPlug, [vbd.value]) }
    public func unplug(_ vbd: VBDRef) async throws { _ = try await call(.vbdUnplug, [vbd.value]) }
    public func destroy(_ vbd: VBDRef) async throws { _ = try await call(.vbdDestroy, [vbd.value]) }
    public func createVIF(_ record: [String: XenValue]) async throws -> XenRef<VIFRecord> {
        XenRef(try await call(.vifCreate, [.structure(record)]).stringValue ?? "")
    }
    public func createVIF(_ spec: NewVIF) async throws -> XenRef<VIFRecord> { try await createVIF(spec.record) }
    public func destroy(_ vif: XenRef<VIFRecord>) async throws { _ = try await call(.vifDestroy, [vif.value]) }

    // MARK: network

    public func addPurpose(_ network: NetworkRef, _ purpose: String) async throws {
        _ = try await call(.networkAddPurpose, [network.value, .string(purpose)])
    }
    public func removePurpose(_ network: NetworkRef, _ purpose: String) async throws {
        _ = try await call(.networkRemovePurpose, [network.value, .string(purpose)])
    }

    // MARK: tasks

    public func createTask(label: String, description: String = "") async throws -> TaskRef {
        XenRef(try await call(.taskCreate, [.string(label), .string(description)]).stringValue ?? "")
    }
    public func destroy(_ task: TaskRef) async throws { _ = try await call(.taskDestroy, [task.value]) }
    public func cancel(_ task: TaskRef) async throws { _ = try await call(.taskCancel, [task.value]) }

    /// Waits for a task to finish, watching it with event.from; returns its result (the XML-RPC
    /// text xapi stores) or throws the task's error.
    public func wait(for task: TaskRef, timeout: Double = 3_600) async throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        var token = ""
        while Date() < deadline {
            let record = try await self.record(task)
            switch record.status {
            case .success: return record.result
            case .failure, .cancelled:
                let info = record.errorInfo
                throw XenAPIError(code: info.first ?? "INTERNAL_ERROR", parameters: Array(info.dropFirst()))
            case .pending, .cancelling:
                let batch = try await events(of: ["task/\(task.raw)"], token: token, timeout: 5)
                token = batch.token
            }
        }
        throw XenAPIError(code: "TASK_TIMEOUT", parameters: [task.raw])
    }

    /// Runs `Async.<method>`, waits, destroys the task, and returns the result value.
    public func callAndWait(_ method: XenMethod, _ params: [XenValue]) async throws -> XenValue {
        let task = try await callAsync(method, params)
        defer { Task { try? await self.destroy(task) } }
        let text = try await wait(for: task)
        if text.isEmpty { return .null }
        return (try? XMLRPC.parseValue(text)) ?? .string(text)
    }

    /// The pool's capabilities, logging in only when there is no session yet.
    public func currentCapabilities() async throws -> PoolCapabilities {
        if let c = capabilities { return c }
        if let c = try await ensureSession() { return c }
        return try await login()
    }
}

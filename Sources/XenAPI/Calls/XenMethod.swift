/// Every XenAPI method haven's client can send, with how many parameters it sends (the session
/// included, as xapi's data model counts them). A test checks each against the real data model.
public struct XenMethod: Sendable, Hashable, CustomStringConvertible {
    public let name: String
    /// Parameters sent, counting the session where there is one.
    public let arity: Int
    public let takesSession: Bool
    /// Parameters at the end that the real data model has but this variant leaves out, for older
    /// pools that do not know them (xapi fills defaults for omitted trailing parameters).
    public let omittedTrailing: Int

    init(_ name: String, _ arity: Int, session: Bool = true, omitting: Int = 0) {
        self.name = name
        self.arity = arity
        self.takesSession = session
        self.omittedTrailing = omitting
    }

    public var description: String { name }
    public var asyncName: String { "Async.\(name)" }

    /// True for a call that changes a pool's objects (not a read, a session, an event wait or a
    /// task's own bookkeeping): such calls are crash points (`CrashPoints`).
    public var changesPool: Bool {
        let parts = name.split(separator: ".", maxSplits: 1)
        guard parts.count == 2, !["session", "event", "task"].contains(parts[0]) else { return false }
        let message = parts[1]
        return !(message.hasPrefix("get_") || message == "list_changed_blocks")
    }

    static func getAllRecords(_ cls: String) -> XenMethod { XenMethod("\(cls).get_all_records", 1) }
    static func getRecord(_ cls: String) -> XenMethod { XenMethod("\(cls).get_record", 2) }

    /// The classes the client reads whole records of.
    static let recordClasses = ["pool", "host", "VM", "VM_metrics", "VM_guest_metrics", "VBD", "VDI", "SR", "PBD", "SM", "network", "PIF", "VIF", "task",
                                "message"]
}

extension XenMethod {
    public static let sessionLogin = XenMethod("session.login_with_password", 4, session: false)
    public static let sessionLogout = XenMethod("session.logout", 1)

    public static let poolGetAllRecords = getAllRecords("pool")
    public static let hostGetAllRecords = getAllRecords("host")
    public static let hostGetRecord = XenMethod("host.get_record", 2)
    public static let vmGetAllRecords = getAllRecords("VM")
    public static let vbdGetAllRecords = getAllRecords("VBD")
    public static let vdiGetAllRecords = getAllRecords("VDI")
    public static let srGetAllRecords = getAllRecords("SR")
    public static let pbdGetAllRecords = getAllRecords("PBD")
    public static let smGetAllRecords = getAllRecords("SM")
    public static let networkGetAllRecords = getAllRecords("network")
    public static let pifGetAllRecords = getAllRecords("PIF")
    public static let vifGetAllRecords = getAllRecords("VIF")
    public static let taskGetAllRecords = getAllRecords("task")
    public static let messageGetAllRecords = getAllRecords("message")

    public static let vmGetRecord = XenMethod("VM.get_record", 2)
    public static let vmGetByUUID = XenMethod("VM.get_by_uuid", 2)
    public static let vmSnapshot = XenMethod("VM.snapshot", 4)
    /// Pools before xapi 21.4 (CH 8.2, XCP-ng 8.2) know VM.snapshot without `ignore_vdis`.
    public static let vmSnapshotLegacy = XenMethod("VM.snapshot", 3, omitting: 1)
    public static let vmDestroy = XenMethod("VM.destroy", 2)
    public static let vmCreate = XenMethod("VM.create", 2)
    public static let vmClone = XenMethod("VM.clone", 3)
    public static let vmCopy = XenMethod("VM.copy", 4)
    public static let vmProvision = XenMethod("VM.provision", 2)
    public static let vmStart = XenMethod("VM.start", 4)
    public static let vmCleanShutdown = XenMethod("VM.clean_shutdown", 2)
    public static let vmHardShutdown = XenMethod("VM.hard_shutdown", 2)
    public static let vmSetNameLabel = XenMethod("VM.set_name_label", 3)
    public static let vmSetIsATemplate = XenMethod("VM.set_is_a_template", 3)
    public static let vmAddToOtherConfig = XenMethod("VM.add_to_other_config", 4)
    public static let vmRemoveFromOtherConfig = XenMethod("VM.remove_from_other_config", 3)
    public static let vmAddToBlockedOperations = XenMethod("VM.add_to_blocked_operations", 4)
    public static let vmRemoveFromBlockedOperations = XenMethod("VM.remove_from_blocked_operations", 3)
    public static let vmStartOn = XenMethod("VM.start_on", 5)
    public static let vmRevert = XenMethod("VM.revert", 2)
    public static let vmSetBlockedOperations = XenMethod("VM.set_blocked_operations", 3)
    public static let vmSetHARestartPriority = XenMethod("VM.set_ha_restart_priority", 3)
    public static let vmAddTags = XenMethod("VM.add_tags", 3)
    public static let vmRemoveTags = XenMethod("VM.remove_tags", 3)
    public static let vmSetXenstoreData = XenMethod("VM.set_xenstore_data", 3)
    public static let vmSetMemoryLimits = XenMethod("VM.set_memory_limits", 6)

    public static let vdiGetRecord = XenMethod("VDI.get_record", 2)
    public static let vdiGetByUUID = XenMethod("VDI.get_by_uuid", 2)
    public static let srGetByUUID = XenMethod("SR.get_by_uuid", 2)
    public static let vdiEnableCBT = XenMethod("VDI.enable_cbt", 2)
    public static let vdiDisableCBT = XenMethod("VDI.disable_cbt", 2)
    public static let vdiListChangedBlocks = XenMethod("VDI.list_changed_blocks", 3)
    public static let vdiDataDestroy = XenMethod("VDI.data_destroy", 2)
    public static let vdiGetNBDInfo = XenMethod("VDI.get_nbd_info", 2)
    public static let vdiCreate = XenMethod("VDI.create", 2)
    public static let vdiDestroy = XenMethod("VDI.destroy", 2)
    public static let vdiSnapshot = XenMethod("VDI.snapshot", 3)
    public static let vdiAddToOtherConfig = XenMethod("VDI.add_to_other_config", 4)
    public static let vdiRemoveFromOtherConfig = XenMethod("VDI.remove_from_other_config", 3)
    public static let vdiSetNameLabel = XenMethod("VDI.set_name_label", 3)

    public static let vbdGetRecord = XenMethod("VBD.get_record", 2)
    public static let vbdCreate = XenMethod("VBD.create", 2)
    public static let vbdPlug = XenMethod("VBD.plug", 2)
    public static let vbdUnplug = XenMethod("VBD.unplug", 2)
    public static let vbdDestroy = XenMethod("VBD.destroy", 2)

    public static let vifCreate = XenMethod("VIF.create", 2)
    public static let vifDestroy = XenMethod("VIF.destroy", 2)
    public static let vifGetRecord = XenMethod("VIF.get_record", 2)
    public static let vmMetricsGetRecord = XenMethod("VM_metrics.get_record", 2)

    public static let networkAddPurpose = XenMethod("network.add_purpose", 3)
    public static let networkRemovePurpose = XenMethod("network.remove_purpose", 3)

    public static let taskCreate = XenMethod("task.create", 3)
    public static let taskGetRecord = XenMethod("task.get_record", 2)
    public static let taskCancel = XenMethod("task.cancel", 2)
    public static let taskDestroy = XenMethod("task.destroy", 2)

    public static let eventFrom = XenMethod("event.from", 4)
    public static let eventInject = XenMethod("event.inject", 3)

    public static let all: [XenMethod] = [
        sessionLogin, sessionLogout, poolGetAllRecords, hostGetAllRecords, hostGetRecord, vmGetAllRecords,
        vbdGetAllRecords, vdiGetAllRecords, srGetAllRecords, pbdGetAllRecords, smGetAllRecords, networkGetAllRecords,
        pifGetAllRecords, vifGetAllRecords, taskGetAllRecords, messageGetAllRecords, vmGetRecord, vmGetByUUID,
        vmSnapshot, vmSnapshotLegacy, vmDestroy, vmCreate, vmClone, vmCopy, vmProvision, vmStart, vmCleanShutdown,
        vmHardShutdown, vmSetNameLabel, vmSetIsATemplate, vmAddToOtherConfig, vmRemoveFromOtherConfig,
        vmAddToBlockedOperations, vmRemoveFromBlockedOperations, vmStartOn, vmRevert, vmSetBlockedOperations,
        vmSetHARestartPriority, vifGetRecord, vmMetricsGetRecord, vmAddTags, vmRemoveTags, vmSetXenstoreData, vmSetMemoryLimits, vdiGetRecord, vdiGetByUUID, srGetByUUID,
        vdiEnableCBT, vdiDisableCBT, vdiListChangedBlocks, vdiDataDestroy, vdiGetNBDInfo, vdiCreate, vdiDestroy,
        vdiSnapshot, vdiAddToOtherConfig, vdiRemoveFromOtherConfig, vdiSetNameLabel, vbdGetRecord, vbdCreate, vbdPlug,
        vbdUnplug, vbdDestroy, vifCreate, vifDestroy, networkAddPurpose, networkRemovePurpose, taskCreate, taskGetRecord,
        taskCancel, taskDestroy, eventFrom, eventInject,
    ] + recordClasses.flatMap { [getAllRecords($0), getRecord($0)] }
}

extension XenMethod {
    /// A method outside the catalogue; for tests that probe a server's dispatch.
    public static func testing(_ name: String, _ arity: Int) -> XenMethod { XenMethod(name, arity) }
}

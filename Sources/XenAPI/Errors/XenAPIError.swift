/// An error as xapi reports it: a code and its parameters, e.g. `VDI_IN_USE [vdi, operation]`.
/// Matched by code; `isTransient` says whether the same call may succeed a little later.
public struct XenAPIError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: String
    public var parameters: [String]

    public init(code: String, parameters: [String] = []) {
        self.code = code
        self.parameters = parameters
    }

    public var description: String {
        parameters.isEmpty ? code : "\(code) [\(parameters.joined(separator: ", "))]"
    }

    /// Codes that describe a passing state of the pool, worth retrying with backoff.
    public static let transientCodes: Set<String> = [
        Code.vdiInUse, Code.otherOperationInProgress, Code.hostIsSlave, Code.sessionInvalid, "TOO_BUSY",
        "HOST_OFFLINE", "HOST_STILL_BOOTING", "VBD_NOT_UNPLUGGABLE", "DEVICE_DETACH_REJECTED", "HOST_NOT_LIVE",
        "CANNOT_CONTACT_HOST",
    ]

    public var isTransient: Bool { Self.transientCodes.contains(code) }

    /// The xapi codes haven acts on. Every one exists in xapi (checked against the data model in tests).
    public enum Code {
        public static let sessionAuthenticationFailed = "SESSION_AUTHENTICATION_FAILED"
        public static let sessionInvalid = "SESSION_INVALID"
        public static let hostIsSlave = "HOST_IS_SLAVE"
        public static let handleInvalid = "HANDLE_INVALID"
        public static let uuidInvalid = "UUID_INVALID"
        public static let messageMethodUnknown = "MESSAGE_METHOD_UNKNOWN"
        public static let messageParameterCountMismatch = "MESSAGE_PARAMETER_COUNT_MISMATCH"
        public static let messageRemoved = "MESSAGE_REMOVED"
        public static let operationNotAllowed = "OPERATION_NOT_ALLOWED"
        public static let operationBlocked = "OPERATION_BLOCKED"
        public static let vmBadPowerState = "VM_BAD_POWER_STATE"
        public static let vmIsTemplate = "VM_IS_TEMPLATE"
        public static let vmIsSnapshot = "VM_IS_SNAPSHOT"
        public static let otherOperationInProgress = "OTHER_OPERATION_IN_PROGRESS"
        public static let srFull = "SR_FULL"
        public static let srOperationNotSupported = "SR_OPERATION_NOT_SUPPORTED"
        public static let vdiInUse = "VDI_IN_USE"
        public static let vdiReadonly = "VDI_READONLY"
        public static let vdiMissing = "VDI_MISSING"
        public static let vdiIncompatibleType = "VDI_INCOMPATIBLE_TYPE"
        public static let vdiNoCBTMetadata = "VDI_NO_CBT_METADATA"
        public static let vdiCBTEnabled = "VDI_CBT_ENABLED"
        public static let vdiOnBootModeIncompatible = "VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION"
        public static let licenceRestriction = "LICENCE_RESTRICTION"
        public static let taskCancelled = "TASK_CANCELLED"
        public static let mapDuplicateKey = "MAP_DUPLICATE_KEY"
        public static let invalidValue = "INVALID_VALUE"
        public static let eventFromTokenParseFailure = "EVENT_FROM_TOKEN_PARSE_FAILURE"
        public static let eventSubscriptionParseFailure = "EVENT_SUBSCRIPTION_PARSE_FAILURE"
        public static let networkIncompatiblePurposes = "NETWORK_INCOMPATIBLE_PURPOSES"
        public static let deviceAlreadyAttached = "DEVICE_ALREADY_ATTACHED"
        public static let deviceAlreadyDetached = "DEVICE_ALREADY_DETACHED"
        public static let vmSnapshotWithQuiesceNotSupported = "VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED"
        public static let importError = "IMPORT_ERROR"
        public static let internalError = "INTERNAL_ERROR"
        /// SM's "changed blocks" failure: unrelated or identical VDIs, a broken CBT chain.
        public static let cbtChangedBlocksError = "SR_BACKEND_FAILURE_460"

        /// Every code above, for the test that checks each against xapi's own list.
        public static let all: [String] = [
            sessionAuthenticationFailed, sessionInvalid, hostIsSlave, handleInvalid, uuidInvalid, messageMethodUnknown,
            messageParameterCountMismatch, messageRemoved, operationNotAllowed, operationBlocked, vmBadPowerState,
            vmIsTemplate, vmIsSnapshot, otherOperationInProgress, srFull, srOperationNotSupported, vdiInUse, vdiReadonly,
            vdiMissing, vdiIncompatibleType, vdiNoCBTMetadata, vdiCBTEnabled, vdiOnBootModeIncompatible,
            licenceRestriction, taskCancelled, mapDuplicateKey, invalidValue, eventFromTokenParseFailure,
            eventSubscriptionParseFailure, networkIncompatiblePurposes, deviceAlreadyAttached, deviceAlreadyDetached,
            vmSnapshotWithQuiesceNotSupported, importError, internalError, cbtChangedBlocksError,
        ]
    }
}

import Foundation

/// Which VMs of a pool are backed up, how, where to, and for how long.
public struct BackupPolicySpec: ResourceSpec, Hashable {
    public static let kind = ResourceKind.backupPolicy

    public enum Method: String, Sendable, Hashable, Codable, CaseIterable {
        /// CBT where the pool supports it (and `cbt` is true), else rolling-snapshot VHD deltas.
        case auto, cbt, delta, xva
    }

    public enum Quiesce: String, Sendable, Hashable, Codable, CaseIterable { case prefer, require, off }
    public enum OnError: String, Sendable, Hashable, Codable, CaseIterable { case fail, `continue` }

    /// A command run around the snapshot, without a shell.
    public struct Hook: Sendable, Hashable, Encodable {
        public var command: [String]
        public var timeout: SpecDuration
        public var onError: OnError

        static func shape(_ path: String) -> ObjectShape {
            ObjectShape(
                path: path,
                fields: [
                    FieldInfo("command", .list(.text), required: true,
                              "Program and arguments, run directly (no shell); the first item is the program."),
                    FieldInfo("timeout", .duration, default: "5m", "Kill the hook after this long."),
                    FieldInfo("onError", .enumeration(OnError.allCases.map(\.rawValue)), default: "fail",
                              "fail: skip this VM's backup; continue: log and go on."),
                ])
        }

        init?(_ r: MappingReader?) {
            guard let r else { return nil }
            command = r.stringList("command")?.map(\.value) ?? []
            if r.has("command") && command.isEmpty {
                r.context.sink.error(.invalidValue, at: r.valueLocation("command"), "'\(r.path("command"))' must name a program")
            }
            timeout = r.duration("timeout") ?? SpecDuration(seconds: 300)
            onError = r.enumeration("onError", OnError.self) ?? .fail
        }
    }

    public struct Hooks: Sendable, Hashable, Encodable {
        public var preSnapshot: Hook?
        public var postSnapshot: Hook?

        static let shape = ObjectShape(
            path: "spec.hooks",
            fields: [
                FieldInfo("preSnapshot", .object(Hook.shape("spec.hooks.preSnapshot")), "Run before the snapshot."),
                FieldInfo("postSnapshot", .object(Hook.shape("spec.hooks.postSnapshot")), "Run after the snapshot, whatever its outcome."),
            ])
    }

    /// Grandfather-father-son retention: `keepLast` newest plus the newest in each of the last
    /// N hours/days/weeks/months/years that have a backup.
    public struct Retention: Sendable, Hashable, Encodable {
        public var keepLast: Int
        public var hourly: Int
        public var daily: Int
        public var weekly: Int
        public var monthly: Int
        public var yearly: Int

        public static let `default` = Retention(keepLast: 7, hourly: 0, daily: 0, weekly: 0, monthly: 0, yearly: 0)

        public init(keepLast: Int, hourly: Int, daily: Int, weekly: Int, monthly: Int, yearly: Int) {
            self.keepLast = keepLast
            self.hourly = hourly
            self.daily = daily
            self.weekly = weekly
            self.monthly = monthly
            self.yearly = yearly
        }

        public var keepsNothing: Bool { keepLast + hourly + daily + weekly + monthly + yearly == 0 }

        static let shape = ObjectShape(
            path: "spec.retention",
            fields: [
                FieldInfo("keepLast", .integer(min: 0, max: nil), default: "7 (when retention is absent), else 0", "Newest backups kept."),
                FieldInfo("hourly", .integer(min: 0, max: nil), default: "0", "Hours with a backup whose newest is kept."),
                FieldInfo("daily", .integer(min: 0, max: nil), default: "0", "Days with a backup whose newest is kept."),
                FieldInfo("weekly", .integer(min: 0, max: nil), default: "0", "ISO weeks with a backup whose newest is kept."),
                FieldInfo("monthly", .integer(min: 0, max: nil), default: "0", "Months with a backup whose newest is kept."),
                FieldInfo("yearly", .integer(min: 0, max: nil), default: "0", "Years with a backup whose newest is kept."),
            ])
    }

    public var pool: Located<String>
    public var vms: VMSelector
    public var schedule: Schedule
    public var cbt: Bool
    public var method: Method
    public var quiesce: Quiesce
    public var hooks: Hooks
    public var excludeDisks: [Located<String>]
    public var repository: Located<String>
    public var retention: Retention
    public var snapshotRetention: Int
    public var purgeSnapshotData: Bool
    public var appliances: Located<String>?
    public var suspend: Bool

    public static let shape = ObjectShape(
        path: "spec",
        fields: [
            FieldInfo("pool", .reference(kind: "Pool"), required: true, "The Pool whose VMs are backed up."),
            FieldInfo("vms", .object(VMSelector.shape("spec.vms")), required: true, "Which VMs."),
            FieldInfo("schedule", .object(Schedule.shape("spec.schedule", defaultEvery: "24h")), default: "every: 24h", "When."),
            FieldInfo("cbt", .boolean, default: "true (false with method: xva or delta)",
                      "Enable changed-block tracking on the VMs' disks where the pool supports it."),
            FieldInfo("method", .enumeration(Method.allCases.map(\.rawValue)), default: "auto",
                      "auto: CBT where possible (cbt true, licensed, API 2.8+, CBT-capable SRs), else VHD deltas; cbt; delta (VHD delta against the previous backup's snapshot, kept on the pool); xva (whole-VM export)."),
            FieldInfo("quiesce", .enumeration(Quiesce.allCases.map(\.rawValue)), default: "off",
                      "Application-consistent snapshots: prefer (fall back to crash-consistent), require, off."),
            FieldInfo("hooks", .object(Hooks.shape), "Commands run before and after the snapshot."),
            FieldInfo("excludeDisks", .list(.stringOrInteger), default: "[]",
                      "Disks not backed up: VBD userdevice (0, 1, ...), device (xvdb) or VDI name_label or uuid."),
            FieldInfo("repository", .reference(kind: "Repository"), required: true, "Where backups go."),
            FieldInfo("retention", .object(Retention.shape), default: "keepLast: 7", "How long backups are kept."),
            FieldInfo("snapshotRetention", .integer(min: 0, max: 100), default: "1",
                      "Snapshots kept on the pool when purgeSnapshotData is false. With VHD deltas the newest snapshot's disks are kept as the delta base either way; 0 keeps none (every backup reads whole disks)."),
            FieldInfo("purgeSnapshotData", .boolean, default: "true",
                      "After a CBT backup, destroy the snapshot's data and keep only its CBT metadata. With VHD deltas: remove the snapshot VM and keep only its disks, whole, as the next delta's base."),
            FieldInfo("appliances", .reference(kind: "AppliancePool"), "AppliancePool whose appliances move the data."),
            FieldInfo("suspend", .boolean, default: "false", "Plan nothing for this policy."),
        ])
}

extension BackupPolicySpec {
    init(_ r: MappingReader) {
        let ctx = r.context
        pool = r.string("pool") ?? Located("", at: r.location)
        vms = VMSelector(r.mapping("vms"))
        schedule = Schedule(r.mapping("schedule"), defaultEvery: SpecDuration(seconds: 86_400))
        method = r.enumeration("method", Method.self) ?? .auto
        let explicitCBT = r.bool("cbt")
        cbt = explicitCBT ?? (method != .xva && method != .delta)
        if explicitCBT == true, method == .xva {
            ctx.sink.error(
                .cbtWithXVA, at: r.valueLocation("method"),
                "\(ctx.resource): 'cbt: true' cannot be combined with 'method: xva' (an XVA export copies the whole VM and uses no changed-block tracking); set 'cbt: false' or use method auto, cbt or delta")
        }
        if explicitCBT == true, method == .delta {
            ctx.sink.error(
                .conflictingFields, at: r.valueLocation("method"),
                "\(ctx.resource): 'cbt: true' cannot be combined with 'method: delta' (VHD deltas compare against a kept snapshot, without changed-block tracking); set 'cbt: false' or use method auto or cbt")
        }
        if explicitCBT == false, method == .cbt {
            ctx.sink.error(
                .conflictingFields, at: r.valueLocation("method"),
                "\(ctx.resource): 'method: cbt' needs changed-block tracking but 'cbt' is false")
        }
        quiesce = r.enumeration("quiesce", Quiesce.self) ?? .off
        var hooks = Hooks(preSnapshot: nil, postSnapshot: nil)
        if let h = r.mapping("hooks") {
            hooks.preSnapshot = Hook(h.mapping("preSnapshot"))
            hooks.postSnapshot = Hook(h.mapping("postSnapshot"))
        }
        self.hooks = hooks
        excludeDisks = r.stringList("excludeDisks") ?? []
        repository = r.string("repository") ?? Located("", at: r.location)
        if let rr = r.mapping("retention") {
            var unreadable = false
            func value(_ key: String) -> Int {
                if let v = rr.int(key) { return v }
                if rr.has(key) { unreadable = true }
                return 0
            }
            retention = Retention(
                keepLast: value("keepLast"), hourly: value("hourly"), daily: value("daily"),
                weekly: value("weekly"), monthly: value("monthly"), yearly: value("yearly"))
            if retention.keepsNothing && !unreadable && !rr.hadUnknownKeys {
                ctx.sink.error(
                    .retentionKeepsNothing, at: rr.location,
                    "\(ctx.resource): 'spec.retention' keeps nothing; set keepLast or at least one of hourly, daily, weekly, monthly, yearly above 0")
            }
        } else {
            retention = .default
        }
        snapshotRetention = r.int("snapshotRetention") ?? 1
        purgeSnapshotData = r.bool("purgeSnapshotData") ?? true
        appliances = r.string("appliances")
        suspend = r.bool("suspend") ?? false
    }
}

import Foundation

/// Which VMs of a pool a policy covers. A VM matches when it is named, listed by uuid or carries
/// one of the tags (or `all` is set), and is not excluded by name or uuid.
public struct VMSelector: Sendable, Hashable, Encodable {
    public var all: Bool
    public var names: [Located<String>]
    public var uuids: [Located<String>]
    public var tags: [Located<String>]
    public var exclude: [Located<String>]

    static func shape(_ path: String) -> ObjectShape {
        ObjectShape(
            path: path,
            fields: [
                FieldInfo("all", .boolean, default: "false", "Every VM of the pool (templates, snapshots and dom0 never count)."),
                FieldInfo("names", .list(.text), default: "[]", "VM name_labels."),
                FieldInfo("uuids", .list(.string(pattern: uuidPattern)), default: "[]", "VM uuids."),
                FieldInfo("tags", .list(.text), default: "[]", "VMs carrying any of these tags."),
                FieldInfo("exclude", .list(.text), default: "[]", "Names or uuids left out even when matched above."),
            ],
            oneRequired: [["all", "names", "uuids", "tags"]])
    }

    static let uuidPattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

    /// Whether a VM with this name, uuid and tags is covered.
    public func matches(name: String, uuid: String, tags vmTags: [String]) -> Bool {
        if exclude.contains(where: { $0.value == name || $0.value.lowercased() == uuid.lowercased() }) { return false }
        if all { return true }
        if names.contains(where: { $0.value == name }) { return true }
        if uuids.contains(where: { $0.value.lowercased() == uuid.lowercased() }) { return true }
        return tags.contains { vmTags.contains($0.value) }
    }

    init(_ r: MappingReader?) {
        all = r?.bool("all") ?? false
        names = r?.stringList("names") ?? []
        uuids = []
        tags = r?.stringList("tags") ?? []
        exclude = r?.stringList("exclude") ?? []
        guard let r else { return }
        for u in r.stringList("uuids") ?? [] {
            if isUUID(u.value) {
                uuids.append(u)
            } else {
                r.context.sink.error(.invalidValue, at: u.location, "'\(u.value)' in '\(r.path("uuids"))' is not a uuid")
            }
        }
    }
}

func isUUID(_ s: String) -> Bool {
    let parts = s.split(separator: "-", omittingEmptySubsequences: false)
    return parts.map(\.count) == [8, 4, 4, 4, 12] && parts.allSatisfy { $0.allSatisfy(\.isHexDigit) }
}

/// When a policy runs: a fixed interval, or a cron expression in a time zone.
public struct Schedule: Sendable, Hashable, Encodable {
    public var every: SpecDuration?
    public var cron: CronSchedule?
    public var timezone: String

    static func shape(_ path: String, defaultEvery: String) -> ObjectShape {
        ObjectShape(
            path: path,
            fields: [
                FieldInfo("every", .duration, default: defaultEvery, "Run when the newest good copy is older than this."),
                FieldInfo("cron", .cron, "Five-field cron expression or @daily-style macro."),
                FieldInfo("timezone", .timezone, default: "UTC", "IANA time zone the cron expression is read in."),
            ],
            exclusive: [["every", "cron"]])
    }

    /// The longest interval a schedule may have: 366 days.
    static let maxEvery = SpecDuration(seconds: 366 * 86_400)

    init(_ r: MappingReader?, defaultEvery: SpecDuration) {
        timezone = "UTC"
        every = nil
        cron = nil
        guard let r else {
            every = defaultEvery
            return
        }
        every = r.duration("every")
        if let e = every, e.seconds < 60 {
            r.context.sink.error(
                .invalidDuration, at: r.valueLocation("every"), "'\(r.path("every"))' must be at least 1m, found \(e)")
        } else if let e = every, e.seconds > Self.maxEvery.seconds {
            // Beyond a year the interval is a typo, and near Int64.max seconds date arithmetic
            // overflows: the RPO would read "met" forever.
            r.context.sink.error(
                .invalidDuration, at: r.valueLocation("every"),
                "'\(r.path("every"))' must be at most \(Self.maxEvery) (a year), found \(e)")
            every = nil
        }
        cron = r.parsed("cron", as: "cron expression", code: .invalidCron, CronSchedule.parse)
        if let tz = r.string("timezone") {
            if TimeZone(identifier: tz.value) != nil {
                timezone = tz.value
            } else {
                r.context.sink.error(
                    .invalidTimezone, at: tz.location,
                    "unknown time zone '\(tz.value)' for '\(r.path("timezone"))' (use an IANA name such as Europe/Berlin or UTC)")
            }
        }
        if !r.has("every") && !r.has("cron") { every = defaultEvery }
    }
}

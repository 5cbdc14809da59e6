import Foundation

/// VMs kept in sync as replicas on another pool (or another SR of the same pool).
public struct ReplicationPolicySpec: ResourceSpec, Hashable {
    public static let kind = ResourceKind.replicationPolicy

    public enum Direction: String, Sendable, Hashable, Codable, CaseIterable {
        /// The source side sends.
        case push
        /// The target side fetches: for DR sites that may only open connections outward.
        case pull
    }

    public enum Method: String, Sendable, Hashable, Codable, CaseIterable { case cbt, abd, xva }

    public struct Target: Sendable, Hashable, Encodable {
        public var pool: Located<String>
        public var sr: String?
        public var networkMap: [String: String]
        public var namePrefix: String

        static let shape = ObjectShape(
            path: "spec.target",
            fields: [
                FieldInfo("pool", .reference(kind: "Pool"), required: true, "The Pool the replicas live on."),
                FieldInfo("sr", .text, "name_label of the SR for replica disks; the pool's default SR when unset."),
                FieldInfo("networkMap", .stringMap, "Source network name_label -> target network name_label."),
                FieldInfo("namePrefix", .text, default: "\"replica-\"", "Prefix of replica VM names."),
            ])
    }

    public struct SinglePass: Sendable, Hashable, Encodable {
        public var repository: Located<String>

        static let shape = ObjectShape(
            path: "spec.singlePass",
            fields: [
                FieldInfo("repository", .reference(kind: "Repository"), required: true,
                          "Also record each transfer as a backup version in this repository."),
            ])
    }

    public struct Appliances: Sendable, Hashable, Encodable {
        public var source: Located<String>?
        public var target: Located<String>?

        static let shape = ObjectShape(
            path: "spec.appliances",
            fields: [
                FieldInfo("source", .reference(kind: "AppliancePool"), "AppliancePool on the source pool."),
                FieldInfo("target", .reference(kind: "AppliancePool"), "AppliancePool on the target pool."),
            ])
    }

    public var source: Located<String>
    public var vms: VMSelector
    public var target: Target
    public var direction: Direction
    public var method: Method
    public var schedule: Schedule
    public var keep: Int
    public var trustDestination: Bool
    public var singlePass: SinglePass?
    public var reverse: Bool
    public var appliances: Appliances
    public var suspend: Bool

    /// Location of `method`, for checks that need appliances.
    var methodLocation: SourceLocation
    var targetLocation: SourceLocation

    enum CodingKeys: String, CodingKey {
        case source, vms, target, direction, method, schedule, keep, trustDestination, singlePass, reverse, appliances, suspend
    }

    public static let shape = ObjectShape(
        path: "spec",
        fields: [
            FieldInfo("source", .reference(kind: "Pool"), required: true, "The Pool whose VMs are replicated."),
            FieldInfo("vms", .object(VMSelector.shape("spec.vms")), required: true, "Which VMs."),
            FieldInfo("target", .object(Target.shape), required: true, "Where replicas live."),
            FieldInfo("direction", .enumeration(Direction.allCases.map(\.rawValue)), default: "push",
                      "push: the source side sends; pull: the target side fetches."),
            FieldInfo("method", .enumeration(Method.allCases.map(\.rawValue)), default: "cbt",
                      "cbt: changed blocks over NBD; abd: through appliances; xva: whole-VM export and import."),
            FieldInfo("schedule", .object(Schedule.shape("spec.schedule", defaultEvery: "1h")), default: "every: 1h", "When."),
            FieldInfo("keep", .integer(min: 1, max: 100), default: "3", "Restore points kept on the target as snapshots (method xva: one, each run brings a new replica)."),
            FieldInfo("trustDestination", .boolean, default: "false",
                      "Skip checking that the replica was not started or written since the last sync."),
            FieldInfo("singlePass", .object(SinglePass.shape), "Record a backup in a repository with the same read (incremental with method cbt); kept until `haven backups forget`."),
            FieldInfo("reverse", .boolean, default: "false",
                      "Fail back after `haven failover`: send what the replica changed back onto the halted original VM, then sync in the normal direction again (`haven failback` does it once)."),
            FieldInfo("appliances", .object(Appliances.shape), "AppliancePools moving the data (needed by method abd)."),
            FieldInfo("suspend", .boolean, default: "false", "Plan nothing for this policy."),
        ])
}

extension ReplicationPolicySpec {
    init(_ r: MappingReader) {
        source = r.string("source") ?? Located("", at: r.location)
        vms = VMSelector(r.mapping("vms"))
        targetLocation = r.keyLocation("target")
        if let t = r.mapping("target") {
            target = Target(
                pool: t.string("pool") ?? Located("", at: t.location), sr: t.string("sr")?.value,
                networkMap: t.stringMap("networkMap") ?? [:], namePrefix: t.string("namePrefix")?.value ?? "replica-")
        } else {
            target = Target(pool: Located("", at: r.location), sr: nil, networkMap: [:], namePrefix: "replica-")
        }
        direction = r.enumeration("direction", Direction.self) ?? .push
        method = r.enumeration("method", Method.self) ?? .cbt
        methodLocation = r.has("method") ? r.valueLocation("method") : r.location
        schedule = Schedule(r.mapping("schedule"), defaultEvery: SpecDuration(seconds: 3_600))
        keep = r.int("keep") ?? 3
        trustDestination = r.bool("trustDestination") ?? false
        singlePass = r.mapping("singlePass").map { SinglePass(repository: $0.string("repository") ?? Located("", at: $0.location)) }
        reverse = r.bool("reverse") ?? false
        if let a = r.mapping("appliances") {
            appliances = Appliances(source: a.string("source"), target: a.string("target"))
        } else {
            appliances = Appliances(source: nil, target: nil)
        }
        suspend = r.bool("suspend") ?? false
    }
}

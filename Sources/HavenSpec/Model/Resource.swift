import Foundation

/// The five kinds of resource a desired-state directory declares.
public enum ResourceKind: String, CaseIterable, Sendable, Codable, Comparable {
    case pool = "Pool"
    case repository = "Repository"
    case appliancePool = "AppliancePool"
    case backupPolicy = "BackupPolicy"
    case replicationPolicy = "ReplicationPolicy"

    public static func < (lhs: ResourceKind, rhs: ResourceKind) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// The `apiVersion` every document must carry.
public let havenAPIVersion = "haven/v1"

/// `metadata` of a document.
public struct Metadata: Sendable, Hashable, Encodable {
    public var name: String
    public var labels: [String: String]
    public var annotations: [String: String]

    static let shape = ObjectShape(
        path: "metadata",
        fields: [
            FieldInfo("name", .string(pattern: Metadata.namePattern), required: true,
                      "Name of the resource, unique within its kind: lowercase letters, digits and '-', at most 63 characters."),
            FieldInfo("labels", .stringMap, "Free-form key/value labels."),
            FieldInfo("annotations", .stringMap, "Free-form key/value notes for people and tools."),
        ])

    public static let namePattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"

    static func isValidName(_ name: String) -> Bool {
        guard (1...63).contains(name.count), let first = name.first, let last = name.last else { return false }
        let allowed = name.allSatisfy { ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "-" }
        return allowed && first != "-" && last != "-"
    }
}

/// The spec part of a resource kind.
public protocol ResourceSpec: Sendable, Encodable {
    static var kind: ResourceKind { get }
    static var shape: ObjectShape { get }
}

/// One declared resource: its metadata, its validated spec, and where it was written.
public struct Resource<Spec: ResourceSpec>: Sendable, Encodable {
    public var metadata: Metadata
    public var spec: Spec
    /// Where the document starts.
    public var source: SourceLocation
    /// Where `metadata.name` was written.
    public var nameLocation: SourceLocation

    public var name: String { metadata.name }
    public var kind: ResourceKind { Spec.kind }

    public init(metadata: Metadata, spec: Spec, source: SourceLocation, nameLocation: SourceLocation? = nil) {
        self.metadata = metadata
        self.spec = spec
        self.source = source
        self.nameLocation = nameLocation ?? source
    }

    enum CodingKeys: String, CodingKey { case apiVersion, kind, metadata, spec, source }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(havenAPIVersion, forKey: .apiVersion)
        try c.encode(Spec.kind, forKey: .kind)
        try c.encode(metadata, forKey: .metadata)
        try c.encode(spec, forKey: .spec)
        try c.encode(source.description, forKey: .source)
    }
}

public typealias Pool = Resource<PoolSpec>
public typealias Repository = Resource<RepositorySpec>
public typealias AppliancePool = Resource<AppliancePoolSpec>
public typealias BackupPolicy = Resource<BackupPolicySpec>
public typealias ReplicationPolicy = Resource<ReplicationPolicySpec>

/// Everything a directory declares, validated. Order within a kind is file order.
public struct DesiredState: Sendable, Encodable {
    public var pools: [Pool] = []
    public var repositories: [Repository] = []
    public var appliancePools: [AppliancePool] = []
    public var backupPolicies: [BackupPolicy] = []
    public var replicationPolicies: [ReplicationPolicy] = []

    public init() {}

    public func pool(named name: String) -> Pool? { pools.first { $0.name == name } }
    public func repository(named name: String) -> Repository? { repositories.first { $0.name == name } }
    public func appliancePool(named name: String) -> AppliancePool? { appliancePools.first { $0.name == name } }

    public var resourceCount: Int {
        pools.count + repositories.count + appliancePools.count + backupPolicies.count + replicationPolicies.count
    }

    public func count(of kind: ResourceKind) -> Int {
        switch kind {
        case .pool: pools.count
        case .repository: repositories.count
        case .appliancePool: appliancePools.count
        case .backupPolicy: backupPolicies.count
        case .replicationPolicy: replicationPolicies.count
        }
    }

    enum CodingKeys: String, CodingKey { case apiVersion, pools, repositories, appliancePools, backupPolicies, replicationPolicies }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(havenAPIVersion, forKey: .apiVersion)
        try c.encode(pools, forKey: .pools)
        try c.encode(repositories, forKey: .repositories)
        try c.encode(appliancePools, forKey: .appliancePools)
        try c.encode(backupPolicies, forKey: .backupPolicies)
        try c.encode(replicationPolicies, forKey: .replicationPolicies)
    }
}

extension DesiredState {
    /// The desired state as canonical JSON: resources sorted by kind and name, keys sorted, no
    /// source locations. Equal configurations give equal bytes wherever their files lie, so a
    /// saved plan's fingerprint changes exactly when what is declared changes.
    public func canonicalEncoding() throws -> Data {
        struct Entry<S: ResourceSpec>: Encodable {
            let metadata: Metadata
            let spec: S
        }
        struct Canonical: Encodable {
            let apiVersion: String
            let pools: [Entry<PoolSpec>]
            let repositories: [Entry<RepositorySpec>]
            let appliancePools: [Entry<AppliancePoolSpec>]
            let backupPolicies: [Entry<BackupPolicySpec>]
            let replicationPolicies: [Entry<ReplicationPolicySpec>]
        }
        func entries<S>(_ list: [Resource<S>]) -> [Entry<S>] {
            list.sorted { $0.name < $1.name }.map { Entry(metadata: $0.metadata, spec: $0.spec) }
        }
        let c = Canonical(apiVersion: havenAPIVersion, pools: entries(pools), repositories: entries(repositories),
                          appliancePools: entries(appliancePools), backupPolicies: entries(backupPolicies),
                          replicationPolicies: entries(replicationPolicies))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(c)
    }
}

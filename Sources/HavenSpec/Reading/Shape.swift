/// What a field holds; the single description from which the reader checks keys, the JSON
/// Schema is generated and the reference page lists defaults.
public indirect enum FieldType: Sendable {
    case string(pattern: String?)
    case integer(min: Int?, max: Int?)
    case boolean
    case duration
    case size
    case cron
    case timezone
    case compression
    case url
    case ipAddress
    case addressRange
    case enumeration([String])
    /// The `metadata.name` of a resource of the named kind.
    case reference(kind: String)
    case list(FieldType)
    case stringMap
    case object(ObjectShape)
    /// A list item that may be written as a number or text (e.g. a disk's userdevice `1`).
    case stringOrInteger

    public static let text = FieldType.string(pattern: nil)
}

/// One key of a YAML mapping.
public struct FieldInfo: Sendable {
    public var name: String
    public var type: FieldType
    public var required: Bool
    /// The default as a user would write it, or nil when absence means "not set".
    public var defaultValue: String?
    public var doc: String

    public init(_ name: String, _ type: FieldType, required: Bool = false, default defaultValue: String? = nil, _ doc: String) {
        self.name = name
        self.type = type
        self.required = required
        self.defaultValue = defaultValue
        self.doc = doc
    }
}

/// The keys a YAML mapping may hold, and which of them exclude each other.
public struct ObjectShape: Sendable {
    /// Dotted path used in messages, e.g. `spec.retention`.
    public var path: String
    public var fields: [FieldInfo]
    /// Groups of which at most one key may be set.
    public var exclusive: [[String]]
    /// Groups of which at least one key must be set.
    public var oneRequired: [[String]]

    public init(path: String, fields: [FieldInfo], exclusive: [[String]] = [], oneRequired: [[String]] = []) {
        self.path = path
        self.fields = fields
        self.exclusive = exclusive
        self.oneRequired = oneRequired
    }

    public func field(_ name: String) -> FieldInfo? { fields.first { $0.name == name } }
    public var names: [String] { fields.map(\.name) }
}

/// Key names that always hold a secret: never accepted inline, with a hint where the secret belongs.
enum SecretKeys {
    static func hint(forKey key: String, allowed: [String]) -> String? {
        let lower = key.lowercased()
        let secretish = ["password", "passwd", "pass", "secret", "token", "apikey", "api_key", "passphrase", "key",
                         "privatekey", "private_key", "credentials"]
        guard secretish.contains(lower) || lower.hasSuffix("password") || lower.hasSuffix("secret")
            || lower.hasSuffix("token")
        else { return nil }
        let indirect = allowed.filter { $0.hasSuffix("Env") || $0.hasSuffix("File") }
        let related = indirect.filter { $0.lowercased().hasPrefix(lower) }
        let alternatives = related.isEmpty ? indirect : related
        if alternatives.isEmpty {
            return "secrets must not be written in YAML; keep them in a file or an environment variable"
        }
        let list = alternatives.map { "'\($0)'" }.joined(separator: " or ")
        return "secrets must not be written in YAML; use \(list) instead"
    }
}

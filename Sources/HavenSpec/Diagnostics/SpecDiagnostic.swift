/// One problem found in a desired-state directory, printed compiler-style:
/// `FILE:LINE:COL: error: MESSAGE`.
///
/// The `code` is stable and meant for machines (`--output json`); the message is for people.
public struct SpecDiagnostic: Error, Hashable, Sendable, Encodable, CustomStringConvertible {
    public enum Severity: String, Sendable, Codable, Comparable {
        case error
        case warning

        public static func < (lhs: Severity, rhs: Severity) -> Bool {
            lhs == .error && rhs == .warning
        }
    }

    /// Stable identifier of the kind of problem.
    public struct Code: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let yamlSyntax = Code(rawValue: "yaml-syntax")
        public static let duplicateKey = Code(rawValue: "duplicate-key")
        public static let noFiles = Code(rawValue: "no-files")
        public static let unreadableFile = Code(rawValue: "unreadable-file")
        public static let notAMapping = Code(rawValue: "not-a-mapping")
        public static let unknownAPIVersion = Code(rawValue: "unknown-api-version")
        public static let unknownKind = Code(rawValue: "unknown-kind")
        public static let unknownKey = Code(rawValue: "unknown-key")
        public static let inlineSecret = Code(rawValue: "inline-secret")
        public static let wrongType = Code(rawValue: "wrong-type")
        public static let missingField = Code(rawValue: "missing-field")
        public static let invalidValue = Code(rawValue: "invalid-value")
        public static let invalidName = Code(rawValue: "invalid-name")
        public static let duplicateName = Code(rawValue: "duplicate-name")
        public static let conflictingFields = Code(rawValue: "conflicting-fields")
        public static let undeclaredReference = Code(rawValue: "undeclared-reference")
        public static let invalidDuration = Code(rawValue: "invalid-duration")
        public static let invalidSize = Code(rawValue: "invalid-size")
        public static let invalidCron = Code(rawValue: "invalid-cron")
        public static let invalidTimezone = Code(rawValue: "invalid-timezone")
        public static let invalidAddress = Code(rawValue: "invalid-address")
        public static let overlappingAddresses = Code(rawValue: "overlapping-addresses")
        public static let cbtWithXVA = Code(rawValue: "cbt-with-xva")
        public static let retentionKeepsNothing = Code(rawValue: "retention-keeps-nothing")
        public static let replicationOntoItself = Code(rawValue: "replication-onto-itself")
        public static let conflictingPolicies = Code(rawValue: "conflicting-policies")
        public static let insecure = Code(rawValue: "insecure")
    }

    public var location: SourceLocation
    public var severity: Severity
    public var code: Code
    public var message: String

    public init(_ severity: Severity, _ code: Code, at location: SourceLocation, _ message: String) {
        self.severity = severity
        self.code = code
        self.location = location
        self.message = message
    }

    public var description: String { "\(location): \(severity.rawValue): \(message)" }

    enum CodingKeys: String, CodingKey { case file, line, column, severity, code, message }

    /// Flat, for `--output json`: `{file, line, column, severity, code, message}`.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(location.file, forKey: .file)
        try c.encode(location.line, forKey: .line)
        try c.encode(location.column, forKey: .column)
        try c.encode(severity, forKey: .severity)
        try c.encode(code, forKey: .code)
        try c.encode(message, forKey: .message)
    }
}

/// Collects diagnostics while a directory is read; one per load, never shared across tasks.
final class DiagnosticSink {
    private(set) var items: [SpecDiagnostic] = []

    func error(_ code: SpecDiagnostic.Code, at location: SourceLocation, _ message: String) {
        items.append(SpecDiagnostic(.error, code, at: location, message))
    }

    func warning(_ code: SpecDiagnostic.Code, at location: SourceLocation, _ message: String) {
        items.append(SpecDiagnostic(.warning, code, at: location, message))
    }

    var hasErrors: Bool { items.contains { $0.severity == .error } }
}

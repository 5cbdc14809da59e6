/// An error of the data plane, with a stable code and the object it concerns.
public struct DataError: Error, Sendable, CustomStringConvertible, Equatable {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let io = Code(rawValue: "io")
        public static let nbd = Code(rawValue: "nbd")
        public static let badBitmap = Code(rawValue: "bad-bitmap")
        public static let corruptChunk = Code(rawValue: "corrupt-chunk")
        public static let missingChunk = Code(rawValue: "missing-chunk")
        public static let wrongKey = Code(rawValue: "wrong-key")
        /// A key file whose key is no secret (all zeros).
        public static let weakKey = Code(rawValue: "weak-key")
        public static let noRepository = Code(rawValue: "no-repository")
        public static let repositoryExists = Code(rawValue: "repository-exists")
        public static let unsupported = Code(rawValue: "unsupported")
        public static let noSuchVersion = Code(rawValue: "no-such-version")
        public static let locked = Code(rawValue: "locked")
        public static let badManifest = Code(rawValue: "bad-manifest")
        public static let compression = Code(rawValue: "compression")
        /// The transfer stopped because another part of it failed (that error is the one reported).
        public static let cancelled = Code(rawValue: "cancelled")
    }

    public var code: Code
    /// What it concerns: a path, a chunk id, a version id, an NBD export.
    public var subject: String
    public var message: String

    public init(_ code: Code, _ subject: String, _ message: String) {
        self.code = code
        self.subject = subject
        self.message = message
    }

    public var description: String { "\(subject): \(message)" }
}

/// An error of the data mover, on either side of the wire: what went wrong (`code`), where
/// (`context`: an endpoint, a disk) and why. Never carries a token, a key or block data.
public struct MoverError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What kind of failure; new codes may be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        let wire: UInt16
        private init(_ name: String, _ wire: UInt16) {
            self.name = name
            self.wire = wire
        }
        public var description: String { name }

        /// A frame that does not parse, is too large, or comes out of turn.
        public static let badFrame = Code("bad-frame", 1)
        /// The peers share no protocol version.
        public static let unsupportedVersion = Code("unsupported-version", 2)
        /// No token, a token that does not verify, or an expired one.
        public static let unauthorized = Code("unauthorized", 3)
        /// The token does not allow this command.
        public static let forbidden = Code("forbidden", 4)
        /// The mover has no attached disk of that name.
        public static let noSuchDisk = Code("no-such-disk", 5)
        /// A block range outside the disk, or blocks out of order.
        public static let outOfRange = Code("out-of-range", 6)
        /// Reading or writing the disk failed.
        public static let io = Code("io", 7)
        /// The peer mover (push/pull) could not be reached or refused the connection.
        public static let peerUnreachable = Code("peer-unreachable", 8)
        /// The peer mover answered with an error.
        public static let peerFailed = Code("peer-failed", 9)
        /// The server's certificate does not match the pin.
        public static let pinMismatch = Code("pin-mismatch", 10)
        /// Connecting failed, or the connection broke (the only code a client resumes after).
        public static let connection = Code("connection", 11)
        /// The mover serves too many connections already.
        public static let busy = Code("busy", 12)
        /// A bad argument given by the caller (before anything was sent).
        public static let invalidArgument = Code("invalid-argument", 13)
        /// Anything else.
        public static let `internal` = Code("internal", 14)
        /// The caller cancelled the transfer.
        public static let cancelled = Code("cancelled", 15)

        static let all: [Code] = [
            .badFrame, .unsupportedVersion, .unauthorized, .forbidden, .noSuchDisk, .outOfRange, .io, .peerUnreachable,
            .peerFailed, .pinMismatch, .connection, .busy, .invalidArgument, .internal, .cancelled,
        ]

        static func fromWire(_ value: UInt16) -> Code { all.first { $0.wire == value } ?? .internal }
    }

    public let code: Code
    /// Where: `mover 127.40.1.5:2811`, `disk xvdb`.
    public let context: String
    public let message: String

    public init(_ code: Code, _ context: String, _ message: String) {
        self.code = code
        self.context = context
        self.message = message
    }

    public var description: String { context.isEmpty ? "\(code): \(message)" : "\(context): \(code): \(message)" }
}

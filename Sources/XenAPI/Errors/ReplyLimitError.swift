/// A reply haven refuses to decode or hold because it is beyond a limit that protects haven
/// itself: nested deeper than the decoders allow (their recursion would overflow a thread's
/// stack — 5,000 nested XML-RPC arrays fit in 100 KB), or larger than the reply size limit (it
/// would exhaust memory). A pool that sends such a reply is broken or hostile; nothing is retried.
public struct ReplyLimitError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case nestingTooDeep = "REPLY_NESTING_TOO_DEEP"
        case replyTooLarge = "REPLY_TOO_LARGE"
    }

    public var code: Code
    /// The limit that was exceeded: levels of nesting, or bytes.
    public var limit: Int
    /// Where: the format and byte offset, or the (redacted) URL.
    public var context: String

    public init(_ code: Code, limit: Int, context: String) {
        self.code = code
        self.limit = limit
        self.context = context
    }

    public var description: String {
        switch code {
        case .nestingTooDeep:
            "\(code.rawValue): reply nests arrays or structs deeper than the limit of \(limit) levels (\(context)); refused"
        case .replyTooLarge:
            "\(code.rawValue): reply is larger than the limit of \(limit) bytes (\(context)); refused while receiving"
        }
    }
}

/// How deep the XML-RPC and JSON decoders let values nest. xapi's deepest replies (event.from:
/// envelope, events, event, snapshot, map field) nest 7 levels; 64 leaves ample room while keeping
/// the decoders' recursion a few dozen KiB of stack on any thread.
public let wireMaxNesting = 64

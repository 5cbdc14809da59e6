import Crypto
import Foundation

/// The per-appliance key haven signs job tokens with. Secret: its description shows nothing.
public struct MoverTokenKey: Sendable, Hashable, CustomStringConvertible {
    let bytes: [UInt8]

    /// 32 random bytes.
    public static func generate() -> MoverTokenKey {
        var rng = SystemRandomNumberGenerator()
        return MoverTokenKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }

    init(bytes: [UInt8]) { self.bytes = bytes }

    /// From its base64 text (as handed to the guest).
    public init(base64: String) throws {
        guard let data = Data(base64Encoded: base64.trimmingCharacters(in: .whitespacesAndNewlines)), data.count >= 16 else {
            throw MoverError(.invalidArgument, "mover token key", "not base64 of at least 16 bytes")
        }
        bytes = [UInt8](data)
    }

    /// The key as base64: a secret, for `xenstore_data` only.
    public var base64: String { Data(bytes).base64EncodedString() }
    public var description: String { "MoverTokenKey(redacted)" }
}

/// A job's bearer token: which job, what it may do, until when, signed with the appliance's key
/// (HMAC-SHA256). The text is a secret; the description shows only job, scope and expiry.
///
/// Text form: `hvt1.<job, base64url>.<scope>.<expiry, Unix seconds>.<HMAC, base64url>`, the MAC
/// over `haven-mover-token-v1\n<job, base64url>\n<scope>\n<expiry>`.
public struct MoverToken: Sendable, Hashable, CustomStringConvertible {
    /// What a token allows: `read` (identify, list, read, hash, push from this mover) and
    /// `write` (write, pull into this mover). Identify and list need only a valid token.
    public struct Scope: OptionSet, Sendable, Hashable, CustomStringConvertible {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let read = Scope(rawValue: 1)
        public static let write = Scope(rawValue: 2)
        public static let all: Scope = [.read, .write]

        public var description: String {
            [(Scope.read, "read"), (Scope.write, "write")].filter { contains($0.0) }.map(\.1).joined(separator: ",")
        }

        init?(text: String) {
            var s: Scope = []
            for part in text.split(separator: ",") {
                switch part {
                case "read": s.insert(.read)
                case "write": s.insert(.write)
                default: return nil
                }
            }
            guard !s.isEmpty else { return nil }
            self = s
        }
    }

    public let jobID: String
    public let scope: Scope
    public let expires: Date
    /// The bearer text sent in HELLO. Secret.
    public let text: String

    public var description: String { "token for job \(jobID) (\(scope)) until \(ISO8601DateFormatter().string(from: expires))" }

    static let prefix = "hvt1"

    /// Signs a token for `jobID` with the appliance's key.
    public static func issue(jobID: String, scope: Scope, expires: Date, key: MoverTokenKey) -> MoverToken {
        let expiry = Int64(expires.timeIntervalSince1970.rounded(.down))
        let job = base64url(Array(jobID.utf8))
        let mac = signature(job: job, scope: scope, expiry: expiry, key: key)
        let text = "\(prefix).\(job).\(scope).\(expiry).\(base64url(mac))"
        return MoverToken(jobID: jobID, scope: scope, expires: Date(timeIntervalSince1970: TimeInterval(expiry)), text: text)
    }

    /// A token from its text, checked against `key` and `now`. The error says what was wrong,
    /// never the text.
    public static func verify(_ text: String, key: MoverTokenKey, now: Date) throws -> MoverToken {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 5, parts[0] == prefix, let jobBytes = unbase64url(parts[1]), let scope = Scope(text: parts[2]),
            let expiry = Int64(parts[3]), let mac = unbase64url(parts[4])
        else { throw MoverError(.unauthorized, "", "the token is malformed") }
        let jobID = String(decoding: jobBytes, as: UTF8.self)
        let expected = signature(job: parts[1], scope: scope, expiry: expiry, key: key)
        // Constant time: the comparison must not tell an attacker how many bytes matched.
        guard mac.count == expected.count, zip(mac, expected).reduce(0, { $0 | ($1.0 ^ $1.1) }) == 0 else {
            throw MoverError(.unauthorized, "", "the token's signature does not verify with this appliance's key")
        }
        let expires = Date(timeIntervalSince1970: TimeInterval(expiry))
        guard expires > now else { throw MoverError(.unauthorized, "", "the token for job \(jobID) expired") }
        return MoverToken(jobID: jobID, scope: scope, expires: expires, text: text)
    }

    private static func signature(job: String, scope: Scope, expiry: Int64, key: MoverTokenKey) -> [UInt8] {
        let message = Array("haven-mover-token-v1\n\(job)\n\(scope)\n\(expiry)".utf8)
        return Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key.bytes)))
    }

    static func base64url(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func unbase64url(_ text: String) -> [UInt8]? {
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s).map { [UInt8]($0) }
    }
}

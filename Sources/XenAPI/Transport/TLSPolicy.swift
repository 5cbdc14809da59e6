/// How the pool's certificate is checked. Verification is on unless the user said otherwise.
public enum TLSPolicy: Sendable, Hashable {
    /// The system's trust store, with host-name checks.
    case system
    /// A PEM file of CAs (or the pool's self-signed certificate) to trust, with host-name checks.
    case caFile(String)
    /// Exactly the certificate whose DER encoding has this SHA-256 (32 bytes); checked inside the
    /// handshake, before anything is sent.
    case pinnedSHA256([UInt8])
    /// No verification at all; only when the configuration says `insecureSkipVerify: true`.
    case insecure

    /// Parses `AB:CD:…` or plain hex (64 digits) into a pin.
    public static func fingerprint(_ text: String) -> TLSPolicy? {
        let hex = text.replacingOccurrences(of: ":", with: "")
        guard hex.count == 64 else { return nil }
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            guard let b = UInt8(hex[index..<next], radix: 16) else { return nil }
            bytes.append(b)
            index = next
        }
        return .pinnedSHA256(bytes)
    }
}

import Foundation

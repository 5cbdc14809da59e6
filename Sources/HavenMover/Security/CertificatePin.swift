import CSSL
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The SHA-256 of a mover's certificate (DER). haven's client refuses a mover whose
/// certificate does not hash to its pin; there is no chain to validate (self-signed).
public struct CertificatePin: Sendable, Hashable, CustomStringConvertible, Codable {
    public let sha256: [UInt8]

    public init?(sha256: [UInt8]) {
        guard sha256.count == 32 else { return nil }
        self.sha256 = sha256
    }

    /// `AB:CD:…` or plain hex, either case; an optional `sha256:` prefix.
    public init?(hex: String) {
        var text = hex.lowercased()
        if text.hasPrefix("sha256:") { text.removeFirst(7) }
        text.removeAll { $0 == ":" }
        guard text.count == 64 else { return nil }
        var bytes: [UInt8] = []
        var i = text.startIndex
        while i < text.endIndex {
            let j = text.index(i, offsetBy: 2)
            guard let b = UInt8(text[i..<j], radix: 16) else { return nil }
            bytes.append(b)
            i = j
        }
        sha256 = bytes
    }

    /// The pin of the first certificate in PEM text.
    public init(certificatePEM: String) throws {
        var out = [UInt8](repeating: 0, count: 32)
        let rc = certificatePEM.withCString { haven_pem_cert_sha256($0, strlen($0), &out) }
        guard rc == 0 else { throw MoverError(.invalidArgument, "mover certificate", "not a PEM certificate") }
        sha256 = out
    }

    /// `AB:CD:…` (as `openssl x509 -fingerprint -sha256` prints it).
    public var hex: String { sha256.map { String(format: "%02X", $0) }.joined(separator: ":") }
    public var description: String { "sha256:\(hex)" }
}

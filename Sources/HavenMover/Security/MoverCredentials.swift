import CSSL
import Foundation

/// The `xenstore_data` keys an appliance reads at boot (its guest sees them under
/// `vm-data/haven/`). A real appliance's boot script copies each into a file of the same name in
/// the mover's state directory (`haven mover --state DIR`); the simulator does the same.
public enum MoverXenstore {
    public static let prefix = "vm-data/haven/"
    /// The mover's certificate (PEM).
    public static let certificate = prefix + "cert"
    /// Its private key (PEM). Secret.
    public static let privateKey = prefix + "key"
    /// The key job tokens are signed with (base64). Secret.
    public static let tokenKey = prefix + "token-key"
    /// The appliance's name, as the mover reports it in IDENTIFY.
    public static let name = prefix + "name"
    /// Static address (IPv4); absent for DHCP.
    public static let ip = prefix + "ip"
    public static let netmask = prefix + "netmask"
    public static let gateway = prefix + "gateway"
    /// Name servers, comma-separated.
    public static let dns = prefix + "dns"

    /// The file name under the state directory for a key (`vm-data/haven/cert` → `cert`).
    public static func fileName(_ key: String) -> String { String(key.dropFirst(prefix.count)) }
}

/// An appliance's network settings, handed to its guest through `xenstore_data`.
public struct MoverNetworkConfig: Sendable, Hashable {
    /// Static IPv4 address; nil for DHCP.
    public var ip: String?
    public var netmask: String?
    public var gateway: String?
    public var dns: [String]

    public init(ip: String? = nil, netmask: String? = nil, gateway: String? = nil, dns: [String] = []) {
        self.ip = ip
        self.netmask = netmask
        self.gateway = gateway
        self.dns = dns
    }

    /// The `vm-data/haven/{ip,netmask,gateway,dns}` keys that are set.
    public func xenstoreData() -> [String: String] {
        var out: [String: String] = [:]
        if let ip { out[MoverXenstore.ip] = ip }
        if let netmask { out[MoverXenstore.netmask] = netmask }
        if let gateway { out[MoverXenstore.gateway] = gateway }
        if !dns.isEmpty { out[MoverXenstore.dns] = dns.joined(separator: ",") }
        return out
    }

    public init(xenstoreData data: [String: String]) {
        ip = data[MoverXenstore.ip].flatMap { $0.isEmpty ? nil : $0 }
        netmask = data[MoverXenstore.netmask]
        gateway = data[MoverXenstore.gateway]
        dns = (data[MoverXenstore.dns] ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}

/// What an appliance's mover proves itself with and checks tokens against: made by haven when
/// it provisions the appliance, handed to the guest in `xenstore_data`, and pinned by haven
/// (`pin`). The private key and token key never appear in `description`.
public struct MoverCredentials: Sendable, CustomStringConvertible {
    public let name: String
    public let certificatePEM: String
    /// Secret.
    public let privateKeyPEM: String
    /// Secret.
    public let tokenKey: MoverTokenKey
    /// The SHA-256 of the certificate, which haven's client insists on.
    public let pin: CertificatePin

    public init(name: String, certificatePEM: String, privateKeyPEM: String, tokenKey: MoverTokenKey) throws {
        self.name = name
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
        self.tokenKey = tokenKey
        pin = try CertificatePin(certificatePEM: certificatePEM)
    }

    /// A new EC P-256 key, a self-signed certificate for `name` (valid `days`) and a token key.
    public static func generate(name: String, days: Int = 3650) throws -> MoverCredentials {
        var cert: UnsafeMutablePointer<CChar>?
        var key: UnsafeMutablePointer<CChar>?
        var error = [CChar](repeating: 0, count: 256)
        guard haven_make_self_signed(name, Int32(days), &cert, &key, &error, error.count) == 0, let cert, let key else {
            throw MoverError(.internal, "mover credentials for \(name)", cString(error))
        }
        defer {
            // The key text is wiped before it is freed: nothing of it lingers in freed memory.
            memset(key, 0, strlen(key))
            free(cert)
            free(key)
        }
        return try MoverCredentials(name: name, certificatePEM: String(cString: cert), privateKeyPEM: String(cString: key), tokenKey: .generate())
    }

    /// The `vm-data/haven/…` keys of the credentials (certificate, key, token key, name). The
    /// address keys come from `MoverNetworkConfig.xenstoreData()`.
    public func xenstoreData() -> [String: String] {
        [MoverXenstore.certificate: certificatePEM, MoverXenstore.privateKey: privateKeyPEM, MoverXenstore.tokenKey: tokenKey.base64,
         MoverXenstore.name: name]
    }

    /// Back from `xenstore_data` (haven reads its appliance's record to pin it and sign tokens).
    public init(xenstoreData data: [String: String]) throws {
        func need(_ key: String) throws -> String {
            guard let v = data[key], !v.isEmpty else { throw MoverError(.invalidArgument, "xenstore_data", "\(key) is missing") }
            return v
        }
        try self.init(
            name: (data[MoverXenstore.name] ?? "").trimmingCharacters(in: .whitespacesAndNewlines), certificatePEM: try need(MoverXenstore.certificate),
            privateKeyPEM: try need(MoverXenstore.privateKey), tokenKey: try MoverTokenKey(base64: try need(MoverXenstore.tokenKey)))
    }

    /// From a mover's state directory: one file per key (`cert`, `key`, `token-key`, `name`).
    public init(directory: URL) throws {
        var data: [String: String] = [:]
        for key in [MoverXenstore.certificate, MoverXenstore.privateKey, MoverXenstore.tokenKey, MoverXenstore.name] {
            let file = directory.appendingPathComponent(MoverXenstore.fileName(key))
            if let text = try? String(contentsOf: file, encoding: .utf8) { data[key] = text }
        }
        do {
            try self.init(xenstoreData: data)
        } catch let e as MoverError {
            throw MoverError(e.code, directory.path, e.message)
        }
    }

    /// A token for one job on this appliance.
    public func issueToken(jobID: String, scope: MoverToken.Scope, expires: Date) -> MoverToken {
        MoverToken.issue(jobID: jobID, scope: scope, expires: expires, key: tokenKey)
    }

    public var description: String { "mover credentials of \(name) (certificate \(pin))" }
}

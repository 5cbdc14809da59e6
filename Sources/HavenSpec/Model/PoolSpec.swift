import Foundation

/// A XenServer / XCP-ng pool haven manages. `url` may name any host: haven follows
/// `HOST_IS_SLAVE` to the master.
public struct PoolSpec: ResourceSpec, Hashable {
    public static let kind = ResourceKind.pool

    public var url: String
    public var credentials: Credentials
    public var tls: TLSSettings
    public var nbd: NBDSettings
    public var limits: Limits
    /// Allows an `http://` url: the password and every session reference then cross the network
    /// in clear, so it must be asked for in so many words.
    public var insecure: Bool

    /// Who haven logs in as. Secrets are never inline: only environment variable names or files.
    public struct Credentials: Sendable, Hashable, Encodable {
        public var username: String?
        public var usernameEnv: String?
        public var passwordEnv: String?
        public var passwordFile: String?

        static let shape = ObjectShape(
            path: "spec.credentials",
            fields: [
                FieldInfo("username", .text, "User name written plainly (it is not a secret)."),
                FieldInfo("usernameEnv", .string(pattern: envPattern), "Environment variable holding the user name."),
                FieldInfo("passwordEnv", .string(pattern: envPattern), "Environment variable holding the password."),
                FieldInfo("passwordFile", .text,
                          "File holding the password (first line; relative to this YAML file)."),
            ],
            exclusive: [["username", "usernameEnv"], ["passwordEnv", "passwordFile"]],
            oneRequired: [["username", "usernameEnv"], ["passwordEnv", "passwordFile"]])
    }

    /// How the pool's certificate is checked. Without settings the system trust store is used.
    public struct TLSSettings: Sendable, Hashable, Encodable {
        public var caFile: String?
        public var fingerprint: String?
        public var insecureSkipVerify: Bool

        static let shape = ObjectShape(
            path: "spec.tls",
            fields: [
                FieldInfo("caFile", .text, "PEM file of the CA (or self-signed certificate) to trust."),
                FieldInfo("fingerprint", .string(pattern: fingerprintPattern),
                          "SHA-256 fingerprint of the pool's certificate, hex with or without colons."),
                FieldInfo("insecureSkipVerify", .boolean, default: "false",
                          "Do not verify the certificate at all. Loud on purpose: anyone on the path can read the password."),
            ],
            exclusive: [["caFile", "fingerprint", "insecureSkipVerify"]])
    }

    /// Which network carries NBD traffic, and how many connections one disk may use.
    public struct NBDSettings: Sendable, Hashable, Encodable {
        public var network: String?
        public var required: Bool
        public var connections: Int

        static let shape = ObjectShape(
            path: "spec.nbd",
            fields: [
                FieldInfo("network", .text,
                          "name_label of the network with an NBD purpose to read disks through; any NBD network when unset."),
                FieldInfo("required", .boolean, default: "false",
                          "Fail instead of falling back to HTTP export when no NBD network is available."),
                FieldInfo("connections", .integer(min: 1, max: 16), default: "4",
                          "NBD connections per disk (xapi-nbd serves at most 16 per host)."),
            ])
    }

    /// Per-pool concurrency.
    public struct Limits: Sendable, Hashable, Encodable {
        public var snapshots: Int
        public var transfers: Int

        static let shape = ObjectShape(
            path: "spec.limits",
            fields: [
                FieldInfo("snapshots", .integer(min: 1, max: 64), default: "2", "Snapshots taken at the same time."),
                FieldInfo("transfers", .integer(min: 1, max: 64), default: "4", "Disk transfers running at the same time."),
            ])
    }

    static let envPattern = "^[A-Za-z_][A-Za-z0-9_]*$"
    static let fingerprintPattern = "^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{64}$"

    public static let shape = ObjectShape(
        path: "spec",
        fields: [
            FieldInfo("url", .url, required: true, "https:// address of any host of the pool."),
            FieldInfo("credentials", .object(Credentials.shape), required: true, "How to log in."),
            FieldInfo("tls", .object(TLSSettings.shape), "How to verify the pool's certificate."),
            FieldInfo("nbd", .object(NBDSettings.shape), "Network block device settings for reading disks."),
            FieldInfo("limits", .object(Limits.shape), "Concurrency limits on this pool."),
            FieldInfo("insecure", .boolean, default: "false",
                      "Allow an http:// url. The password and session travel unencrypted: for a lab behind a trusted network only."),
        ])
}

extension PoolSpec {
    init(_ r: MappingReader) {
        let ctx = r.context
        url = r.string("url")?.value ?? ""
        insecure = r.bool("insecure") ?? false
        if let loc = r.string("url") {
            checkURL(loc, insecure: insecure, r)
        }
        var creds = Credentials(username: nil, usernameEnv: nil, passwordEnv: nil, passwordFile: nil)
        if let c = r.mapping("credentials") {
            creds.username = c.string("username")?.value
            creds.usernameEnv = c.string("usernameEnv").flatMap { checkEnvName($0, key: "usernameEnv", c) }
            creds.passwordEnv = c.string("passwordEnv").flatMap { checkEnvName($0, key: "passwordEnv", c) }
            creds.passwordFile = c.string("passwordFile").map { ctx.resolvePath($0.value) }
        }
        credentials = creds
        var tls = TLSSettings(caFile: nil, fingerprint: nil, insecureSkipVerify: false)
        if let t = r.mapping("tls") {
            tls.caFile = t.string("caFile").map { ctx.resolvePath($0.value) }
            if let fp = t.string("fingerprint") {
                let hex = fp.value.replacingOccurrences(of: ":", with: "").lowercased()
                if hex.count == 64, hex.allSatisfy(\.isHexDigit) {
                    tls.fingerprint = stride(from: 0, to: 64, by: 2).map { i in
                        let s = hex.index(hex.startIndex, offsetBy: i)
                        return String(hex[s...hex.index(after: s)])
                    }.joined(separator: ":").uppercased()
                } else {
                    ctx.sink.error(
                        .invalidValue, at: fp.location,
                        "'spec.tls.fingerprint' must be a SHA-256 fingerprint (64 hex digits, colons allowed), found '\(fp.value)'")
                }
            }
            tls.insecureSkipVerify = t.bool("insecureSkipVerify") ?? false
            if tls.insecureSkipVerify {
                ctx.sink.warning(
                    .insecure, at: t.valueLocation("insecureSkipVerify"),
                    "\(ctx.resource): TLS verification is off; anyone between haven and the pool can read its password")
            }
        }
        self.tls = tls
        var nbd = NBDSettings(network: nil, required: false, connections: 4)
        if let n = r.mapping("nbd") {
            nbd.network = n.string("network")?.value
            nbd.required = n.bool("required") ?? false
            nbd.connections = n.int("connections") ?? 4
        }
        self.nbd = nbd
        var limits = Limits(snapshots: 2, transfers: 4)
        if let l = r.mapping("limits") {
            limits.snapshots = l.int("snapshots") ?? 2
            limits.transfers = l.int("transfers") ?? 4
        }
        self.limits = limits
    }
}

private func checkEnvName(_ name: Located<String>, key: String, _ r: MappingReader) -> String? {
    let ok = !name.value.isEmpty && name.value.first.map { !$0.isNumber } == true
        && name.value.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "_" }
    guard ok else {
        r.context.sink.error(
            .invalidValue, at: name.location,
            "'\(r.path(key))' must name an environment variable (letters, digits, '_'), found '\(name.value)'")
        return nil
    }
    return name.value
}

private func checkURL(_ text: Located<String>, insecure: Bool, _ r: MappingReader) {
    let ctx = r.context
    guard let url = URL(string: text.value), let scheme = url.scheme?.lowercased(), let host = url.host, !host.isEmpty
    else {
        let shown = text.value.contains("@") ? "a value with '@' (not repeated here)" : "'\(text.value)'"
        ctx.sink.error(.invalidValue, at: text.location, "'spec.url' must be an address like https://pool-master.example.com, found \(shown)")
        return
    }
    if url.user != nil || url.password != nil {
        // The text itself is not repeated: it may hold a password.
        ctx.sink.error(
            .inlineSecret, at: text.location,
            "'spec.url' must not carry a user or password; use 'spec.credentials' with 'usernameEnv' and 'passwordEnv' or 'passwordFile'")
        return
    }
    if let port = url.port, !(1...65535).contains(port) {
        ctx.sink.error(.invalidValue, at: text.location, "'spec.url' has port \(port); a TCP port is from 1 to 65535")
        return
    }
    switch scheme {
    case "https": break
    case "http" where insecure:
        ctx.sink.warning(
            .insecure, at: text.location,
            "\(ctx.resource): 'spec.url' uses plain http; the password and session travel unencrypted")
    case "http":
        ctx.sink.error(
            .insecure, at: text.location,
            "\(ctx.resource): 'spec.url' uses plain http, which would send the password in clear; use https:// or set 'spec.insecure: true'")
    default:
        ctx.sink.error(.invalidValue, at: text.location, "'spec.url' must start with https:// (or http://), found '\(text.value)'")
    }
}

import Foundation
import HavenMover

#if canImport(Glibc)
    import Glibc
#endif

/// What is made for a new appliance, as the engine keeps it.
struct ApplianceCredentials: Sendable {
    /// `vm-data/haven/…` keys the mover reads its certificate, key, token key and name from.
    var xenstoreData: [String: String]
    /// The pin of the mover's certificate (not a secret): recorded in the catalog.
    var pin: String
    /// The key haven signs job tokens with (its base64 text): kept in a 0600 file of the state directory.
    var tokenKey: [UInt8]
}

/// The one place the engine meets `haven mover` (module HavenMover): the credentials made for a
/// new appliance, the address keys of `xenstore_data`, and the client haven checks an appliance
/// with. Tokens live 10 minutes and name what they are for.
enum MoverSeam {
    static let port = MoverProtocol.defaultPort

    static func newCredentials(name: String) throws -> ApplianceCredentials {
        let c = try MoverCredentials.generate(name: name)
        return ApplianceCredentials(xenstoreData: c.xenstoreData(), pin: c.pin.description, tokenKey: Array(c.tokenKey.base64.utf8))
    }

    /// The address keys (`vm-data/haven/ip|netmask|gateway|dns`) as the mover reads them.
    static func networkData(ip: String?, netmask: String?, gateway: String?, dns: [String]) -> [String: String] {
        guard let ip else { return [:] }
        return MoverNetworkConfig(ip: ip, netmask: netmask, gateway: gateway, dns: dns).xenstoreData()
    }

    static func endpoint(_ host: String, _ port: Int, pin: String) throws -> MoverEndpoint {
        guard let p = CertificatePin(hex: pin) else { throw EngineError(.connect, "\(host):\(port)", "the recorded certificate pin '\(pin)' cannot be read") }
        return MoverEndpoint(host: host, port: port, pin: p)
    }

    static func token(_ tokenKey: [UInt8], job: String, scope: MoverToken.Scope = .read, lifetime: TimeInterval = 600) throws -> MoverToken {
        let key = try MoverTokenKey(base64: String(decoding: tokenKey, as: UTF8.self))
        return MoverToken.issue(jobID: job, scope: scope, expires: Date().addingTimeInterval(lifetime), key: key)
    }

    static func client(_ host: String, _ port: Int, pin: String, tokenKey: [UInt8], job: String) throws -> MoverClient {
        var options = MoverClient.Options()
        options.connectTimeout = 10
        options.ioTimeout = 30
        return MoverClient(endpoint: try endpoint(host, port, pin: pin), token: try token(tokenKey, job: job), options: options)
    }

    /// A transfer's token lives as long as the longest transfer may (every command and every
    /// resumed stream checks it again); it names the job and allows only what the job does.
    static let transferTokenLifetime: TimeInterval = 24 * 3_600

    /// The credentials haven holds for a leased appliance: its endpoint (pinned) and its token key.
    static func transferClient(_ a: ApplianceInfo, tokenKey: [UInt8], job: String, scope: MoverToken.Scope) throws -> MoverClient {
        var options = MoverClient.Options()
        options.connectTimeout = 10
        options.ioTimeout = 120
        options.window = 64
        return MoverClient(endpoint: try endpoint(a.address, port, pin: a.pin),
                           token: try token(tokenKey, job: job, scope: scope, lifetime: transferTokenLifetime), options: options)
    }

    /// The other appliance of a push or pull, with a token for it (`write` for a push's target, `read` for a pull's source).
    static func peer(_ a: ApplianceInfo, tokenKey: [UInt8], job: String, scope: MoverToken.Scope, disk: String) throws -> MoverPeer {
        MoverPeer(endpoint: try endpoint(a.address, port, pin: a.pin), token: try token(tokenKey, job: job, scope: scope, lifetime: transferTokenLifetime), disk: disk)
    }

    /// Waits until the appliance's mover lists `device` (a plugged disk shows up once its
    /// kernel has seen it): a few seconds at most.
    static func waitForDisk(_ client: MoverClient, device: String, appliance: String) async throws -> MoverDisk {
        var delay = 0.05
        for _ in 0..<40 {
            if let d = try await client.disks().first(where: { $0.name == device }) { return d }
            try await Task.sleep(for: .seconds(delay))
            delay = min(delay * 2, 0.5)
        }
        throw EngineError(.action, appliance, "the disk plugged into appliance \(appliance) as \(device) never showed up in its mover")
    }

    /// TLS to the mover, its certificate checked against the pin, a token it must accept, IDENTIFY.
    static func identify(host: String, port: Int, pin: String, tokenKey: [UInt8]) async throws -> MoverIdentity {
        try await client(host, port, pin: pin, tokenKey: tokenKey, job: "diag-identify").identify()
    }

    /// The appliance's mover connects back to a short-lived mover of haven's, listening on the
    /// address haven reaches the appliance from.
    static func probeBack(host: String, port: Int, pin: String, tokenKey: [UInt8]) async throws -> String {
        let local = localAddress(toward: host, port: port) ?? "0.0.0.0"
        let mine = try MoverCredentials.generate(name: "haven diag", days: 1)
        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("haven-diag-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: empty) }
        var server: MoverServer?
        var listening = 0
        // A free port of the ephemeral range: the server cannot be asked which one it bound.
        for _ in 0..<20 where server == nil {
            let candidate = Int.random(in: 40_000..<60_000)
            let s = try MoverServer(MoverServerConfiguration(credentials: mine, host: local, port: candidate, devices: DeviceDirectory(path: empty.path)))
            if (try? s.start()) != nil {
                server = s
                listening = candidate
            }
        }
        guard let server else { throw EngineError(.connect, local, "haven cannot listen on \(local) for the appliance to connect back") }
        defer { server.stop() }
        let peer = MoverPeer(endpoint: MoverEndpoint(host: local, port: listening, pin: mine.pin),
                             token: mine.issueToken(jobID: "diag-back", scope: .read, expires: Date().addingTimeInterval(600)), disk: "")
        let id = try await client(host, port, pin: pin, tokenKey: tokenKey, job: "diag-back").probe(peer)
        return "the appliance connected to haven at \(local):\(listening) (TLS, pinned) and identified it as \(id.name)"
    }

    /// The appliance's mover connects to a peer appliance's mover and identifies it.
    static func probePeer(host: String, port: Int, pin: String, tokenKey: [UInt8], peer: String, peerPin: String, peerKey: [UInt8]) async throws -> String {
        let target = MoverPeer(endpoint: try endpoint(peer, port, pin: peerPin), token: try token(peerKey, job: "diag-peer"), disk: "")
        let id = try await client(host, port, pin: pin, tokenKey: tokenKey, job: "diag-peer").probe(target)
        return "TLS, pinned, token accepted; peer mover \(id.name)"
    }

    /// The source address the kernel picks toward `host` (no packet is sent).
    static func localAddress(toward host: String, port: Int) -> String? {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else { return nil }
        let connected = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { return nil }
        var local = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        guard withUnsafeMutablePointer(to: &local, { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }) == 0 else { return nil }
        var text = [CChar](repeating: 0, count: 64)
        inet_ntop(AF_INET, &local.sin_addr, &text, socklen_t(text.count))
        return String(cString: text)
    }

    /// What a failed check means, and what to fix.
    static func explain(_ error: any Error, host: String, port: Int, from: String) -> (String, String?) {
        guard let e = error as? MoverError else { return ("\(host):\(port) from \(from): \(error)", "check the network between \(from) and \(host)") }
        switch e.code {
        case .connection, .peerUnreachable:
            let text = e.message.lowercased()
            if text.contains("refused") || text.contains("reset") {
                return ("\(host):\(port) refused the connection from \(from) (\(e.message)): inbound connections to it are denied, or its mover does not run",
                        "allow TCP \(port) from \(from) to \(host) (the site's firewall), or replicate with direction: pull when that site may only connect outward")
            }
            return ("\(host):\(port) cannot be reached from \(from): \(e.message)",
                    "check routing and firewalls between \(from) and \(host) on TCP \(port)")
        case .pinMismatch:
            return ("\(host):\(port) presents a certificate that does not match the pin haven recorded: it is not the mover haven provisioned",
                    "remove this appliance; haven provisions a new one it knows")
        case .unauthorized, .forbidden:
            return ("\(host):\(port) refused haven's token (\(e.message))", "the appliance's token key differs from haven's copy: remove it and let haven provision a new one")
        default:
            return ("\(host):\(port) from \(from): \(e.code): \(e.message)", nil)
        }
    }
}

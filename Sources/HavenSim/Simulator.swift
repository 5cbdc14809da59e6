import Foundation
import XenAPI

/// Where a simulated pool can be reached, as written to `endpoints.json`.
public struct PoolEndpoint: Codable, Sendable {
    public var name: String
    public var masterURL: String
    public var hosts: [HostEndpoint]
    public var username: String
    public var password: String
    /// SHA-256 of the master's certificate, `AB:CD:…`; empty for plain HTTP.
    public var fingerprint: String
    /// PEM bundle of every host's certificate: trusts whichever host is master.
    public var caFile: String

    public struct HostEndpoint: Codable, Sendable {
        public var name: String
        public var address: String
        public var url: String
        public var fingerprint: String
        public var certificate: String
    }
}

/// `haven sim`: every pool of a world, served on loopback until stopped. State lives in the
/// state directory and survives restarts.
public final class Simulator: @unchecked Sendable {
    // @unchecked: `pools` is filled in `start()` before anything else touches it.
    public let world: World
    public let stateDirectory: URL
    public private(set) var pools: [SimPool] = []

    public init(world: World, stateDirectory: URL) {
        self.world = world
        self.stateDirectory = stateDirectory
    }

    /// Starts every pool and writes `endpoints.json`; returns the endpoints.
    @discardableResult
    public func start() throws -> [PoolEndpoint] {
        try FileManager.default.createDirectory(at: stateDirectory, withIntermediateDirectories: true)
        let tokenFile = stateDirectory.appendingPathComponent("control-token")
        var token = (try? String(contentsOf: tokenFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        if token.isEmpty {
            token = UUID().uuidString + UUID().uuidString
            try token.write(to: tokenFile, atomically: true, encoding: .utf8)
            chmod(tokenFile.path, 0o600)
        }
        var seenNames = Set<String>()
        for spec in world.pools {
            guard seenNames.insert(spec.name).inserted else { throw SimError("world declares pool '\(spec.name)' twice") }
            let pool = try SimPool(spec: spec, directory: stateDirectory.appendingPathComponent("pools/\(spec.name)"))
            pool.controlToken = token
            try pool.start()
            pools.append(pool)
        }
        let endpoints = pools.map(endpoint)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(endpoints).write(to: stateDirectory.appendingPathComponent("endpoints.json"), options: .atomic)
        return endpoints
    }

    public func stop() {
        for p in pools { p.stop() }
    }

    func endpoint(_ p: SimPool) -> PoolEndpoint {
        let master = p.host(ref: p.masterRef) ?? p.hosts[0]
        return PoolEndpoint(
            name: p.name, masterURL: p.url(of: master),
            hosts: p.hosts.map { .init(name: $0.name, address: $0.address, url: p.url(of: $0), fingerprint: $0.fingerprint, certificate: $0.certificate) },
            username: p.username, password: p.password, fingerprint: p.useTLS ? master.fingerprint : "",
            caFile: p.useTLS ? p.caBundle : "")
    }

    public func pool(named name: String) -> SimPool? { pools.first { $0.name == name } }

    /// Reads `endpoints.json` of a running (or stopped) simulator.
    public static func endpoints(stateDirectory: URL) throws -> [PoolEndpoint] {
        let data = try Data(contentsOf: stateDirectory.appendingPathComponent("endpoints.json"))
        return try JSONDecoder().decode([PoolEndpoint].self, from: data)
    }

    /// Sends a control command to the running simulator that owns `pool`. Without a pool, a
    /// command naming a VM goes to the one pool that has a VM of that name (a replica lives on
    /// another pool than its source); a name found on several pools needs the pool. Other
    /// commands go to the first pool.
    public static func control(stateDirectory: URL, pool: String?, _ command: [String: XenValue]) throws -> XenValue {
        let all = try endpoints(stateDirectory: stateDirectory)
        let token = try String(contentsOf: stateDirectory.appendingPathComponent("control-token"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        if pool == nil, let vm = command["vm"]?.stringValue, all.count > 1 {
            var holders: [PoolEndpoint] = []
            for ep in all where try send(ep, token: token, ["command": "has-vm", "vm": .string(vm)])["found"]?.boolValue == true {
                holders.append(ep)
            }
            if holders.count > 1 {
                throw SimError("VM '\(vm)' exists on pools \(holders.map(\.name).joined(separator: ", ")): name one with --pool")
            }
            guard let target = holders.first else {
                throw SimError("no VM named '\(vm)' on any pool (\(all.map(\.name).joined(separator: ", ")))")
            }
            return try send(target, token: token, command)
        }
        let chosen = pool == nil ? all.first : all.first { $0.name == pool }
        guard let target = chosen else {
            throw SimError("no pool \(pool ?? "") in \(stateDirectory.path)/endpoints.json")
        }
        return try send(target, token: token, command)
    }

    private static func send(_ target: PoolEndpoint, token: String, _ command: [String: XenValue]) throws -> XenValue {
        let tls: TLSPolicy = target.fingerprint.isEmpty ? .system : (TLSPolicy.fingerprint(target.fingerprint) ?? .insecure)
        let http = HTTPClient(tls: tls)
        var lastError: (any Error)?
        for host in target.hosts {
            do {
                let (head, body) = try http.fetch(
                    HTTPRequest(method: .post, url: host.url + "/haven-sim/control", headers: [("X-Haven-Sim-Token", token), ("Content-Type", "application/json")], timeout: 300),
                    body: .bytes(JSON.encode(.structure(command))))
                let reply = try JSON.parse(body)
                if head.status != 200 { throw SimError(reply["error"]?.stringValue ?? "HTTP \(head.status)") }
                return reply
            } catch let e as HTTPTransportError {
                lastError = e
                continue
            }
        }
        throw lastError ?? SimError("no host answered")
    }
}

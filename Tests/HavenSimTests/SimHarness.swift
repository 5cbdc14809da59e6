import Foundation
import Synchronization
import XenAPI

@testable import HavenSim

/// Starts an in-process simulator on a loopback range of its own, so tests run in parallel
/// without colliding on ports (NBD always uses 10809 per host address).
final class SimHarness: @unchecked Sendable {
    // @unchecked: every property is set in init and only read afterwards.
    static let counter = Atomic<Int>(0)
    let simulator: Simulator
    let state: URL
    let endpoints: [PoolEndpoint]
    let octet: Int

    static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    /// `world` is YAML with `{A}` standing for this harness's address prefix (e.g. `127.131.7`).
    init(_ worldTemplate: String) throws {
        let n = Self.counter.add(1, ordering: .relaxed).newValue
        octet = n
        // 127.100-149: disjoint from the CLI scenarios (150-239), engine (20-39) and data (60-99) tests in one process.
        let prefix = "127.\(100 + Int(getpid()) % 50).\(n)"
        let yaml = worldTemplate.replacingOccurrences(of: "{A}", with: prefix)
        state = FileManager.default.temporaryDirectory.appendingPathComponent("haven-sim-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        let worldFile = state.appendingPathComponent("world.yaml")
        try yaml.write(to: worldFile, atomically: true, encoding: .utf8)
        simulator = Simulator(world: try World.load(path: worldFile.path), stateDirectory: state.appendingPathComponent("state"))
        endpoints = try simulator.start()
    }

    deinit {
        simulator.stop()
        try? FileManager.default.removeItem(at: state)
    }

    var endpoint: PoolEndpoint { endpoints[0] }

    func client(wire: WireProtocol = .jsonrpc, hostIndex: Int = 0, password: String? = nil) -> XenAPIClient {
        let ep = endpoint
        let tls: TLSPolicy = ep.fingerprint.isEmpty ? .system : .caFile(ep.caFile)
        return XenAPIClient(
            url: ep.hosts[hostIndex].url, credentials: XenCredentials(username: ep.username, password: password ?? ep.password),
            tls: tls, wire: wire)
    }

    var pool: SimPool { simulator.pools[0] }

    func control(_ command: [String: XenValue]) throws -> XenValue {
        try Simulator.control(stateDirectory: state.appendingPathComponent("state"), pool: nil, command)
    }

    static let basicWorld = """
        pools:
          - name: lab
            port: 4443
            credentials: {username: root, password: s3cret}
            apiVersion: "2.21"
            hosts:
              - {name: lab-host1, address: "{A}.1"}
              - {name: lab-host2, address: "{A}.2"}
            srs:
              - {name: Local storage, type: ext, size: 64Gi}
            networks:
              - {name: Pool-wide network associated with eth0, purpose: [nbd]}
            templates:
              - {name: haven-abd, memory: 128Mi, disks: [{size: 4Mi}]}
            vms:
              - name: web
                power: Running
                tags: [prod]
                other_config: {owner: team-a}
                disks:
                  - {name: web-root, size: 8Mi, fill: {seed: 7}}
                  - {name: web-data, size: 4Mi, fill: {seed: 8, unallocated: 0.5, random: 0.5}}
              - name: db
                disks:
                  - {name: db-root, size: 4Mi, fill: {seed: 9}}
        """
}

extension XenAPIClient {
    func vm(named name: String) async throws -> (VMRef, VMRecord) {
        let all = try await records(VMRecord.self)
        guard let hit = all.first(where: { $0.value.nameLabel == name && $0.value.isRealVM }) else {
            throw XenAPIError(code: "TEST_NO_VM", parameters: [name])
        }
        return (hit.key, hit.value)
    }

    /// Disk VDIs of a VM in userdevice order.
    func disks(of vm: VMRef) async throws -> [VDIRef] {
        let record = try await self.record(vm)
        var out: [(Int, VDIRef)] = []
        for vbd in record.vbds {
            let r = try await self.record(vbd)
            if r.type == "Disk", !r.vdi.isNull { out.append((Int(r.userdevice) ?? 0, r.vdi)) }
        }
        return out.sorted { $0.0 < $1.0 }.map(\.1)
    }
}

func decodeBitmap(_ base64: String) -> [Int] {
    let bytes = [UInt8](Data(base64Encoded: base64) ?? Data())
    var out: [Int] = []
    for (i, b) in bytes.enumerated() where b != 0 {
        for bit in 0..<8 where b & (0x80 >> UInt8(bit)) != 0 { out.append(i * 8 + bit) }
    }
    return out
}

func run(_ executable: String, _ args: [String]) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [executable] + args
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

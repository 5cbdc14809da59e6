import Foundation
import HavenCatalog
import HavenCore
import HavenEngine
import HavenSpec
import Synchronization
import XenAPI

@testable import HavenSim

/// An in-process `haven sim` (real nbdkit) on a loopback range of its own, a configuration
/// pointing at it, and an Engine with a state directory of its own.
final class EngineHarness: @unchecked Sendable {
    // @unchecked: every property is set in init and only read afterwards.
    static let counter = Atomic<Int>(0)
    let simulator: Simulator
    let dir: URL
    let endpoint: PoolEndpoint
    let prefix: String

    static let world = """
        pools:
          - name: lab
            port: 4443
            credentials: {username: root, password: engine-pw}
            hosts:
              - {name: h1, address: "{A}.1"}
            srs: [{name: Local storage, type: ext, size: 64Gi}]
            networks: [{name: net0, purpose: [nbd]}]
            vms:
              - name: web
                power: Running
                disks: [{name: web-root, size: 4Mi, fill: {seed: 1}}]
              - name: db
                disks: [{name: db-root, size: 4Mi, fill: {seed: 2}}]
        """

    init(world: String = EngineHarness.world) throws {
        let n = Self.counter.add(1, ordering: .relaxed).newValue
        prefix = "127.\(20 + Int(getpid()) % 20).\(n)"
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-engine-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let worldFile = dir.appendingPathComponent("world.yaml")
        try world.replacingOccurrences(of: "{A}", with: prefix).write(to: worldFile, atomically: true, encoding: .utf8)
        simulator = Simulator(world: try World.load(path: worldFile.path), stateDirectory: dir.appendingPathComponent("sim"))
        endpoint = try simulator.start()[0]
        try "engine-pw\n".write(to: dir.appendingPathComponent("password"), atomically: true, encoding: .utf8)
    }

    deinit {
        simulator.stop()
        try? FileManager.default.removeItem(at: dir)
    }

    var pool: SimPool { simulator.pools[0] }

    /// The configuration: pool lab, repository local, policy daily on `vms`; `extra` YAML documents appended.
    func desired(vms: String = "[web, db]", policy: String = "", extra: String = "") throws -> DesiredState {
        let text = """
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: lab}
            spec:
              url: https://\(prefix).1:4443
              credentials: {username: root, passwordFile: \(dir.path)/password}
              tls: {caFile: \(endpoint.caFile)}
            ---
            apiVersion: haven/v1
            kind: Repository
            metadata: {name: local}
            spec: {path: \(dir.path)/repo}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec:
              pool: lab
              vms: {names: \(vms)}
              repository: local
            \(policy)
            \(extra)
            """
        let result = SpecLoader.load(sources: [.init(path: dir.path + "/haven.yaml", text: text)])
        guard let state = result.state else { throw HarnessError(message: "\(result.diagnostics)") }
        return state
    }

    func engine(_ desired: DesiredState) throws -> Engine {
        try Engine(desired: desired, state: StateDirectory(path: dir.appendingPathComponent("state").path))
    }

    func fault(_ rule: String) throws {
        _ = try Simulator.control(stateDirectory: dir.appendingPathComponent("sim"), pool: nil, ["command": "fault", "rule": .string(rule)])
    }

    func clearFaults() throws {
        _ = try Simulator.control(stateDirectory: dir.appendingPathComponent("sim"), pool: nil, ["command": "fault-clear"])
    }

    func client() -> XenAPIClient {
        XenAPIClient(url: endpoint.hosts[0].url, credentials: XenCredentials(username: endpoint.username, password: endpoint.password),
                     tls: .caFile(endpoint.caFile))
    }

    /// Sessions the pool holds open right now.
    var openSessions: Int { pool.db.withLock { pool.db.find("session") { _ in true }.count } }

    /// Runs a reconcile with auto-approval, collecting the events.
    func reconcile(_ engine: Engine, scope: TargetScope? = nil) async throws -> (ReconcileReport, [ExecutionEvent]) {
        let box = EventBox()
        let report = try await engine.reconcile(ReconcileRequest(scope: scope ?? TargetScope(pools: engine.desired.pools.map(\.name), policies: nil)),
                                                events: { box.add($0) }, approve: { _ in true })
        return (report, box.events)
    }
}

struct HarnessError: Error { var message: String }

final class EventBox: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var list: [ExecutionEvent] = []
    func add(_ e: ExecutionEvent) { lock.withLock { list.append(e) } }
    var events: [ExecutionEvent] { lock.withLock { list } }
}

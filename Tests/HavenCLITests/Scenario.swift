import Foundation
import Synchronization
import XenAPI

/// An end-to-end scenario: a `haven sim` process serving a world, a configuration directory
/// pointing at it, and `haven` runs against both, with an injectable clock (HAVEN_NOW).
final class Scenario: @unchecked Sendable {
    // @unchecked: set up in init; tests use it from one task.
    static let counter = Atomic<Int>(0)
    let dir: URL
    let sim = Process()
    let prefix: String
    var now: Date = Date()
    let password = "scenario-pw"

    var config: String { dir.appendingPathComponent("config").path }
    var simState: URL { dir.appendingPathComponent("sim") }
    var repository: String { dir.appendingPathComponent("repo").path }

    /// `vms` and `policy` are YAML fragments; `poolExtra` goes into the world's pool, `poolSpec`
    /// into the Pool resource's spec. `{P}` in any of them stands for the scenario's address prefix
    /// (appliances: static prefix.50-99, DHCP prefix.200-249). `otherPools` adds whole pools to the
    /// world (hosts at prefix.11 and up; their Pool resources go into `policy`).
    init(vms: String, policy: String, poolExtra: String = "", networks: String = "[{name: net0, purpose: [nbd]}]",
         srs: String = "[{name: Local storage, type: ext, size: 64Gi}]", poolSpec: String = "", otherPools: String = "") throws {
        let n = Self.counter.add(1, ordering: .relaxed).newValue
        prefix = "127.\(150 + Int(getpid()) % 90).\(n)"
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-e2e-\(UUID().uuidString)")
        let fm = FileManager.default
        try fm.createDirectory(atPath: dir.appendingPathComponent("config").path, withIntermediateDirectories: true)
        let world = """
            pools:
              - name: lab
                port: 4443
                credentials: {username: root, password: \(password)}
            \(poolExtra)
                hosts:
                  - {name: h1, address: "\(prefix).1"}
                  - {name: h2, address: "\(prefix).2"}
                srs: \(srs)
                networks: \(networks)
                vms:
            \(vms)
            \(otherPools)
            """
        try world.replacingOccurrences(of: "{P}", with: prefix).write(to: dir.appendingPathComponent("world.yaml"), atomically: true, encoding: .utf8)
        try """
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: lab}
            spec:
              url: https://\(prefix).2:4443
              credentials: {username: root, passwordEnv: SCENARIO_PASSWORD}
              tls: {caFile: \(simState.path)/pools/lab/pki/pool-bundle.pem}
              \(poolSpec)
            ---
            apiVersion: haven/v1
            kind: Repository
            metadata: {name: local}
            spec: {path: \(repository)}
            ---
            \(policy)
            """.replacingOccurrences(of: "{P}", with: prefix).replacingOccurrences(of: "{SIM}", with: simState.path)
            .write(toFile: config + "/haven.yaml", atomically: true, encoding: .utf8)
        sim.executableURL = URL(fileURLWithPath: HavenBinary.path)
        sim.arguments = ["sim", "--world", dir.appendingPathComponent("world.yaml").path, "--state", simState.path]
        sim.standardOutput = FileHandle.nullDevice
        sim.standardError = FileHandle.nullDevice
        try sim.run()
        for _ in 0..<300 where !fm.fileExists(atPath: simState.appendingPathComponent("endpoints.json").path) { usleep(50_000) }
    }

    deinit {
        sim.terminate()
        sim.waitUntilExit()
        try? FileManager.default.removeItem(at: dir)
    }

    struct Run {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    @discardableResult
    func haven(_ args: [String], env extra: [String: String] = [:]) throws -> Run {
        var env: [String: String?] = [
            "HAVEN_STATE": dir.appendingPathComponent("state").path, "SCENARIO_PASSWORD": password,
            "HAVEN_NOW": ISO8601DateFormatter().string(from: now),
        ]
        for (k, v) in extra { env[k] = v }
        let r = try HavenBinary.run(args, in: dir, environment: env)
        return Run(status: r.status, stdout: r.stdout, stderr: r.stderr)
    }

    /// Starts `haven apply --auto-approve` without waiting; its JSON events go to `events`.
    func startApply(events: URL) throws -> Process {
        let apply = Process()
        apply.executableURL = URL(fileURLWithPath: HavenBinary.path)
        apply.arguments = ["apply", "-f", config, "--auto-approve"]
        var env = ProcessInfo.processInfo.environment
        env["HAVEN_STATE"] = dir.path + "/state"
        env["SCENARIO_PASSWORD"] = password
        env["HAVEN_NOW"] = ISO8601DateFormatter().string(from: now)
        apply.environment = env
        FileManager.default.createFile(atPath: events.path, contents: nil)
        apply.standardError = try FileHandle(forWritingTo: events)
        apply.standardOutput = FileHandle.nullDevice
        try apply.run()
        return apply
    }

    /// Waits (up to 10 s) until an event line of `events` satisfies `matches`.
    func waitForEvent(_ events: URL, _ matches: ([String: Any]) -> Bool) -> Bool {
        for _ in 0..<400 {
            let text = (try? String(contentsOf: events, encoding: .utf8)) ?? ""
            let found = text.split(separator: "\n").contains { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]).map(matches) ?? false
            }
            if found { return true }
            usleep(25_000)
        }
        return false
    }

    func diff(json: Bool = false) throws -> Run { try haven(["diff", "-f", config] + (json ? ["--output", "json"] : [])) }
    func apply() throws -> Run { try haven(["apply", "-f", config, "--auto-approve"]) }
    func simControl(_ args: [String]) throws -> Run { try haven(["sim"] + args + ["--state", simState.path]) }

    /// The plan's actions as JSON objects.
    func planActions() throws -> [[String: Any]] {
        let run = try diff(json: true)
        let obj = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
        return obj?["actions"] as? [[String: Any]] ?? []
    }

    func backups() throws -> [[String: Any]] {
        let run = try haven(["backups", "list", "-f", config, "--output", "json"])
        let obj = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
        return obj?["backups"] as? [[String: Any]] ?? []
    }

    func client() -> XenAPIClient {
        XenAPIClient(url: "https://\(prefix).1:4443", credentials: .init(username: "root", password: password),
                     tls: .caFile(simState.path + "/pools/lab/pki/pool-bundle.pem"))
    }

    /// Path of a VDI's disk file inside the simulator (what a guest sees).
    func diskFile(_ uuid: String) -> String { simState.path + "/pools/lab/disks/\(uuid).img" }

    func sha(_ path: String) throws -> String { try sha256(of: path) }
}

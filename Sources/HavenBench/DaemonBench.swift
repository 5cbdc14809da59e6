import Foundation
import HavenSim
import XenAPI

#if canImport(Glibc)
    import Glibc
#endif

/// `haven daemon` against three simulated pools (in this process, so their CPU is not the
/// daemon's): the daemon's CPU seconds (utime + stime from /proc/PID/stat) over 60 s of idling
/// once everything is backed up, and the time from a drift event — CBT disabled through XenAPI by
/// this bench — to the daemon's repair seen on the pool.
func benchDaemon() async throws -> [String: Double] {
    let dir = URL(fileURLWithPath: ".bench/daemon")
    try? FileManager.default.removeItem(at: dir)
    try FileManager.default.createDirectory(at: dir.appendingPathComponent("config"), withIntermediateDirectories: true)
    let pools = ["east", "west", "north"]
    var world = "pools:\n"
    for (i, p) in pools.enumerated() {
        world += """
              - name: \(p)
                port: 4443
                credentials: {username: root, password: bench}
                hosts: [{name: \(p)1, address: 127.9.\(21 + i).1}]
                srs: [{name: SR, type: ext, size: 1Ti}]
                networks: [{name: net0, purpose: [nbd]}]
                vms:
                  - {name: \(p)-a, power: Running, disks: [{name: \(p)-a-root, size: 8Mi, fill: {seed: \(i * 3 + 1)}}]}
                  - {name: \(p)-b, power: Running, disks: [{name: \(p)-b-root, size: 8Mi, fill: {seed: \(i * 3 + 2)}}]}
                  - {name: \(p)-c, power: Halted, disks: [{name: \(p)-c-root, size: 8Mi, fill: {seed: \(i * 3 + 3)}}]}

            """
    }
    try world.write(to: dir.appendingPathComponent("world.yaml"), atomically: true, encoding: .utf8)
    let sim = Simulator(world: try World.load(path: dir.appendingPathComponent("world.yaml").path), stateDirectory: dir.appendingPathComponent("sim"))
    let endpoints = try sim.start()
    defer { sim.stop() }
    var config = """
        apiVersion: haven/v1
        kind: Repository
        metadata: {name: local}
        spec: {path: \(dir.appendingPathComponent("repo").path)}

        """
    for ep in endpoints {
        config += """
            ---
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: \(ep.name)}
            spec: {url: "\(ep.masterURL)", credentials: {username: root, passwordEnv: BENCH_PW}, tls: {caFile: "\(ep.caFile)"}}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: \(ep.name)-daily}
            spec: {pool: \(ep.name), vms: {all: true}, schedule: {every: 24h}, cbt: true, repository: local, retention: {keepLast: 7}}

            """
    }
    try config.write(to: dir.appendingPathComponent("config/haven.yaml"), atomically: true, encoding: .utf8)

    let daemon = Process()
    daemon.executableURL = URL(fileURLWithPath: ProcessInfo.processInfo.environment["HAVEN_BIN"] ?? havenNextToBench)
    daemon.arguments = ["daemon", "-f", dir.appendingPathComponent("config").path, "--listen", "127.0.0.1:0", "--shutdown-grace", "30s"]
    var env = ProcessInfo.processInfo.environment
    env["HAVEN_STATE"] = dir.appendingPathComponent("state").path
    env["BENCH_PW"] = "bench"
    env["HAVEN_LOG_LEVEL"] = "warning"
    daemon.environment = env
    let out = Pipe()
    daemon.standardOutput = out
    FileManager.default.createFile(atPath: dir.appendingPathComponent("daemon.log").path, contents: nil)
    daemon.standardError = try FileHandle(forWritingTo: dir.appendingPathComponent("daemon.log"))
    try daemon.run()
    defer {
        if daemon.isRunning {
            kill(daemon.processIdentifier, SIGTERM)
            daemon.waitUntilExit()
        }
    }
    // The first line on standard output names the port.
    var line = Data()
    while !line.contains(0x0A) {
        let chunk = out.fileHandleForReading.availableData
        if chunk.isEmpty { throw BenchError("the daemon exited before listening; see \(dir.path)/daemon.log") }
        line.append(chunk)
    }
    let text = String(decoding: line, as: UTF8.self)
    guard let portText = text.split(separator: ":").last?.prefix(while: \.isNumber), let port = Int(portText) else {
        throw BenchError("no port in '\(text)'")
    }
    let http = HTTPClient(tls: .system)
    func get(_ path: String) -> (Int, Any?) {
        guard let (head, body) = try? http.fetch(HTTPRequest(method: .get, url: "http://127.0.0.1:\(port)\(path)", timeout: 10)) else { return (0, nil) }
        return (head.status, try? JSONSerialization.jsonObject(with: Data(body)))
    }
    // Everything backed up, nothing queued or running: the daemon is idle from here on.
    let vmCount = pools.count * 3
    var idle = false
    for _ in 0..<600 {
        let rows = (get("/api/v1/status").1 as? [String: Any])?["vms"] as? [[String: Any]] ?? []
        let info = get("/api/v1/daemon").1 as? [String: Any]
        let queue = info?["queue"] as? [String: Any]
        if rows.count == vmCount, rows.allSatisfy({ $0["lastBackup"] != nil }), queue?["depth"] as? Int == 0,
           (queue?["processing"] as? [Any])?.isEmpty == true, get("/readyz").0 == 200 {
            idle = true
            break
        }
        try await Task.sleep(for: .milliseconds(500))
    }
    guard idle else { throw BenchError("the daemon did not back up all \(vmCount) VMs; see \(dir.path)/daemon.log") }
    // Let the events of the last backups settle before measuring.
    try await Task.sleep(for: .seconds(5))
    let before = try processCPUSeconds(daemon.processIdentifier)
    try await Task.sleep(for: .seconds(60))
    let idleCPU = try processCPUSeconds(daemon.processIdentifier) - before

    // Drift: CBT disabled by hand on a protected disk, repaired by the daemon through event.from.
    var repairs: [Double] = []
    for round in 0..<5 {
        let ep = endpoints[round % endpoints.count]
        let client = XenAPIClient(url: ep.masterURL, credentials: .init(username: ep.username, password: ep.password), tls: .caFile(ep.caFile))
        guard let vm = try await client.records(VMRecord.self).first(where: { $0.value.isRealVM && $0.value.nameLabel == "\(ep.name)-a" }) else {
            throw BenchError("no VM \(ep.name)-a")
        }
        let vbd = try await client.records(VBDRecord.self).values.first { $0.vm == vm.key && $0.type == "Disk" }
        guard let vdi = vbd?.vdi, try await client.record(vdi).cbtEnabled else { throw BenchError("CBT is not on for \(ep.name)-a") }
        let start = ContinuousClock.now
        try await client.disableCBT(vdi)
        var repaired = false
        while ContinuousClock.now - start < .seconds(60) {
            if try await client.record(vdi).cbtEnabled {
                repaired = true
                break
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        let elapsed = ContinuousClock.now - start
        await client.logout()
        guard repaired else { throw BenchError("CBT disabled on \(ep.name)-a was not repaired within 60 s") }
        repairs.append(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
        try await Task.sleep(for: .seconds(2))
    }
    kill(daemon.processIdentifier, SIGTERM)
    daemon.waitUntilExit()

    print("")
    print("| haven daemon, 3 pools × 3 VMs | value | bar |")
    print("|---|---|---|")
    print("| CPU seconds over 60 s idle (utime + stime) | \(String(format: "%.3f", idleCPU)) s | ≤ 0.5 s |")
    print("| drift event (CBT disabled by hand) to repair, median of \(repairs.count) | \(String(format: "%.3f", median(repairs))) s "
          + "(range \(String(format: "%.3f", repairs.min() ?? 0))–\(String(format: "%.3f", repairs.max() ?? 0)) s) | ≤ 5 s |")
    return ["daemon_idle_cpu_seconds_60s": idleCPU, "daemon_drift_repair_seconds": median(repairs)]
}

/// utime + stime of a process, in seconds (fields 14 and 15 of /proc/PID/stat, in clock ticks).
func processCPUSeconds(_ pid: Int32) throws -> Double {
    let text = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    guard let close = text.lastIndex(of: ")") else { throw BenchError("cannot read /proc/\(pid)/stat") }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    guard fields.count > 13, let utime = Double(fields[11]), let stime = Double(fields[12]) else { throw BenchError("cannot parse /proc/\(pid)/stat") }
    return (utime + stime) / Double(sysconf(Int32(_SC_CLK_TCK)))
}


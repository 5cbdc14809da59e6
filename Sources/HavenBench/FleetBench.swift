import Foundation
import HavenSim

#if canImport(Glibc)
    import Glibc
#endif

/// The cost per VM of a reconcile with nothing to do, at 100 and 1,000 small VMs on one simulated
/// pool (served in this process, so its CPU is not haven's): haven's CPU (user + system of the
/// `haven apply` process) and the XenAPI calls it made, per VM. The first apply backs every VM up;
/// the second, measured, finds everything current. The per-VM cost must not grow with the fleet.
/// The first apply's cost per VM is printed too (a backup of each VM, for scale; no target).
/// `HAVEN_BENCH_FLEET=30,300` measures two other sizes.
func benchFleet(havenPath: String) async throws -> [String: Double] {
    var results: [String: Double] = [:]
    var rows: [(Int, Double, Double, Double, Int)] = []
    var fills: [(count: Int, wall: Double, cpuPerVM: Double, callsPerVM: Double)] = []
    // HAVEN_BENCH_FLEET="30,300" runs other fleet sizes (a quick look; the targets are at 100 and 1,000).
    let counts = (ProcessInfo.processInfo.environment["HAVEN_BENCH_FLEET"] ?? "").split(separator: ",").compactMap { Int($0) }
    for (i, count) in (counts.count == 2 ? counts : [100, 1_000]).enumerated() {
        let dir = URL(fileURLWithPath: ".bench/fleet-\(count)")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var world = """
            pools:
              - name: fleet
                port: 4443
                credentials: {username: root, password: bench}
                hosts: [{name: fleet1, address: 127.9.\(40 + i).1}]
                srs: [{name: SR, type: ext, size: 1Ti}]
                networks: [{name: net0, purpose: [nbd]}]
                vms:

            """
        for v in 0..<count {
            world += "          - {name: vm-\(v), power: Running, disks: [{name: vm-\(v)-root, size: 1Mi, fill: {seed: \(v + 1), unallocated: 0.5, random: 0.5, text: 0, duplicate: 0}}]}\n"
        }
        try world.write(to: dir.appendingPathComponent("world.yaml"), atomically: true, encoding: .utf8)
        let sim = Simulator(world: try World.load(path: dir.appendingPathComponent("world.yaml").path), stateDirectory: dir.appendingPathComponent("sim"))
        let endpoints = try sim.start()
        defer { sim.stop() }
        guard let ep = endpoints.first, let pool = sim.pool(named: "fleet") else { throw BenchError("the fleet pool did not start") }
        let config = """
            apiVersion: haven/v1
            kind: Repository
            metadata: {name: local}
            spec: {path: \(dir.appendingPathComponent("repo").path)}
            ---
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: fleet}
            spec: {url: "\(ep.masterURL)", credentials: {username: root, passwordEnv: BENCH_PW}, tls: {caFile: "\(ep.caFile)"}, limits: {transfers: 4}}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: fleet, vms: {all: true}, schedule: {every: 24h}, cbt: true, repository: local, retention: {keepLast: 7}}

            """
        let configPath = dir.appendingPathComponent("haven.yaml").path
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        let env = ["HAVEN_STATE": dir.appendingPathComponent("state").path, "BENCH_PW": "bench", "HAVEN_LOG_LEVEL": "warning"]
        // The first apply backs every VM up (enable CBT, snapshot, NBD read, data_destroy): the
        // setup, reported for what a backup of each VM costs, not a target.
        let fillCallsBefore = pool.callsServed.load(ordering: .relaxed)
        let first = try spawnMeasured(havenPath, ["apply", "-f", configPath, "--auto-approve"], env: env, log: dir.appendingPathComponent("first.log").path)
        guard first.status == 0 else { throw BenchError("the first apply of \(count) VMs exited \(first.status); see \(dir.path)/first.log") }
        let fill = (count, first.wall, first.cpu * 1_000 / Double(count),
                    Double(pool.callsServed.load(ordering: .relaxed) - fillCallsBefore) / Double(count))
        fills.append(fill)
        results["fleet_backup_seconds_\(count)"] = fill.1
        results["fleet_backup_cpu_ms_per_vm_\(count)"] = fill.2
        results["fleet_backup_calls_per_vm_\(count)"] = fill.3
        let callsBefore = pool.callsServed.load(ordering: .relaxed)
        let noop = try spawnMeasured(havenPath, ["apply", "-f", configPath, "--auto-approve"], env: env, log: dir.appendingPathComponent("noop.log").path)
        let calls = pool.callsServed.load(ordering: .relaxed) - callsBefore
        let text = (try? String(contentsOfFile: dir.appendingPathComponent("noop.log").path, encoding: .utf8)) ?? ""
        guard noop.status == 0, text.contains("No changes") else {
            throw BenchError("the second apply of \(count) VMs was not a no-change run (exit \(noop.status)); see \(dir.path)/noop.log")
        }
        let cpuPerVM = noop.cpu * 1_000 / Double(count)
        let callsPerVM = Double(calls) / Double(count)
        results["fleet_noop_cpu_ms_per_vm_\(count)"] = cpuPerVM
        results["fleet_calls_per_vm_\(count)"] = callsPerVM
        rows.append((count, noop.wall, noop.cpu, cpuPerVM, calls))
        try? FileManager.default.removeItem(at: dir)
    }
    let growth = rows.count == 2 && rows[0].3 > 0 ? rows[1].3 / rows[0].3 : 0
    results["fleet_noop_cpu_growth_1000_vs_100"] = growth
    // What one more VM costs, the process's fixed cost (start, login, reading the pool) taken out.
    let marginal = rows.count == 2 ? (rows[1].2 - rows[0].2) * 1_000 / Double(rows[1].0 - rows[0].0) : 0
    results["fleet_noop_marginal_cpu_ms_per_vm"] = marginal
    results["fleet_calls_per_vm"] = results["fleet_calls_per_vm_1000"] ?? 0
    print("")
    print("| no-change reconcile, 1 pool, 4 transfers | wall | haven CPU | CPU per VM (target ≤ 20 ms) | XenAPI calls (per VM) |")
    print("|---|---|---|---|---|")
    for (count, wall, cpu, perVM, calls) in rows {
        print("| \(count) VMs | \(String(format: "%.2f", wall)) s | \(String(format: "%.2f", cpu)) s | \(String(format: "%.1f", perVM)) ms "
              + "| \(calls) (\(String(format: "%.2f", Double(calls) / Double(count)))) |")
    }
    print("| per-VM CPU at 1,000 vs 100 VMs (target ≤ 1.2×) | | | \(String(format: "%.2f", growth))× | |")
    print("| CPU of one more VM (between the two sizes) | | | \(String(format: "%.2f", marginal)) ms | |")
    print("")
    print("| first apply (a full backup of every VM; setup) | wall | haven CPU per VM | XenAPI calls per VM |")
    print("|---|---|---|---|")
    for f in fills {
        print("| \(f.count) VMs | \(String(format: "%.1f", f.wall)) s | \(String(format: "%.1f", f.cpuPerVM)) ms | \(String(format: "%.1f", f.callsPerVM)) |")
    }
    return results
}

/// The `haven` built with this benchmark: beside it, whatever the scratch path.
var havenNextToBench: String {
    URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("haven").path
}

/// Runs a program to its end with standard output and error to `log`: exit status, wall seconds,
/// and its CPU seconds (user + system, from wait4).
func spawnMeasured(_ tool: String, _ args: [String], env: [String: String], log: String) throws -> (status: Int32, wall: Double, cpu: Double) {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var environment = ProcessInfo.processInfo.environment
    environment.merge(env) { _, b in b }
    let argv = ([tool] + args).map { strdup($0) } + [nil]
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
        for p in argv { free(p) }
        for p in envp { free(p) }
    }
    var pid: pid_t = 0
    let start = DispatchTime.now().uptimeNanoseconds
    guard posix_spawn(&pid, tool, &actions, nil, argv, envp) == 0 else { throw BenchError("cannot start \(tool)") }
    var status: Int32 = 0
    var usage = rusage()
    while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
    let wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    let cpu = cpuSeconds(usage)
    let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    return (code, wall, cpu)
}

import Foundation
import Synchronization
import Testing
import XenAPI

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `haven daemon` against `haven sim`: it backs up without being asked, follows configuration
/// edits (keeping the last good one), repairs drift reported by event.from, serves /metrics that
/// Prometheus' own parser reads, and stops cleanly on SIGTERM in the middle of a transfer.
@Suite(.serialized) struct DaemonTests {
    static let vms = """
              - name: web
                power: Running
                disks: [{name: web-root, size: 8Mi, fill: {seed: 1}}]
        """

    static func policy(suspend: Bool = false) -> String {
        """
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: daily}
        spec:
          pool: lab
          vms: {names: [web]}
          schedule: {every: 24h}
          cbt: true
          repository: local
          retention: {keepLast: 7}
          suspend: \(suspend)
        """
    }

    @Test func backsUpFollowsEditsRepairsDriftAndServesMetrics() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy())
        let d = try DaemonProcess(s)
        defer { d.kill() }
        let port = try await d.port()

        // No command: the daemon reconciles at start and the schedule (never backed up) fires.
        try await until("a backup exists", 60) { try s.backups().count == 1 }
        #expect(try await d.get(port, "/healthz").status == 200)
        try await until("ready", 30) { try await d.get(port, "/readyz").status == 200 }
        var status = try await d.status(port)
        let row = try #require((status["vms"] as? [[String: Any]])?.first)
        #expect(row["vm"] as? String == "web" && row["rpoMet"] as? Bool == true && row["lastBackup"] != nil)
        let page = try await d.get(port, "/")
        #expect(page.status == 200 && page.body.contains("class=\"rpo met\">met<") && page.body.contains("<svg"))

        // /metrics, read by Prometheus' own Python parser.
        let metrics = try await d.get(port, "/metrics").body
        let file = s.dir.appendingPathComponent("metrics.txt")
        try metrics.write(to: file, atomically: true, encoding: .utf8)
        let parsed = try runTool("python3", ["-c", """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for f in text_string_to_metric_families(open(sys.argv[1]).read()):
                for s in f.samples:
                    print(s.name, sorted(s.labels.items()), s.value)
            """, file.path])
        #expect(parsed.status == 0, "\(parsed.output)")
        for series in ["haven_last_success_timestamp_seconds", "haven_rpo_met", "haven_backup_duration_seconds_bucket", "haven_bytes_read_total",
                       "haven_bytes_stored_total", "haven_reconcile_total", "haven_workqueue_depth", "haven_workqueue_adds_total",
                       "haven_workqueue_retries_total", "haven_workqueue_longest_running_processor_seconds", "haven_config_valid"] {
            #expect(parsed.output.contains(series + " "), "\(series) in /metrics")
        }
        #expect(parsed.output.contains("haven_rpo_met [('policy', 'daily'), ('pool', 'lab'), ('vm', 'web')] 1.0"), "\(parsed.output)")

        // CBT disabled by hand on the protected disk: event.from wakes the daemon, which enables it again.
        let c = s.client()
        let (web, _) = try await c.vmNamed("web")
        let disk = try #require(try await c.diskVDIs(web).first)
        #expect(try await c.record(disk).cbtEnabled)
        try await c.disableCBT(disk)
        try await until("CBT enabled again", 30) { try await c.record(disk).cbtEnabled }
        await c.logout()

        // A broken edit: logged with file:line:col, shown by the status and /readyz; the last good configuration stays.
        let broken = s.config + "/broken.yaml"
        try "apiVersion: haven/v1\nkind: BackupPolicy\nmetadata: {name: weekly}\nspec: {pool: lab, vms: {names: [web]}, schedule: {every: often}, repository: local}\n"
            .write(toFile: broken, atomically: true, encoding: .utf8)
        try await until("the error is shown", 20) {
            let cfg = (try await d.status(port)["daemon"] as? [String: Any])?["config"] as? [String: Any]
            return (cfg?["errors"] as? [String])?.contains { $0.contains("broken.yaml:") } == true
        }
        let ready = try await d.get(port, "/readyz")
        #expect(ready.status == 200 && ready.body.contains("broken.yaml:"), "still ready on the last good configuration: \(ready.body)")
        #expect(d.stderr.contains("broken.yaml:"), "logged with file:line:col")

        // A good edit takes effect without a restart: the policy is suspended.
        try FileManager.default.removeItem(atPath: broken)
        try """
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: lab}
            spec:
              url: https://\(s.prefix).2:4443
              credentials: {username: root, passwordEnv: SCENARIO_PASSWORD}
              tls: {caFile: \(s.simState.path)/pools/lab/pki/pool-bundle.pem}
            ---
            apiVersion: haven/v1
            kind: Repository
            metadata: {name: local}
            spec: {path: \(s.repository)}
            ---
            \(Self.policy(suspend: true))
            """.write(toFile: s.config + "/haven.yaml", atomically: true, encoding: .utf8)
        try await until("the policy is suspended", 30) {
            status = try await d.status(port)
            let cfg = (status["daemon"] as? [String: Any])?["config"] as? [String: Any]
            let row = (status["vms"] as? [[String: Any]])?.first
            return (cfg?["errors"] as? [String])?.isEmpty == true && row?["suspended"] as? Bool == true
        }

        d.signal(SIGTERM)
        let code = try await d.exitStatus(within: 30)
        #expect(code == 0, "exit 0 on SIGTERM: \(d.stderr.suffix(2000))")
    }

    @Test func sigtermDuringATransferStopsCleanlyAndTheNextStartFinishes() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy())
        // Slow the transfer down so SIGTERM lands while it runs; the grace (1 s) is shorter than it.
        #expect(try s.simControl(["fault", "--rule", "latency:VDI.get_nbd_info:4s"]).status == 0)
        let d = try DaemonProcess(s, grace: "1s")
        defer { d.kill() }
        _ = try await d.port()
        let c = s.client()
        try await until("haven's snapshot exists", 30) { try await c.records(VMRecord.self).values.contains { $0.isASnapshot } }
        // `haven apply` meanwhile fails on the pool's lock, naming the daemon.
        let apply = try s.apply()
        #expect(apply.status == 2 && apply.stderr.contains("haven daemon"), "\(apply.stderr)")
        d.signal(SIGTERM)
        let code = try await d.exitStatus(within: 40)
        #expect(code == 0, "exit 0: \(d.stderr.suffix(3000))")
        let snapshots = try await c.records(VMRecord.self).values.filter { $0.isASnapshot }
        #expect(snapshots.isEmpty, "no orphan snapshot: \(snapshots.map(\.nameLabel))")
        #expect(try s.backups().isEmpty, "no half version")

        // The next start completes the backup.
        #expect(try s.simControl(["fault", "--clear"]).status == 0)
        let again = try DaemonProcess(s)
        defer { again.kill() }
        _ = try await again.port()
        try await until("the backup completes", 60) { try s.backups().count == 1 }
        again.signal(SIGTERM)
        #expect(try await again.exitStatus(within: 30) == 0)
        await c.logout()
    }

    @Test func aSecondDaemonWaitsAsStandbyAndTakesOver() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy())
        let first = try DaemonProcess(s)
        defer { first.kill() }
        let p1 = try await first.port()
        try await until("first ready", 60) { try await first.get(p1, "/readyz").status == 200 }
        let second = try DaemonProcess(s)
        defer { second.kill() }
        let p2 = try await second.port()
        try await until("standby", 20) { second.stderr.contains("standby") }
        let r = try await second.get(p2, "/readyz")
        #expect(r.status == 503 && r.body.contains("standby"))
        first.signal(SIGTERM)
        #expect(try await first.exitStatus(within: 30) == 0)
        try await until("the standby took over", 30) { try await second.get(p2, "/readyz").status == 200 }
        second.signal(SIGTERM)
        #expect(try await second.exitStatus(within: 30) == 0)
    }
}

/// Polls `condition` until it holds, failing after `seconds` (a bound, not a sleep).
func until(_ what: String, _ seconds: Double, _ condition: () async throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if (try? await condition()) == true { return }
        try await Task.sleep(for: .milliseconds(250))
    }
    if try await condition() { return }
    Issue.record("timed out after \(Int(seconds)) s waiting for: \(what)")
    throw CancellationError()
}

/// A `haven daemon` process on a scenario, on a free port, its output collected as it comes.
final class DaemonProcess: @unchecked Sendable {
    // @unchecked: `process` is configured in init and afterwards only signalled and polled
    // (Foundation's Process allows that from any thread); the output buffers are mutexes.
    let process: Process
    let out = Output()
    let err = Output()

    /// Text a pipe delivered so far.
    final class Output: Sendable {
        let text = Mutex("")
        func append(_ d: Data) { text.withLock { $0 += String(decoding: d, as: UTF8.self) } }
        var value: String { text.withLock { $0 } }
    }

    init(_ s: Scenario, grace: String = "30s") throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: HavenBinary.path)
        p.arguments = ["daemon", "-f", s.config, "--listen", "127.0.0.1:0", "--shutdown-grace", grace]
        var env = ProcessInfo.processInfo.environment
        env["HAVEN_STATE"] = s.dir.appendingPathComponent("state").path
        env["SCENARIO_PASSWORD"] = s.password
        env["HAVEN_NOW"] = nil
        env["HAVEN_LOG_LEVEL"] = "info"
        p.environment = env
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        let out = self.out, err = self.err
        o.fileHandleForReading.readabilityHandler = { h in
            out.append(h.availableData)
        }
        e.fileHandleForReading.readabilityHandler = { h in
            err.append(h.availableData)
        }
        try p.run()
        process = p
    }

    var stdout: String { out.value }
    var stderr: String { err.value }

    func port() async throws -> Int {
        var found: Int?
        try await until("the daemon listens", 30) {
            guard let r = stdout.range(of: #"listening on http://127\.0\.0\.1:(\d+)"#, options: .regularExpression) else { return false }
            found = Int(stdout[r].split(separator: ":").last ?? "")
            return found != nil
        }
        return found ?? 0
    }

    func get(_ port: Int, _ path: String) async throws -> (status: Int, body: String) {
        let (data, response) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)\(path)")!)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    func status(_ port: Int) async throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(try await get(port, "/api/v1/status").body.utf8)) as? [String: Any] ?? [:]
    }

    func signal(_ sig: Int32) { Glibc.kill(process.processIdentifier, sig) }

    func exitStatus(within seconds: Double) async throws -> Int32 {
        try await until("the daemon exits", seconds) { !process.isRunning }
        return process.terminationStatus
    }

    func kill() {
        if process.isRunning {
            signal(SIGKILL)
            process.waitUntilExit()
        }
    }
}

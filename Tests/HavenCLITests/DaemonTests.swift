import Foundation
import Synchronization
import Testing
import XenAPI

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `haven daemon` against `haven sim`: it backs up without being asked (and again when its timer
/// says), follows configuration edits (keeping the last good one), repairs drift that event.from
/// reports (CBT disabled through the official SDK), picks a VM tagged into a policy up at once,
/// honours `haven suspend|resume` live, serves /metrics that Prometheus' own parser reads and
/// /api/v1/status equal to `haven status --output json`, and stops cleanly on SIGTERM in the
/// middle of a transfer; a standby takes over after kill -9.
@Suite(.serialized) struct DaemonTests {
    static let vms = """
              - name: web
                power: Running
                disks: [{name: web-root, size: 8Mi, fill: {seed: 1}}]
        """

    static func policy(suspend: Bool = false, every: String = "24h") -> String {
        """
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: daily}
        spec:
          pool: lab
          vms: {names: [web]}
          schedule: {every: \(every)}
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
        #expect(page.status == 200 && page.body.contains("class=\"rpo met\">met<") && page.body.contains("<svg id=\"sizes\""))

        // /api/v1/status is `haven status --output json`: one computation, one encoding (only `time` differs).
        try await until("the status settles", 30) { (try await d.info(port)["running"] as? [Any])?.isEmpty == true }
        let cli = try s.haven(["status", "-f", s.config, "--output", "json"], env: ["HAVEN_NOW": ISO8601DateFormatter().string(from: Date())])
        #expect(cli.status == 0, "\(cli.stderr)")
        let served = try await d.get(port, "/api/v1/status").body
        #expect(try canonical(served, dropping: "time") == canonical(cli.stdout, dropping: "time"), "\(served)\n---\n\(cli.stdout)")

        // /metrics, read by Prometheus' own Python parser.
        let parsed = try await d.parsedMetrics(port, in: s)
        #expect(parsed.status == 0, "\(parsed.output)")
        for series in ["haven_last_success_timestamp_seconds", "haven_rpo_met", "haven_backup_duration_seconds_bucket", "haven_bytes_read_total",
                       "haven_bytes_stored_total", "haven_reconcile_total", "controller_runtime_reconcile_total", "workqueue_depth",
                       "workqueue_adds_total", "workqueue_retries_total", "workqueue_longest_running_processor_seconds",
                       "workqueue_unfinished_work_seconds", "workqueue_work_duration_seconds_bucket", "haven_config_valid"] {
            #expect(parsed.output.contains(series + " "), "\(series) in /metrics")
        }
        #expect(parsed.output.contains("haven_rpo_met [('policy', 'daily'), ('pool', 'lab'), ('vm', 'web')] 1.0"), "\(parsed.output)")
        #expect(parsed.output.contains("workqueue_depth [('name', 'haven')] "), "\(parsed.output)")

        // CBT disabled by hand through the official SDK: event.from wakes the daemon, which enables it again.
        let c = s.client()
        let (web, _) = try await c.vmNamed("web")
        let disk = try #require(try await c.diskVDIs(web).first)
        let diskUUID = try await c.record(disk).uuid
        #expect(try await c.record(disk).cbtEnabled)
        let disabledAt = Date()
        let off = try s.sdk("x.VDI.disable_cbt(x.VDI.get_by_uuid('\(diskUUID)'))")
        #expect(off.status == 0, "\(off.output)")
        try await until("CBT enabled again", 30) { try await c.record(disk).cbtEnabled }
        print("daemon test: CBT disabled through the SDK was enabled again after \(String(format: "%.2f", Date().timeIntervalSince(disabledAt))) s")
        await c.logout()

        // A broken edit: logged with file:line:col, shown by /api/v1/daemon and /readyz; the last good configuration stays.
        let broken = s.config + "/broken.yaml"
        try "apiVersion: haven/v1\nkind: BackupPolicy\nmetadata: {name: weekly}\nspec: {pool: lab, vms: {names: [web]}, schedule: {every: often}, repository: local}\n"
            .write(toFile: broken, atomically: true, encoding: .utf8)
        try await until("the error is shown", 20) {
            let cfg = try await d.info(port)["config"] as? [String: Any]
            return (cfg?["errors"] as? [String])?.contains { $0.contains("broken.yaml:") } == true
        }
        let ready = try await d.get(port, "/readyz")
        #expect(ready.status == 200 && ready.body.contains("broken.yaml:"), "still ready on the last good configuration: \(ready.body)")
        #expect(d.stderr.contains("broken.yaml:"), "logged with file:line:col")

        // A good edit takes effect without a restart: the policy is suspended in its YAML.
        try FileManager.default.removeItem(atPath: broken)
        try s.configText(policy: Self.policy(suspend: true)).write(toFile: s.config + "/haven.yaml", atomically: true, encoding: .utf8)
        try await until("the policy is suspended", 30) {
            status = try await d.status(port)
            let cfg = try await d.info(port)["config"] as? [String: Any]
            let row = (status["vms"] as? [[String: Any]])?.first
            return (cfg?["errors"] as? [String])?.isEmpty == true && row?["suspended"] as? Bool == true && row?["suspendedBy"] as? String == "config"
        }

        d.signal(SIGTERM)
        let code = try await d.exitStatus(within: 30)
        #expect(code == 0, "exit 0 on SIGTERM: \(d.stderr.suffix(2000))")
    }

    /// The timer of a key fires when the planner says its next backup is due, with nothing else
    /// waking the daemon; in between it reconciles (almost) nothing.
    @Test func aScheduleFiresOnItsTimer() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy(every: "1m"))
        let d = try DaemonProcess(s)
        defer { d.kill() }
        let port = try await d.port()
        try await until("the first backup", 60) { try s.backups().count == 1 }
        try await until("idle", 30) { (try await d.info(port)["running"] as? [Any])?.isEmpty == true }
        let before = try await d.reconciles(port, in: s)
        try await until("the second backup, from the timer", 150) { try s.backups().count == 2 }
        let dates = try s.backups().compactMap { ($0["time"] as? String).flatMap(ISO8601DateFormatter().date(from:)) }.sorted()
        #expect(dates.count == 2)
        #expect(dates[1].timeIntervalSince(dates[0]) >= 60, "not before it was due: \(dates)")
        let during = try await d.reconciles(port, in: s) - before
        #expect(during <= 6, "the daemon slept between the two backups (\(during) reconciles)")
        d.signal(SIGTERM)
        #expect(try await d.exitStatus(within: 30) == 0)
    }

    /// A VM tagged into a policy gets its key from the event at once; `haven suspend` and `haven
    /// resume` take effect on the running daemon, and `haven status` shows them.
    @Test func taggedVMsAreTakenAndSuspendResumeActLive() async throws {
        let vms = """
                  - name: web
                    power: Running
                    tags: [backup]
                    disks: [{name: web-root, size: 4Mi, fill: {seed: 1}}]
                  - name: db
                    power: Running
                    disks: [{name: db-root, size: 4Mi, fill: {seed: 2}}]
            """
        let policy = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: tagged}
            spec: {pool: lab, vms: {tags: [backup]}, schedule: {every: 24h}, cbt: true, repository: local, retention: {keepLast: 7}}
            """
        let s = try Scenario(vms: vms, policy: policy)
        let d = try DaemonProcess(s)
        defer { d.kill() }
        let port = try await d.port()
        try await until("web is backed up", 60) { try s.backups().contains { ($0["vm"] as? [String: Any])?["name"] as? String == "web" } }
        #expect(try !s.backups().contains { ($0["vm"] as? [String: Any])?["name"] as? String == "db" })

        // Tagged through the official SDK: backed up without a command, without waiting for a schedule.
        let tag = try s.sdk("x.VM.add_tags(x.VM.get_by_name_label('db')[0], 'backup')")
        #expect(tag.status == 0, "\(tag.output)")
        try await until("db is backed up", 60) { try s.backups().contains { ($0["vm"] as? [String: Any])?["name"] as? String == "db" } }

        // Suspended by command: the running daemon shows it and repairs nothing of the policy's.
        let suspend = try s.haven(["suspend", "tagged", "-f", s.config])
        #expect(suspend.status == 0, "\(suspend.stderr)")
        try await until("suspended on the running daemon", 20) {
            let rows = try await d.status(port)["vms"] as? [[String: Any]] ?? []
            return rows.count == 2 && rows.allSatisfy { $0["suspended"] as? Bool == true && $0["suspendedBy"] as? String == "command" }
        }
        #expect(try s.haven(["status", "-f", s.config]).stdout.contains("yes (cmd)"))
        try await until("the daemon saw the suspension", 20) {
            ((try await d.info(port)["suspensions"] as? [[String: Any]]) ?? []).contains { $0["policy"] as? String == "tagged" }
        }
        let c = s.client()
        let (web, _) = try await c.vmNamed("web")
        let disk = try #require(try await c.diskVDIs(web).first)
        let diskUUID = try await c.record(disk).uuid
        let events = try await d.metric(port, "haven_pool_events_total", in: s)
        #expect(try s.sdk("x.VDI.disable_cbt(x.VDI.get_by_uuid('\(diskUUID)'))").status == 0)
        try await until("the daemon received the event", 20) { try await d.metric(port, "haven_pool_events_total", in: s) > events }
        // It had the event and did nothing for a suspended policy (a repair takes well under a second here).
        try await Task.sleep(for: .seconds(3))
        #expect(try await !c.record(disk).cbtEnabled, "a suspended policy's drift is left alone")

        // Resumed: the drift is repaired, the rows are no longer suspended.
        let resume = try s.haven(["resume", "tagged", "-f", s.config])
        #expect(resume.status == 0 && resume.stdout.contains("resumed tagged"), "\(resume.stdout)\(resume.stderr)")
        try await until("CBT enabled again after resume", 30) { try await c.record(disk).cbtEnabled }
        let rows = try await d.status(port)["vms"] as? [[String: Any]] ?? []
        #expect(rows.allSatisfy { $0["suspended"] as? Bool == false }, "\(rows)")
        await c.logout()
        let typo = try s.haven(["suspend", "taged", "-f", s.config])
        #expect(typo.status == 2 && typo.stderr.contains("did you mean 'tagged'"), "\(typo.stderr)")
        d.signal(SIGTERM)
        #expect(try await d.exitStatus(within: 30) == 0)
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
        let signalled = Date()
        d.signal(SIGTERM)
        let code = try await d.exitStatus(within: 40)
        #expect(code == 0, "exit 0: \(d.stderr.suffix(3000))")
        print("daemon test: exited \(String(format: "%.2f", Date().timeIntervalSince(signalled))) s after SIGTERM (grace 1 s)")
        let snapshots = try await c.records(VMRecord.self).values.filter { $0.isASnapshot }
        #expect(snapshots.isEmpty, "no orphan snapshot: \(snapshots.map(\.nameLabel))")
        #expect(try s.backups().isEmpty, "no half version")
        // The engine's own lines are logged once (they used to appear twice, the daemon repeating them).
        let removed = d.stderr.components(separatedBy: "removed the snapshot of the failed backup").count - 1
        #expect(removed == 1, "\(d.stderr.suffix(3000))")

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

    /// A second SIGTERM during a long grace cancels the running transfer at once, as cleanly as
    /// the end of the grace would: no half version, no orphan snapshot, exit 0.
    @Test func aSecondSignalEndsTheGraceAndStillLeavesNothing() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy())
        #expect(try s.simControl(["fault", "--rule", "latency:VDI.get_nbd_info:4s"]).status == 0)
        let d = try DaemonProcess(s, grace: "1h")
        defer { d.kill() }
        _ = try await d.port()
        let c = s.client()
        try await until("haven's snapshot exists", 30) { try await c.records(VMRecord.self).values.contains { $0.isASnapshot } }
        d.signal(SIGTERM)
        try await until("the graceful shutdown began", 30) { d.stderr.contains("running transfers have") }
        d.signal(SIGTERM)
        // Well inside the hour of grace: only the second signal can have ended it.
        let code = try await d.exitStatus(within: 60)
        #expect(code == 0, "exit 0: \(d.stderr.suffix(3000))")
        #expect(d.stderr.contains("a second SIGTERM came during the grace: cancelling 1 running reconcile(s)"), "\(d.stderr.suffix(3000))")
        #expect(!d.stderr.contains("grace of"), "the grace did not end by itself")
        let snapshots = try await c.records(VMRecord.self).values.filter { $0.isASnapshot }
        #expect(snapshots.isEmpty, "no orphan snapshot: \(snapshots.map(\.nameLabel))")
        #expect(try s.backups().isEmpty, "no half version")
        await c.logout()
    }

    /// A listen address that cannot be bound is said at start, naming it, before the daemon takes
    /// its lock (exit 2); a --git-pull interval under a second is an argument error (64).
    @Test func anAddressInUseOrAZeroPullIntervalIsRefusedClearly() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy())
        let first = try DaemonProcess(s)
        defer { first.kill() }
        let port = try await first.port()
        try await until("first active", 60) { first.stderr.contains("active: holding") }
        let second = try s.haven(["daemon", "-f", s.config, "--listen", "127.0.0.1:\(port)"])
        #expect(second.status == 2, "\(second.stderr)")
        #expect(second.stderr.contains("cannot listen on 127.0.0.1:\(port): Address already in use"), "\(second.stderr)")
        #expect(!second.stderr.contains("holding") && !second.stderr.contains("watching pool events"), "failed before starting: \(second.stderr)")
        let pull = try s.haven(["daemon", "-f", s.config, "--listen", "127.0.0.1:0", "--git-pull", "0s"])
        #expect(pull.status == 64 && pull.stderr.contains("--git-pull takes an interval of at least 1s"), "\(pull.stderr)")
        first.signal(SIGTERM)
        #expect(try await first.exitStatus(within: 30) == 0)
    }

    /// A pool whose event watch fails after it was read (the pool went away) used to leave
    /// /readyz, /api/v1/daemon and the page saying all was well. They now say so until the watch
    /// is back; the daemon stays ready (the other pools are kept, the page must stay reachable).
    @Test func aPoolWhoseEventWatchIsDownIsShown() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy())
        let d = try DaemonProcess(s)
        defer { d.kill() }
        let port = try await d.port()
        try await until("ready", 60) { try await d.get(port, "/readyz").body.hasPrefix("ready") }
        #expect(!(try await d.get(port, "/readyz").body.contains("degraded")))
        #expect(try s.simControl(["fault", "--rule", "error:event.from:INTERNAL_ERROR"]).status == 0)
        // An event ends the watch's current long poll; its next call meets the fault.
        #expect(try s.sdk("x.VM.set_name_description(x.VM.get_by_name_label('web')[0], 'poke')").status == 0)
        try await until("readyz says the watch is down", 60) {
            try await d.get(port, "/readyz").body.contains("degraded: pool lab event watch down since")
        }
        let r = try await d.get(port, "/readyz")
        #expect(r.status == 200 && r.body.hasPrefix("ready") && r.body.contains("INTERNAL_ERROR"), "\(r.body)")
        let unreachable = try await d.info(port)["unreachablePools"] as? [String: String]
        #expect(unreachable?["lab"]?.contains("event watch down") == true, "\(String(describing: unreachable))")
        #expect(try await d.get(port, "/").body.contains("Pool <strong>lab</strong> cannot be read: event watch down"))
        #expect(try s.simControl(["fault", "--clear"]).status == 0)
        try await until("the watch is back", 90) { !(try await d.get(port, "/readyz").body.contains("degraded")) }
        #expect((try await d.info(port)["unreachablePools"] as? [String: String])?.isEmpty == true)
        d.signal(SIGTERM)
        #expect(try await d.exitStatus(within: 30) == 0)
    }

    /// SIGTERM while a backup runs, with a grace long enough for it: the backup finishes, is
    /// kept, and its reconcile is reported as succeeded (it used to be logged as an error,
    /// "reconcile interrupted: 2 done, 0 failed, 0 skipped", and counted as interrupted).
    @Test func aRunFinishedWithinTheGraceIsASuccess() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy())
        #expect(try s.simControl(["fault", "--rule", "latency:VDI.get_nbd_info:3s"]).status == 0)
        let d = try DaemonProcess(s, grace: "5m")
        defer { d.kill() }
        _ = try await d.port()
        let c = s.client()
        try await until("haven's snapshot exists", 30) { try await c.records(VMRecord.self).values.contains { $0.isASnapshot } }
        d.signal(SIGTERM)
        #expect(try await d.exitStatus(within: 60) == 0, "\(d.stderr.suffix(3000))")
        #expect(try s.backups().count == 1, "the backup finished within the grace")
        let lines = d.stderr.split(separator: "\n").filter { $0.contains("key=backup/lab/daily/") && $0.contains("reconcile ") }
        #expect(lines.contains { $0.contains("reconcile succeeded") }, "\(lines)")
        #expect(!lines.contains { $0.contains("reconcile interrupted") || $0.contains(" error ") }, "\(lines)")
        let history = try s.haven(["history", "-f", s.config, "--output", "json"])
        #expect(history.status == 0, "\(history.stderr)")
        let runs = (try JSONSerialization.jsonObject(with: Data(history.stdout.utf8)) as? [String: Any])?["runs"] as? [[String: Any]] ?? []
        let backupRuns = runs.filter { ($0["command"] as? String)?.hasPrefix("daemon backup/lab/daily/") == true }
        #expect(!backupRuns.isEmpty && backupRuns.allSatisfy { $0["result"] as? String == "succeeded" }, "\(history.stdout)")
        await c.logout()
    }

    /// A configuration directory that does not exist (yet): the daemon said it was "keeping the
    /// last good one" when it had none. It now says it has none and is not ready, and takes the
    /// files up when they appear (git-sync's first checkout).
    @Test func aMissingConfigurationIsSaidAndThenTakenUp() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy())
        let later = s.dir.appendingPathComponent("not-yet").path
        let d = try DaemonProcess(s, config: later)
        defer { d.kill() }
        let port = try await d.port()
        try await until("the daemon says it has no configuration", 30) { d.stderr.contains("no valid configuration yet") }
        #expect(!d.stderr.contains("keeping the last good one"), "\(d.stderr)")
        let r = try await d.get(port, "/readyz")
        #expect(r.status == 503 && r.body.contains("no valid configuration loaded yet"), "\(r.body)")
        try FileManager.default.copyItem(atPath: s.config, toPath: later)
        try await until("ready once the files are there", 60) { try await d.get(port, "/readyz").status == 200 }
        try await until("the backup is made", 60) { try s.backups().count == 1 }
        d.signal(SIGTERM)
        #expect(try await d.exitStatus(within: 30) == 0)
    }

    @Test func aStandbyTakesOverWhenTheActiveDaemonIsKilled() async throws {
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
        // kill -9: no clean-up at all; the kernel releases the lock and the standby acts.
        first.kill()
        try await until("the standby took over", 30) { try await second.get(p2, "/readyz").status == 200 }
        #expect(second.stderr.contains("active: holding"))
        second.signal(SIGTERM)
        #expect(try await second.exitStatus(within: 30) == 0)
    }
}

/// JSON text with its keys sorted and `key` removed at the top level, for comparing two documents.
func canonical(_ text: String, dropping key: String) throws -> String {
    var obj = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    obj[key] = nil
    return String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self)
}

extension Scenario {
    /// Runs Python with the official XenAPI SDK (PyPI `XenAPI`) logged in to the simulated pool as `x`.
    func sdk(_ body: String) throws -> (status: Int32, output: String) {
        let script = """
            import json, sys, XenAPI
            ep = json.load(open(sys.argv[1]))[0]
            s = XenAPI.Session(ep["masterURL"], ignore_ssl=True)
            s.xenapi.login_with_password(ep["username"], ep["password"], "2.21", "haven-test")
            x = s.xenapi
            try:
                \(body)
            finally:
                x.session.logout()
            """
        return try runTool("python3", ["-c", script, simState.appendingPathComponent("endpoints.json").path])
    }

    /// The scenario's configuration with another policy document.
    func configText(policy: String) -> String {
        """
        apiVersion: haven/v1
        kind: Pool
        metadata: {name: lab}
        spec:
          url: https://\(prefix).2:4443
          credentials: {username: root, passwordEnv: SCENARIO_PASSWORD}
          tls: {caFile: \(simState.path)/pools/lab/pki/pool-bundle.pem}
        ---
        apiVersion: haven/v1
        kind: Repository
        metadata: {name: local}
        spec: {path: \(repository)}
        ---
        \(policy)
        """
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

    init(_ s: Scenario, grace: String = "30s", config: String? = nil) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: HavenBinary.path)
        p.arguments = ["daemon", "-f", config ?? s.config, "--listen", "127.0.0.1:0", "--shutdown-grace", grace]
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

    func info(_ port: Int) async throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(try await get(port, "/api/v1/daemon").body.utf8)) as? [String: Any] ?? [:]
    }

    /// /metrics as Prometheus' own Python parser reads it: one `name [labels] value` line per sample.
    func parsedMetrics(_ port: Int, in s: Scenario) async throws -> (status: Int32, output: String) {
        let file = s.dir.appendingPathComponent("metrics-\(UUID().uuidString).txt")
        try await get(port, "/metrics").body.write(to: file, atomically: true, encoding: .utf8)
        return try runTool("python3", ["-c", """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for f in text_string_to_metric_families(open(sys.argv[1]).read()):
                for s in f.samples:
                    print(s.name, sorted(s.labels.items()), s.value)
            """, file.path])
    }

    /// The sum of a series' samples.
    func metric(_ port: Int, _ name: String, in s: Scenario) async throws -> Double {
        try await parsedMetrics(port, in: s).output.split(separator: "\n").filter { $0.hasPrefix(name + " ") }
            .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
    }

    /// Key reconciles so far, whatever their result.
    func reconciles(_ port: Int, in s: Scenario) async throws -> Double { try await metric(port, "haven_reconcile_total", in: s) }

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

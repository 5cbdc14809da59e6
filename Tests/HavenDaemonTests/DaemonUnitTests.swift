import Foundation
import HavenCatalog
import HavenCore
import HavenEngine
import Testing

@testable import HavenDaemon

@Suite struct DaemonOptionTests {
    @Test(arguments: [("127.0.0.1:9810", "127.0.0.1", 9810), ("0.0.0.0:0", "0.0.0.0", 0), ("[::1]:80", "::1", 80)])
    func listenAddresses(text: String, host: String, port: Int) throws {
        let a = try ListenAddress(parsing: text)
        #expect(a.host == host && a.port == port)
    }

    @Test(arguments: ["9810", "host:", ":80", "h:70000", "h:x"])
    func badListenAddresses(text: String) {
        #expect(throws: DaemonError.self) { try ListenAddress(parsing: text) }
    }

    @Test(arguments: [("30s", 30), ("5m", 300), ("1h30m", 5400), ("90", 90), ("2d", 172_800)])
    func durations(text: String, seconds: Int64) throws {
        #expect(try parseDuration(text) == .seconds(seconds))
    }

    @Test(arguments: ["", "5x", "m", "5m3"])
    func badDurations(text: String) {
        #expect(throws: DaemonError.self) { try parseDuration(text) }
    }
}

@Suite struct ConfigStoreTests {
    static let good = """
        apiVersion: haven/v1
        kind: Pool
        metadata: {name: lab}
        spec: {url: "https://127.0.0.1:4443", credentials: {username: root, passwordEnv: P}}
        ---
        apiVersion: haven/v1
        kind: Repository
        metadata: {name: local}
        spec: {path: /tmp/haven-repo}
        ---
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: daily}
        spec: {pool: lab, vms: {names: [web]}, schedule: {every: 24h}, repository: local, retention: {keepLast: 3}}
        """

    @Test func aBrokenEditKeepsTheLastGoodConfiguration() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("haven.yaml")
        try Self.good.write(to: file, atomically: true, encoding: .utf8)
        let store = ConfigStore(directory: dir.path)
        let before = ConfigStamp.take(dir.path)
        #expect(store.reload().changed)
        #expect(store.snapshot.generation == 1)

        try Self.good.replacingOccurrences(of: "every: 24h", with: "every: soon").write(to: file, atomically: true, encoding: .utf8)
        #expect(ConfigStamp.take(dir.path) != before, "an edit changes the stamp")
        #expect(!store.reload().changed)
        let snap = store.snapshot
        #expect(snap.generation == 1, "the last good configuration stays")
        #expect(snap.desired?.backupPolicies.first?.spec.schedule.every != nil)
        let error = try #require(snap.errors.first)
        #expect(error.contains("haven.yaml:"), "file:line:col: \(error)")
        #expect(error.range(of: #"haven\.yaml:\d+:\d+: error"#, options: .regularExpression) != nil, "\(error)")

        try Self.good.replacingOccurrences(of: "keepLast: 3", with: "keepLast: 4").write(to: file, atomically: true, encoding: .utf8)
        #expect(store.reload().changed)
        #expect(store.snapshot.generation == 2 && store.snapshot.errors.isEmpty)
    }
}

@Suite struct WakeSignalTests {
    @Test func aReasonFiredWhileBusyIsNotLost() async {
        let w = WakeSignal()
        w.fire(.configChanged)
        // Returns at once: a year-long timeout would hang the test if the reason had been lost.
        await w.wait(timeout: .seconds(365 * 86_400))
        #expect(w.take() == [.configChanged])
        #expect(w.take().isEmpty)
    }

    @Test func aFireWakesTheWaiter() async {
        let w = WakeSignal()
        async let waited: Void = w.wait(timeout: .seconds(365 * 86_400))
        // Fire until the waiter is woken; each fire is recorded, so the first one already suffices.
        try? await Task.sleep(for: .milliseconds(50))
        w.fire(.poolEvent("lab"))
        await waited
        #expect(w.take() == [.poolEvent("lab")])
    }
}

@Suite struct StatusRenderingTests {
    static let now = Date(timeIntervalSince1970: 1_700_000_000)

    static func report() -> StatusReport {
        let rows = [
            StatusReport.Row(pool: "lab", vm: "web <1>", vmUUID: "u1", policy: "daily", suspended: false, lastAttempt: nil, lastBackup: now,
                             lastBackupID: "b1", nextDue: now.addingTimeInterval(86_400), rpoMet: true, versions: 1),
            StatusReport.Row(pool: "lab", vm: "db", vmUUID: "u2", policy: "daily", suspended: false,
                             lastAttempt: .init(at: now, result: "failed", message: "SR_FULL", run: 3, backupID: nil), lastBackup: nil,
                             lastBackupID: nil, nextDue: now, rpoMet: false, versions: 0),
            StatusReport.Row(pool: "lab", vm: "mail", vmUUID: "u3", policy: "weekly", suspended: true, suspendedBy: "command", lastAttempt: nil,
                             lastBackup: nil, lastBackupID: nil, nextDue: nil, rpoMet: false, versions: 0),
        ]
        let replica = ReplicaStatus(policy: "offsite", vm: "web <1>", sourcePool: "lab", targetPool: "dr", replica: "web-replica", replicaUUID: "r1",
                                    lastSync: now.addingTimeInterval(-7_200), lagSeconds: 3_600, restorePoints: 2, powerState: "Halted", state: "ok")
        return StatusReport(time: now, rpoMissed: true, unreachablePools: [], vms: rows, replicas: [replica])
    }

    static func model() -> StatusPage.Model {
        let config = DaemonInfo.Config(directory: "/etc/haven", loaded: true, generation: 2, loadedAt: now, errors: ["haven.yaml:3:7: error: bad"],
                                       errorAt: now)
        let info = DaemonInfo(role: .active, config: config, suspensions: [Suspension(policy: "weekly", at: now, by: "ops@host")],
                              queue: .init(depth: 0, processing: [], waiting: 3, nextWake: nil), lastReconcile: nil, running: [], unreachablePools: [:])
        let backups = (0..<3).map { (i: Int) -> BackupRecord in
            let stored: Int64 = i == 0 ? 8 << 20 : 1 << 20
            return BackupRecord(id: "b\(i)", repository: "local", pool: "lab", policy: "daily", vmUUID: "u1", vmName: "web",
                                createdAt: now.addingTimeInterval(Double(i) * 86_400), kind: i == 0 ? "full" : "incremental", size: 8 << 20,
                                storedBytes: stored)
        }
        let timings = (0..<3).map { (i: Int) -> RunActionRecord in
            let start = now.addingTimeInterval(Double(i) * 86_400)
            let end = start.addingTimeInterval(Double(10 * (i + 1)))
            return RunActionRecord(runID: Int64(i), actionKey: "backup/lab/u1@daily", kind: "backup", pool: "lab", vm: "web", vmUUID: "u1",
                                   policy: "daily", result: "succeeded", message: "", startedAt: start, at: end)
        }
        return StatusPage.Model(report: report(), info: info, backups: backups, timings: timings, now: now)
    }

    @Test func thePageShowsEveryVMWithItsRPOInWordsAndColour() {
        let html = StatusPage.html(Self.model())
        #expect(html.contains("web &lt;1&gt;"), "names are escaped")
        #expect(html.contains("class=\"rpo met\">met<"))
        #expect(html.contains("class=\"rpo missed\">MISSED<"))
        #expect(html.contains("class=\"rpo suspended\">suspended (haven suspend)<"))
        #expect(html.contains("failed: SR_FULL"))
        #expect(html.contains("haven.yaml:3:7: error: bad"))
        #expect(html.contains("LAGGING 60 min") && html.contains("web-replica"), "replicas with their lag")
        #expect(html.contains("<svg id=\"sizes\"") && html.contains("<svg id=\"durations\""), "two charts")
        #expect(html.components(separatedBy: "<rect ").count - 1 == 6, "two bars per backup")
        #expect(html.contains("30.0 s"), "the longest duration is named")
        #expect(!html.contains("<script"))
    }

    @Test func theStatusJSONHasTheStatusCommandsFields() throws {
        let obj = try JSONSerialization.jsonObject(with: Data(try Self.report().json().utf8)) as? [String: Any]
        #expect(Set(obj?.keys.map { $0 } ?? []) == ["formatVersion", "time", "rpoMissed", "unreachablePools", "vms", "replicas"])
        #expect(obj?["formatVersion"] as? Int == 2)
        let vms = try #require(obj?["vms"] as? [[String: Any]])
        #expect(Set(vms[0].keys).isSuperset(of: ["pool", "vm", "vmUUID", "policy", "suspended", "lastBackup", "nextDue", "rpoMet", "versions"]))
        #expect(vms[2]["suspendedBy"] as? String == "command")
    }

    @Test func metricsCarryThePerVMSeriesAndDropStaleOnes() {
        let m = DaemonMetrics()
        var r = Self.report()
        m.status(r)
        m.backup(pool: "lab", vm: "web <1>", policy: "daily", seconds: 12, bytesRead: 100, bytesStored: 40)
        m.reconciled("succeeded", requeueAfter: true)
        m.queue(depth: 2, longestRunning: 3, unfinished: 4)
        var text = m.render()
        #expect(text.contains("haven_last_success_timestamp_seconds{pool=\"lab\",vm=\"web <1>\",policy=\"daily\"} 1700000000"))
        #expect(text.contains("haven_rpo_met{pool=\"lab\",vm=\"db\",policy=\"daily\"} 0"))
        #expect(text.contains("haven_backup_duration_seconds_bucket{pool=\"lab\",vm=\"web <1>\",policy=\"daily\",le=\"15.0\"} 1"))
        #expect(text.contains("haven_bytes_stored_total{pool=\"lab\",vm=\"web <1>\",policy=\"daily\"} 40"))
        #expect(text.contains("haven_replica_lag_seconds{pool=\"lab\",vm=\"web <1>\",policy=\"offsite\",target=\"dr\"} 3600"))
        #expect(text.contains("haven_reconcile_total{result=\"succeeded\"} 1"))
        #expect(text.contains("controller_runtime_reconcile_total{controller=\"haven\",result=\"requeue_after\"} 1"))
        #expect(text.contains("workqueue_depth{name=\"haven\"} 2"))
        #expect(text.contains("workqueue_unfinished_work_seconds{name=\"haven\"} 4"))
        #expect(text.contains("workqueue_longest_running_processor_seconds{name=\"haven\"} 3"))

        // web leaves the policy and the replica goes: their series go with them.
        r.vms.removeFirst()
        r.replicas = []
        m.status(r)
        text = m.render()
        #expect(!text.contains("vm=\"web <1>\""), "stale series removed: \(text)")
        #expect(text.contains("haven_rpo_met{pool=\"lab\",vm=\"db\",policy=\"daily\"} 0"))
    }
}

import Foundation
import HavenCore
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
    static func report() -> StatusDocument {
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        let rows = [
            StatusReport.Row(pool: "lab", vm: "web <1>", vmUUID: "u1", policy: "daily", suspended: false, lastAttempt: nil, lastBackup: now,
                             lastBackupID: "b1", nextDue: now.addingTimeInterval(86_400), rpoMet: true, versions: 1),
            StatusReport.Row(pool: "lab", vm: "db", vmUUID: "u2", policy: "daily", suspended: false,
                             lastAttempt: .init(at: now, result: "failed", message: "SR_FULL", run: 3, backupID: nil), lastBackup: nil,
                             lastBackupID: nil, nextDue: now, rpoMet: false, versions: 0),
        ]
        let config = StatusDocument.Config(directory: "/etc/haven", loaded: true, generation: 2, loadedAt: now,
                                           errors: ["haven.yaml:3:7: error: bad"], errorAt: now)
        var doc = StatusDocument(time: now, rpoMissed: true, unreachablePools: [], vms: rows,
                                 daemon: .init(role: .active, reconciling: false, config: config, lastReconcile: nil, running: [], unreachablePools: [:]))
        doc.backups = [BackupRecord(id: "b1", repository: "local", pool: "lab", policy: "daily", vmUUID: "u1", vmName: "web", createdAt: now,
                                    kind: "full", size: 8 << 20, storedBytes: 2 << 20)]
        return doc
    }

    @Test func thePageShowsEveryVMWithItsRPOInWordsAndColour() {
        let html = StatusPage.html(Self.report())
        #expect(html.contains("web &lt;1&gt;"), "names are escaped")
        #expect(html.contains("class=\"rpo met\">met<"))
        #expect(html.contains("class=\"rpo missed\">MISSED<"))
        #expect(html.contains("failed: SR_FULL"))
        #expect(html.contains("haven.yaml:3:7: error: bad"))
        #expect(html.contains("<svg"))
        #expect(!html.contains("<script"))
    }

    @Test func theStatusJSONKeepsTheStatusCommandsFields() throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        let obj = try JSONSerialization.jsonObject(with: try encoder.encode(Self.report())) as? [String: Any]
        #expect(obj?["formatVersion"] as? Int == 2)
        let vms = try #require(obj?["vms"] as? [[String: Any]])
        #expect(Set(vms[0].keys).isSuperset(of: ["pool", "vm", "vmUUID", "policy", "suspended", "lastBackup", "nextDue", "rpoMet", "versions"]))
        #expect(((obj?["daemon"] as? [String: Any])?["config"] as? [String: Any])?["generation"] as? Int == 2)
    }

    @Test func metricsCarryThePerVMSeries() {
        let m = DaemonMetrics()
        let doc = Self.report()
        m.status(StatusReport(time: doc.time, rpoMissed: true, unreachablePools: [], vms: doc.vms))
        m.backup(pool: "lab", vm: "web", policy: "daily", seconds: 12, bytesRead: 100, bytesStored: 40)
        m.reconciled("succeeded")
        let text = m.render()
        #expect(text.contains("haven_last_success_timestamp_seconds{pool=\"lab\",vm=\"web <1>\",policy=\"daily\"} 1700000000"))
        #expect(text.contains("haven_rpo_met{pool=\"lab\",vm=\"db\",policy=\"daily\"} 0"))
        #expect(text.contains("haven_backup_duration_seconds_bucket{pool=\"lab\",vm=\"web\",policy=\"daily\",le=\"15.0\"} 1"))
        #expect(text.contains("haven_bytes_stored_total{pool=\"lab\",vm=\"web\",policy=\"daily\"} 40"))
        #expect(text.contains("haven_reconcile_total{result=\"succeeded\"} 1"))
        #expect(text.contains("haven_workqueue_depth"))
    }
}

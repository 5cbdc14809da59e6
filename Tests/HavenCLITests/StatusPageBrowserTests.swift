import Foundation
import Testing

/// The status page in a real headless browser (Debian's chromium): the daemon runs against
/// `haven sim`; chromium dumps the DOM and takes a screenshot of `/`. Every protected VM is on
/// the page with its RPO state in words; the charts are there; the screenshot is a real image.
/// Skipped, saying so, only when chromium is missing and `scripts/ensure-deps` cannot install it.
@Suite(.serialized) struct StatusPageBrowserTests {
    static var chromium: String? {
        for dir in ["/usr/bin", "/usr/local/bin", "/snap/bin"] where FileManager.default.isExecutableFile(atPath: dir + "/chromium") {
            return dir + "/chromium"
        }
        return nil
    }

    /// chromium, installed by the test prerequisites when missing.
    static func ensureChromium() throws -> Bool {
        if chromium != nil { return true }
        let script = HavenBinary.packageRoot.appendingPathComponent("scripts/ensure-deps").path
        let r = try runTool("bash", [script])
        if chromium == nil { print("StatusPageBrowserTests: chromium is missing and scripts/ensure-deps could not install it:\n\(r.output)") }
        return chromium != nil
    }

    @Test(.enabled("chromium is not installed and scripts/ensure-deps could not install it (apt-get install chromium)") {
        try StatusPageBrowserTests.ensureChromium()
    })
    func thePageShowsEveryVMsRPOInHeadlessChromium() async throws {
        let chromium = try #require(Self.chromium)
        let vms = """
                  - name: web
                    power: Running
                    disks: [{name: web-root, size: 4Mi, fill: {seed: 1}}]
                  - name: db
                    power: Running
                    disks: [{name: db-root, size: 4Mi, fill: {seed: 2}}]
                  - name: mail
                    power: Running
                    disks: [{name: mail-root, size: 4Mi, sr: Full, fill: {seed: 3}}]
                  - name: wiki
                    power: Running
                    disks: [{name: wiki-root, size: 4Mi, fill: {seed: 4}}]
            """
        let policies = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [web, db, mail]}, schedule: {every: 24h}, cbt: true, repository: local, retention: {keepLast: 7}}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: paused}
            spec: {pool: lab, vms: {names: [wiki]}, schedule: {every: 24h}, repository: local, retention: {keepLast: 7}, suspend: true}
            """
        let s = try Scenario(vms: vms, policy: policies,
                             srs: "[{name: Local storage, type: ext, size: 64Gi}, {name: Full, type: ext, size: 64Gi}]")
        // mail's SR is full: its backups fail and its RPO is missed.
        #expect(try s.simControl(["fault", "--rule", "sr-full:Full"]).status == 0)
        let d = try DaemonProcess(s)
        defer { d.kill() }
        let port = try await d.port()
        try await until("web and db are backed up", 90) { try s.backups().count >= 2 }
        try await until("mail's failure is recorded", 60) {
            let rows = try await d.status(port)["vms"] as? [[String: Any]] ?? []
            return rows.contains { $0["vm"] as? String == "mail" && ($0["lastAttempt"] as? [String: Any])?["result"] as? String == "failed" }
        }

        let url = "http://127.0.0.1:\(port)/"
        let profile = s.dir.appendingPathComponent("chromium-profile").path
        let flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--user-data-dir=\(profile)"]
        // `timeout` bounds the browser, not the test: a hung chromium fails the step instead of the suite.
        let dom = try runTool("timeout", ["120", chromium] + flags + ["--dump-dom", url])
        #expect(dom.status == 0, "chromium --dump-dom: \(dom.output.suffix(2000))")
        let expected = ["web": ("met", "met"), "db": ("met", "met"), "mail": ("missed", "MISSED"), "wiki": ("suspended", "suspended")]
        for (vm, (cls, word)) in expected {
            let row = dom.output.components(separatedBy: "<tr>").first { $0.contains("<td class=\"vm\">\(vm)</td>") }
            #expect(row != nil, "\(vm) is on the page")
            #expect(row?.contains("class=\"rpo \(cls)\">\(word)") == true, "\(vm): RPO \(word): \(row ?? "")")
        }
        #expect(dom.output.contains("SR_FULL"), "mail's last error is shown")
        #expect(dom.output.contains("RPO MISSED"), "the overall state says an RPO is missed")
        #expect(dom.output.contains("<svg id=\"sizes\"") && dom.output.contains("<svg id=\"durations\""), "the charts are server-rendered SVG")
        #expect(dom.output.components(separatedBy: "<rect ").count - 1 >= 4, "a bar pair per backup")
        #expect(!dom.output.contains("<script"))

        let shot = s.dir.appendingPathComponent("status.png")
        let png = try runTool("timeout", ["120", chromium] + flags + ["--screenshot=\(shot.path)", "--window-size=1280,900", url])
        #expect(png.status == 0, "chromium --screenshot: \(png.output.suffix(2000))")
        let data = try Data(contentsOf: shot)
        // HAVEN_TEST_SCREENSHOT=PATH keeps a copy for a person to look at.
        if let keep = ProcessInfo.processInfo.environment["HAVEN_TEST_SCREENSHOT"] { try? data.write(to: URL(fileURLWithPath: keep)) }
        #expect(data.count > 20_000, "a real page, not a blank image: \(data.count) bytes")
        #expect(data.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]), "a PNG")
        // IHDR: width and height, big-endian, at bytes 16 and 20.
        let bytes = [UInt8](data.prefix(24))
        let width = bytes[16..<20].reduce(0) { $0 << 8 | Int($1) }
        let height = bytes[20..<24].reduce(0) { $0 << 8 | Int($1) }
        #expect(width == 1280 && height == 900, "\(width)×\(height)")
        d.signal(SIGTERM)
        #expect(try await d.exitStatus(within: 30) == 0)
    }
}

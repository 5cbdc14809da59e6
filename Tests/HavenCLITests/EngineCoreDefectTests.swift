import Foundation
import Testing
import XenAPI

/// The engine-core defects, each reproduced through the binary against `haven sim`.
@Suite struct EngineCoreDefectTests {
    static let twoVMs = """
              - name: web
                power: Running
                disks: [{name: web-root, size: 4Mi, fill: {seed: 1}}]
              - name: db
                disks: [{name: db-root, size: 4Mi, fill: {seed: 3}}]
        """

    static func policy(names: String = "[web, db]", cbt: Bool = true, repository: String = "local") -> String {
        """
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: daily}
        spec:
          pool: lab
          vms: {names: \(names)}
          schedule: {every: 24h}
          cbt: \(cbt)
          repository: \(repository)
        """
    }

    func rewritePolicy(_ s: Scenario, _ policy: String) throws {
        let file = s.config + "/haven.yaml"
        var text = try String(contentsOfFile: file, encoding: .utf8)
        text = String(text[..<text.range(of: "apiVersion: haven/v1\nkind: BackupPolicy")!.lowerBound]) + policy + "\n"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
    }

    /// Defect 1: a saved plan is refused once the configuration changed.
    @Test func aSavedPlanIsRefusedAfterAConfigurationChange() async throws {
        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy())
        let planFile = s.dir.appendingPathComponent("p.json").path
        #expect(try s.haven(["diff", "-f", s.config, "--out", planFile]).status == 1)
        try rewritePolicy(s, Self.policy(names: "[web]"))
        let run = try s.haven(["apply", "-f", s.config, "--auto-approve", planFile])
        #expect(run.status == 2, "\(run.stdout)\(run.stderr)")
        #expect(run.stderr.contains("stale"))
        let manifests = (try? FileManager.default.contentsOfDirectory(atPath: s.repository + "/manifests")) ?? []
        #expect(manifests.isEmpty, "nothing was applied from the stale plan")
        // A plan edited by hand (another repository path) is refused too: the file is not trusted.
        #expect(try s.haven(["diff", "-f", s.config, "--out", planFile]).status == 1)
        let edited = s.dir.appendingPathComponent("edited.json").path
        let original = try String(contentsOfFile: planFile, encoding: .utf8)
        let escaped = s.repository.replacingOccurrences(of: "/", with: "\\/")
        let changed = original.replacingOccurrences(of: escaped, with: escaped + "-elsewhere").replacingOccurrences(of: s.repository, with: s.repository + "-elsewhere")
        #expect(changed != original)
        try changed.write(toFile: edited, atomically: true, encoding: .utf8)
        let tampered = try s.haven(["apply", "-f", s.config, "--auto-approve", edited])
        #expect(tampered.status == 2, "\(tampered.stdout)\(tampered.stderr)")
        #expect(tampered.stderr.contains("does not match"))
        #expect(!FileManager.default.fileExists(atPath: s.repository + "-elsewhere"))
        // An unchanged configuration applies its saved plan.
        let ok = try s.haven(["apply", "-f", s.config, "--auto-approve", planFile])
        #expect(ok.status == 0, "\(ok.stdout)\(ok.stderr)")
        #expect(try s.backups().map { ($0["vm"] as? [String: Any])?["name"] as? String } == ["web"])
    }

    /// Defect 2: CBT off and on again never breaks backups for good.
    @Test func cbtOffAndOnAgainKeepsBackupsWorking() async throws {
        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy())
        #expect(try s.apply().status == 0)
        let c = s.client()
        func havenVDIs() async throws -> [VDIRecord] {
            try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }
        }
        #expect(try await havenVDIs().count == 2, "two anchors after the first backup")

        // cbt: false — the anchors are planned away and CBT switched off; diff shows it.
        try rewritePolicy(s, Self.policy(cbt: false))
        let off = try s.diff()
        #expect(off.status == 1, "not 'No changes' while haven's anchors are on the pool: \(off.stdout)")
        #expect(off.stdout.contains("retire CBT anchor"))
        #expect(off.stdout.contains("disable CBT on"))
        #expect(try s.apply().status == 0)
        #expect(try await havenVDIs().isEmpty, "no anchor left behind")
        #expect(try s.diff().status == 0)

        // cbt: true again, a day later: a full backup, saying why.
        try rewritePolicy(s, Self.policy(cbt: true))
        s.now = s.now.addingTimeInterval(25 * 3_600)
        let on = try s.planActions().filter { $0["kind"] as? String == "backup" }
        #expect(on.count == 2)
        #expect(on.allSatisfy { ($0["reason"] as? String)?.contains("full, because CBT was re-enabled") == true }, "\(on.map { $0["reason"] ?? "" })")
        var run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")

        // And the next due run is an incremental that works.
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "9"]).status == 0)
        s.now = s.now.addingTimeInterval(25 * 3_600)
        let next = try s.planActions().filter { $0["kind"] as? String == "backup" }
        #expect(next.allSatisfy { $0["method"] as? String == "cbt-incremental" })
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try s.diff().status == 0)
        let web = try #require(try s.backups().last { ($0["vm"] as? [String: Any])?["name"] as? String == "web" })
        #expect(web["kind"] as? String == "incremental")
        let (ref, _) = try await c.vmNamed("web")
        let uuid = try await c.record(try await c.diskVDIs(ref)[0]).uuid
        let out = s.dir.appendingPathComponent("web.raw").path
        #expect(try s.haven(["restore", "-f", s.config, "--backup", web["id"] as! String, "--disk", "0", "--to-file", out]).status == 0)
        #expect(try s.sha(out) == s.sha(s.diskFile(uuid)))
    }

    /// Defect 2, second half: a broken chain found at run time reads the disk in full, in the same run.
    @Test func aBrokenChainFallsBackToAFullReadInTheSameRun() async throws {
        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy(names: "[web]"))
        #expect(try s.apply().status == 0)
        try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "4"])
        s.now = s.now.addingTimeInterval(25 * 3_600)
        #expect(try s.simControl(["fault", "--rule", "error:VDI.list_changed_blocks:SR_BACKEND_FAILURE_460:,Source and target VDI are unrelated,@count=1"]).status == 0)
        let run = try s.haven(["apply", "-f", s.config, "--auto-approve"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("read in full, because the CBT chain is broken (SR_BACKEND_FAILURE_460)"))
        let web = try #require(try s.backups().last)
        #expect(web["kind"] as? String == "full")
        #expect(try s.diff().status == 0, "nothing left pending")
        let c = s.client()
        let (ref, _) = try await c.vmNamed("web")
        let uuid = try await c.record(try await c.diskVDIs(ref)[0]).uuid
        let out = s.dir.appendingPathComponent("web.raw").path
        #expect(try s.haven(["restore", "-f", s.config, "--backup", web["id"] as! String, "--disk", "0", "--to-file", out]).status == 0)
        #expect(try s.sha(out) == s.sha(s.diskFile(uuid)))
    }

    /// Defect 4: nothing leaves with 1 ("changes pending") by accident (logouts are counted in HavenEngineTests).
    @Test func everyErrorExitsTwo() throws {
        let bad = FileManager.default.temporaryDirectory.appendingPathComponent("haven-badworld-\(UUID().uuidString).yaml")
        try "pools: [[[".write(to: bad, atomically: true, encoding: .utf8)
        let sim = try HavenBinary.run(["sim", "--world", bad.path, "--state", bad.path + ".state"])
        #expect(sim.status == 2, "\(sim.stderr)")
        #expect(sim.stderr.hasPrefix("haven: "))

        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy())
        #expect(try s.apply().status == 0)
        // A damaged manifest: a clear error and 2, not a DecodingError leaking out with 1.
        let manifests = URL(fileURLWithPath: s.repository).appendingPathComponent("manifests")
        let first = try #require(try FileManager.default.contentsOfDirectory(atPath: manifests.path).first { $0.hasSuffix(".json") })
        try "{\"id\": 3".write(to: manifests.appendingPathComponent(first), atomically: true, encoding: .utf8)
        let restore = try s.haven(["restore", "-f", s.config, "--backup", String(first.dropLast(5)), "--disk", "0", "--to-file", s.dir.path + "/x.raw"])
        #expect(restore.status == 2, "\(restore.stdout)\(restore.stderr)")
        // (That every session is logged out on every path is checked in HavenEngineTests, which can count them.)
    }

    /// Defects 6 and 7: selectors that match nothing are warnings; an AppliancePool whose template the pool lacks is a plan error.
    @Test func silentConfigurationsSpeakUp() throws {
        let appliances = """

            ---
            apiVersion: haven/v1
            kind: AppliancePool
            metadata: {name: abd}
            spec:
              pool: lab
              template: haven-abd
              sr: Local storage
              network: net0
              addresses: [127.0.77.10-127.0.77.12]
              netmask: 255.255.255.0
            """
        let s = try Scenario(vms: Self.twoVMs, policy: Self.policy(names: "[web, db, buld]") + appliances)
        let run = try s.diff()
        #expect(run.stdout.contains("! BackupPolicy daily: no VM named 'buld' in pool lab"), "\(run.stdout)")
        #expect(run.stdout.contains("haven.yaml:"), "the warning says where the name was written")
        #expect(run.stdout.contains("✘ error: AppliancePool abd: pool lab has no template named 'haven-abd' (spec.template)"), "\(run.stdout)")
        let json = try JSONSerialization.jsonObject(with: Data(try s.diff(json: true).stdout.utf8)) as? [String: Any]
        let warnings = json?["warnings"] as? [[String: Any]] ?? []
        #expect(warnings.contains { $0["code"] as? String == "selector-matches-nothing" })
        #expect(warnings.contains { $0["code"] as? String == "no-appliance-template" })
    }
}

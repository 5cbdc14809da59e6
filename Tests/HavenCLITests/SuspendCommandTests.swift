import Foundation
import Testing

/// `haven suspend` / `haven resume` without a daemon: the catalog's overlay is honoured by `diff`,
/// `apply`, `backup now` and `status`, and `resume` says when the YAML still suspends the policy.
@Suite struct SuspendCommandTests {
    @Test func suspensionsAreAnOverlayEveryCommandHonours() throws {
        let s = try Scenario(vms: DaemonTests.vms, policy: DaemonTests.policy())
        func plansABackup() throws -> Bool { try s.planActions().contains { $0["kind"] as? String == "backup" } }
        #expect(try plansABackup())

        let suspend = try s.haven(["suspend", "daily", "-f", s.config])
        #expect(suspend.status == 0 && suspend.stdout.contains("suspended daily"), "\(suspend.stdout)\(suspend.stderr)")
        #expect(try s.haven(["suspend", "daily", "-f", s.config]).stdout.contains("already suspended"))
        #expect(try !plansABackup(), "diff plans nothing for a suspended policy")
        let now = try s.haven(["backup", "now", "daily", "-f", s.config])
        #expect(now.status == 2 && now.stderr.contains("haven resume daily"), "\(now.stderr)")
        let status = try JSONSerialization.jsonObject(with: Data(try s.haven(["status", "-f", s.config, "--output", "json"]).stdout.utf8)) as? [String: Any]
        let row = try #require((status?["vms"] as? [[String: Any]])?.first)
        #expect(row["suspended"] as? Bool == true && row["suspendedBy"] as? String == "command" && row["nextDue"] == nil)
        #expect(try s.haven(["status", "-f", s.config, "--check"]).status == 0, "a suspended policy's RPO is not counted")
        #expect(try s.apply().status == 0)
        #expect(try s.backups().isEmpty, "apply backed nothing up")

        let resume = try s.haven(["resume", "daily", "-f", s.config])
        #expect(resume.status == 0 && resume.stdout.contains("resumed daily"))
        #expect(try plansABackup())
        #expect(try s.haven(["resume", "daily", "-f", s.config]).stdout.contains("was not suspended"))

        // Suspended in its YAML: resume says so, and the policy stays suspended.
        try s.configText(policy: DaemonTests.policy(suspend: true)).write(toFile: s.config + "/haven.yaml", atomically: true, encoding: .utf8)
        let yaml = try s.haven(["resume", "daily", "-f", s.config])
        #expect(yaml.status == 0 && yaml.stderr.contains("stays suspended: its YAML says `suspend: true`"), "\(yaml.stderr)")
        let unknown = try s.haven(["suspend", "weekly", "-f", s.config])
        #expect(unknown.status == 2 && unknown.stderr.contains("no BackupPolicy or ReplicationPolicy 'weekly'"), "\(unknown.stderr)")
    }
}

import Foundation
import Testing
import XenAPI

/// Issue 13, defect 5: a clean-up failure after the commit is no failed backup, and never leaks.
@Suite struct CleanupAfterCommitTests {
    @Test func aFailedPurgeLeavesAGoodBackupAndIsRetriedUntilDone() async throws {
        let vms = """
                  - name: web
                    power: Running
                    disks: [{name: web-root, size: 4Mi, fill: {seed: 8}}]
            """
        let policy = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [web]}, schedule: {every: 24h}, repository: local}
            """
        let s = try Scenario(vms: vms, policy: policy)
        let c = s.client()
        #expect(try s.simControl(["fault", "--rule", "error:VDI.data_destroy:VDI_IN_USE@count=50"]).status == 0)
        var run = try s.apply()
        #expect(run.status == 0, "the version is committed: the backup is good: \(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("clean-up after the backup did not finish"), "\(run.stdout)")
        let id = try #require(try s.backups().first?["id"] as? String)
        #expect(try s.haven(["repo", "verify", "-f", s.config]).status == 0)
        // Pending clean-up is shown by diff, not hidden behind "No changes".
        let diff = try s.diff()
        #expect(diff.status == 1, "\(diff.stdout)")
        #expect(diff.stdout.contains("destroy the data of snapshot disk"), "\(diff.stdout)")
        #expect(try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }.count == 1, "nothing piles up")
        // Once the pool lets it, the next run finishes it.
        #expect(try s.simControl(["fault", "--clear"]).status == 0)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let mine = try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }
        #expect(mine.count == 1)
        #expect(mine.allSatisfy { $0.type == "cbt_metadata" }, "only CBT metadata is left")
        #expect(try s.diff().status == 0)
        // And the next day's backup is an incremental from that anchor.
        try s.simControl(["write", "--vm", "web", "--percent", "4", "--seed", "2"])
        s.now = s.now.addingTimeInterval(25 * 3_600)
        #expect(try s.planActions().first { $0["kind"] as? String == "backup" }?["method"] as? String == "cbt-incremental")
        #expect(try s.apply().status == 0)
        #expect(try s.backups().count == 2)
        _ = id
    }
}

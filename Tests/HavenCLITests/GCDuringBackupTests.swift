import Foundation
import Testing
import XenAPI

/// Issue 13, defect 1: `repo gc` during a backup never yields a "good" version that cannot be restored.
@Suite struct GCDuringBackupTests {
    @Test func gcInTheGapBeforeTheCommitWaitsForIt() async throws {
        let vms = """
                  - name: web
                    power: Running
                    disks: [{name: web-root, size: 8Mi, fill: {seed: 11}}]
            """
        let policy = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [web]}, schedule: {every: 24h}, cbt: false, repository: local}
            """
        let s = try Scenario(vms: vms, policy: policy)
        #expect(try s.apply().status == 0)
        let v1 = try #require(try s.backups().first?["id"] as? String)
        // The only version is forgotten: its chunks are garbage, but the next full read deduplicates against them.
        #expect(try s.haven(["backups", "forget", "--repo", s.repository, "--state", s.dir.path + "/state", "--yes", v1]).status == 0)
        s.now = s.now.addingTimeInterval(25 * 3_600)
        // Widen the gap between the disk transfer and the manifest's commit.
        #expect(try s.simControl(["fault", "--rule", "latency:network.get_all_records:6s@count=1"]).status == 0)

        let events = s.dir.appendingPathComponent("events.jsonl")
        let apply = try s.startApply(events: events)
        // Wait until the disk has been read (its last progress event), i.e. the backup is in the gap.
        let transferred = s.waitForEvent(events) { o in
            o["event"] as? String == "progress" && (o["bytes"] as? Int) == (o["total"] as? Int) && (o["total"] as? Int ?? 0) > 0
        }
        #expect(transferred)
        let gc = try s.haven(["repo", "gc", "--repo", s.repository, "--safety-window", "0s", "--lock-timeout", "60"])
        apply.waitUntilExit()
        #expect(apply.terminationStatus == 0)
        #expect(gc.status == 0, "\(gc.stdout)\(gc.stderr)")
        // The new version is good for real: verify is clean and it restores the disk bit for bit.
        let verify = try s.haven(["repo", "verify", "--repo", s.repository])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let v2 = try #require(try s.backups().last?["id"] as? String)
        #expect(v2 != v1)
        let c = s.client()
        let (ref, _) = try await c.vmNamed("web")
        let uuid = try await c.record(try await c.diskVDIs(ref)[0]).uuid
        let out = s.dir.appendingPathComponent("web.raw").path
        #expect(try s.haven(["restore", "-f", s.config, "--backup", v2, "--disk", "0", "--to-file", out]).status == 0)
        #expect(try s.sha(out) == s.sha(s.diskFile(uuid)))
    }
}

import Foundation
import Testing
import XenAPI

/// Issue 13, defect 4: haven killed inside `VM.snapshot` leaves a snapshot the next run finds by
/// its recorded intent and removes; a snapshot only named like haven's is reported, never deleted.
@Suite struct SnapshotIntentTests {
    @Test func aSnapshotMadeForADeadRunIsFoundAndRemoved() async throws {
        let vms = """
                  - name: web
                    power: Running
                    disks: [{name: web-root, size: 4Mi, fill: {seed: 5}}]
            """
        let policy = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [web]}, schedule: {every: 24h}, repository: local}
            """
        let s = try Scenario(vms: vms, policy: policy)
        let c = s.client()
        let (web, _) = try await c.vmNamed("web")
        // Someone's own snapshot named like haven's: never to be touched.
        let lookalike = try await c.snapshot(web, name: "haven daily web by hand")
        let lookalikeUUID = try await c.record(lookalike).uuid

        // The pool takes 3 s to snapshot; haven dies (SIGKILL) while it waits.
        #expect(try s.simControl(["fault", "--rule", "latency:VM.snapshot:3s@count=1"]).status == 0)
        let events = s.dir.appendingPathComponent("events.jsonl")
        let apply = try s.startApply(events: events)
        let started = s.waitForEvent(events) { $0["event"] as? String == "started" && $0["action"] as? String == "backup" }
        #expect(started)
        usleep(1_000_000)
        kill(apply.processIdentifier, SIGKILL)
        apply.waitUntilExit()
        // The pool finishes the call it was given: an unmarked snapshot appears.
        var orphan: VMRecord?
        for _ in 0..<100 where orphan == nil {
            orphan = try await c.records(VMRecord.self).values.first { $0.isASnapshot && $0.nameLabel.hasPrefix("haven daily web 20") }
            if orphan == nil { usleep(100_000) }
        }
        let left = try #require(orphan)
        #expect(left.otherConfig["haven.owner"] == nil, "the snapshot was made after haven died: unmarked")

        // The next plan finds it by the intent and removes it; the look-alike is reported only.
        let diff = try s.diff()
        #expect(diff.stdout.contains("left by a run that stopped during VM.snapshot"), "\(diff.stdout)")
        #expect(diff.stdout.contains("'haven daily web by hand'") && diff.stdout.contains("nothing proves it is this haven's"), "\(diff.stdout)")
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let snapshots = try await c.records(VMRecord.self).values.filter(\.isASnapshot)
        #expect(!snapshots.contains { $0.uuid == left.uuid }, "the orphan is gone")
        #expect(snapshots.contains { $0.uuid == lookalikeUUID }, "the user's look-alike is untouched")
        #expect(try s.backups().count == 1, "and the backup itself was taken")
    }
}

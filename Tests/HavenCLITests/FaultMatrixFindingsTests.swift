import Foundation
import Testing
import XenAPI

/// What the fault matrix of `make reliability` found, replayed with the same fault rule.
@Suite struct FaultMatrixFindingsTests {
    /// A restore to a pool whose SR is full (or whose VDI.create fails) used to print only
    /// `haven: SR_FULL [3145728, 68719476736]` and leave the VM it had created, without disks.
    /// It now says what it was doing and removes what it made.
    @Test func aFailedRestoreSaysWhatItWasDoingAndLeavesNothingBehind() async throws {
        let vms = """
                  - name: web
                    power: Running
                    disks: [{name: web-root, size: 2Mi, fill: {seed: 61}}, {name: web-data, size: 1Mi, fill: {seed: 62}}]
            """
        let s = try Scenario(vms: vms, policy: """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [web]}, repository: local}
            """)
        #expect(try s.apply().status == 0)
        let id = try #require(try s.backups().first?["id"] as? String)
        let c = s.client()
        let before = Set(try await c.records(VMRecord.self).values.map(\.uuid))
        let vdisBefore = Set(try await c.records(VDIRecord.self).values.map(\.uuid))
        for (rule, step) in [("sr-full:Local storage", "creating disk 0"), ("error:VBD.create:INTERNAL_ERROR@count=1", "attaching disk 0")] {
            #expect(try s.simControl(["fault", "--rule", rule]).status == 0)
            let r = try s.haven(["restore", "-f", s.config, "--backup", id, "--to-pool", "lab", "--sr", "Local storage", "--name", "copy"])
            #expect(try s.simControl(["fault", "--clear"]).status == 0)
            #expect(r.status == 2)
            let text = r.stdout + r.stderr
            #expect(text.contains("restoring web from \(id) failed while \(step)"), "\(rule): \(text)")
            #expect(text.contains("what it had created on the pool was removed"), "\(rule): \(text)")
            #expect(Set(try await c.records(VMRecord.self).values.map(\.uuid)) == before, "\(rule): no VM left behind")
            #expect(Set(try await c.records(VDIRecord.self).values.map(\.uuid)) == vdisBefore, "\(rule): no disk left behind")
        }
        // And with the fault gone, the same restore works.
        let ok = try s.haven(["restore", "-f", s.config, "--backup", id, "--to-pool", "lab", "--sr", "Local storage", "--name", "copy"])
        #expect(ok.status == 0, "\(ok.stdout)\(ok.stderr)")
    }
}

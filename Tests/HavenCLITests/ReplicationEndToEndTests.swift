import Foundation
import Testing
import XenAPI

/// ReplicationPolicy (method cbt, push) end to end through the binary: a replica on another SR
/// of the same pool, kept equal to the source snapshot it was taken from.
@Suite struct ReplicationEndToEndTests {
    static let vms = """
              - name: web
                power: Running
                networks: [net0]
                disks: [{name: web-root, size: 6Mi, fill: {seed: 21}}, {name: web-data, size: 4Mi, fill: {seed: 22, unallocated: 0.5}}]
              - name: db
                disks: [{name: db-root, size: 4Mi, fill: {seed: 23}}]
        """
    static let srs = "[{name: Local storage, type: ext, size: 64Gi, default: true}, {name: Replica storage, type: ext, size: 64Gi}]"

    static func policy(keep: Int = 2, extra: String = "") -> String {
        """
        apiVersion: haven/v1
        kind: ReplicationPolicy
        metadata: {name: dr}
        spec:
          source: lab
          vms: {names: [web]}
          target: {pool: lab, sr: Replica storage}
          schedule: {every: 1h}
          keep: \(keep)
        \(extra)
        """
    }

    func replica(_ c: XenAPIClient) async throws -> (VMRef, VMRecord)? {
        try await c.records(VMRecord.self).first { $0.value.isRealVM && $0.value.nameLabel == "replica-web" }.map { ($0.key, $0.value) }
    }

    /// Each replica disk equals the corresponding source disk, byte for byte (the simulator's disk files).
    func expectEqualDisks(_ s: Scenario, _ c: XenAPIClient, _ note: String) async throws {
        let (web, _) = try await c.vmNamed("web")
        let sourceDisks = try await c.diskVDIs(web)
        let (rep, _) = try #require(try await replica(c))
        let replicaDisks = try await c.diskVDIs(rep)
        #expect(sourceDisks.count == replicaDisks.count)
        for (a, b) in zip(sourceDisks, replicaDisks) {
            let ua = try await c.record(a).uuid
            let ub = try await c.record(b).uuid
            #expect(try s.sha(s.diskFile(ua)) == s.sha(s.diskFile(ub)), "\(note): replica disk \(ub) equals source \(ua)")
        }
    }

    @Test func initialSyncIncrementalsRestorePointsAndTheGuard() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy(), srs: Self.srs)
        let c = s.client()
        var run = try s.diff()
        #expect(run.status == 1, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("create replica replica-web on lab"), "\(run.stdout)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let (repRef, rep) = try #require(try await replica(c))
        #expect(rep.otherConfig["haven.role"] == "replica")
        #expect(rep.blockedOperations["start"]?.contains("haven failover") == true)
        #expect(rep.powerState == .halted)
        #expect(!rep.isATemplate)
        try await expectEqualDisks(s, c, "initial sync")
        // The replica's disks live on the target SR.
        let srs = try await c.records(SRRecord.self)
        for vdi in try await c.diskVDIs(repRef) { #expect(srs[try await c.record(vdi).sr]?.nameLabel == "Replica storage") }
        // Starting the replica is blocked with xapi's code.
        do {
            try await c.start(repRef)
            Issue.record("a replica must not start while blocked")
        } catch let e as XenAPIError {
            #expect(e.code == "OPERATION_BLOCKED")
        }
        #expect(try s.diff().status == 0, "in sync right after")
        let status = try s.haven(["status", "-f", s.config])
        #expect(status.stdout.contains("REPLICA OF") && status.stdout.contains("replica-web"), "\(status.stdout)")

        // Three incrementals after guest writes.
        for i in 1...3 {
            #expect(try s.simControl(["write", "--vm", "web", "--percent", "3", "--seed", String(40 + i)]).status == 0)
            s.now = s.now.addingTimeInterval(3_700)
            let actions = try s.planActions().filter { $0["kind"] as? String == "replicate" }
            #expect(actions.count == 1)
            #expect((actions.first?["headline"] as? String)?.contains("sync replica replica-web on lab: changed blocks") == true)
            run = try s.apply()
            #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
            try await expectEqualDisks(s, c, "incremental \(i)")
        }
        let points = try await c.records(VMRecord.self).values.filter { $0.isASnapshot && $0.snapshotOf == repRef }
        #expect(points.count == 2, "keep: 2 restore points")

        // Started and written by hand (an admin unblocks it): the next sync rewrites what was written.
        try await c.unblock(repRef, operation: "start")
        try await c.start(repRef)
        #expect(try s.simControl(["write", "--vm", "replica-web", "--percent", "5", "--seed", "77"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.diff()
        #expect(run.stdout.contains("replica replica-web of web is running"), "\(run.stdout)")
        #expect(!run.stdout.contains("sync replica"), "a running replica is never written")
        try await c.hardShutdown(repRef)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("resync: the replica's disk 0 was written since the last sync"), "\(run.stdout)")
        try await expectEqualDisks(s, c, "after the resync")
    }

    @Test func failoverRevertsToARestorePointAndTheReplicaIsNeverWrittenAgain() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy(keep: 3), srs: Self.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        let (web, _) = try await c.vmNamed("web")
        let firstSync = try await c.diskVDIs(web)
        var firstSums: [String] = []
        for v in firstSync { firstSums.append(try s.sha(s.diskFile(try await c.record(v).uuid))) }
        let afterFirst = s.now
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "10", "--seed", "5"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        #expect(try s.apply().status == 0)
        // Fail over to the first restore point, without starting.
        let at = ISO8601DateFormatter().string(from: afterFirst.addingTimeInterval(60))
        let run = try s.haven(["failover", "-f", s.config, "dr", "web", "--at", at, "--no-start"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let (rep, rec) = try #require(try await replica(c))
        #expect(rec.blockedOperations["start"] == nil, "the start block is lifted")
        for (i, v) in try await c.diskVDIs(rep).enumerated() {
            #expect(try s.sha(s.diskFile(try await c.record(v).uuid)) == firstSums[i], "disk \(i) is back at the first sync")
        }
        try await c.start(rep)
        #expect(try await c.record(rep).powerState == .running)
        // From now on the plan never writes it, and says why.
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "6"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        let diff = try s.diff()
        #expect(diff.stdout.contains("was failed over"), "\(diff.stdout)")
        #expect(!diff.stdout.contains("sync replica"))
        #expect(try s.haven(["failover", "-f", s.config, "dr", "web"]).status == 2, "a second failover is refused")
    }

    @Test func aRemovedPolicyKeepsItsReplicaUntilDeletedByName() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy(), srs: Self.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        let list = try s.haven(["replicas", "list", "-f", s.config])
        #expect(list.status == 0)
        #expect(list.stdout.contains("replica-web"), "\(list.stdout)")
        // The policy is removed: the replica stays, and diff names the command that deletes it.
        let file = s.config + "/haven.yaml"
        var text = try String(contentsOfFile: file, encoding: .utf8)
        text = String(text[..<text.range(of: "apiVersion: haven/v1\nkind: ReplicationPolicy")!.lowerBound])
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let diff = try s.diff()
        #expect(diff.stdout.contains("haven replicas delete dr web"), "\(diff.stdout)")
        #expect(try s.apply().status == 0)
        #expect(try await replica(c) != nil, "a DR copy is never deleted implicitly")
        let del = try s.haven(["replicas", "delete", "-f", s.config, "dr", "web", "--yes"])
        #expect(del.status == 0, "\(del.stdout)\(del.stderr)")
        #expect(try await replica(c) == nil)
        let leftovers = try await c.records(VMRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }
        #expect(leftovers.isEmpty, "no restore point left: \(leftovers.map(\.nameLabel))")
        let vdis = try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }
        #expect(vdis.isEmpty, "no replica disk or replication anchor left: \(vdis.map(\.nameLabel))")
        #expect(try s.diff().status == 0)
    }

    @Test func aSyncKilledMidwayLeavesNothingTheNextRunDoesNotFind() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy(), srs: Self.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "12"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        #expect(try s.simControl(["fault", "--rule", "latency:VDI.get_nbd_info:3s@count=1"]).status == 0)
        let events = s.dir.appendingPathComponent("events.jsonl")
        let apply = try s.startApply(events: events)
        #expect(s.waitForEvent(events) { $0["event"] as? String == "started" && $0["action"] as? String == "replicate" })
        usleep(1_500_000)
        kill(apply.processIdentifier, SIGKILL)
        apply.waitUntilExit()
        usleep(2_000_000)
        let left = try await c.records(VMRecord.self).values.filter { $0.isASnapshot && $0.otherConfig["haven.role"] == "replication-snapshot" }
        #expect(left.count == 1, "the killed sync left its marked source snapshot")
        let diff = try s.diff()
        #expect(diff.stdout.contains("left over from a replication sync that did not finish"), "\(diff.stdout)")
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let after = try await c.records(VMRecord.self).values.filter { $0.isASnapshot && $0.otherConfig["haven.role"] == "replication-snapshot" }
        #expect(after.isEmpty)
        try await expectEqualDisks(s, c, "after the sync that followed the kill")
    }

    @Test func aMissingNetworkMappingIsAPlanError() throws {
        let vms = """
                  - name: web
                    networks: [storage-net]
                    disks: [{name: web-root, size: 4Mi, fill: {seed: 1}}]
            """
        let s = try Scenario(vms: vms, policy: Self.policy(), networks: "[{name: net0, purpose: [nbd]}, {name: storage-net}]", srs: Self.srs)
        // Same pool: the network exists, so it maps to itself; a map naming a missing network is an error.
        var run = try s.diff()
        #expect(run.status == 1, "same-named network on the target: no error: \(run.stdout)")
        let file = s.config + "/haven.yaml"
        let text = try String(contentsOfFile: file, encoding: .utf8)
            .replacingOccurrences(of: "target: {pool: lab, sr: Replica storage}", with: "target: {pool: lab, sr: Replica storage, networkMap: {storage-net: dr-storage}}")
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        run = try s.diff()
        #expect(run.status == 2, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("storage-net → dr-storage (no such network on lab)"), "\(run.stdout)")
    }

    @Test func pullWithoutAppliancesSaysSo() throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy(extra: "  direction: pull"), srs: Self.srs)
        let run = try s.diff()
        #expect(run.status == 2)
        #expect(run.stdout.contains("direction pull has the target side fetch the blocks, which only appliances do (method abd)"), "\(run.stdout)")
    }
}

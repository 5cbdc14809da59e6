import Foundation
import Testing
import XenAPI

/// Replication across two pools when things go wrong: the target pool cut off mid-sync, `haven
/// apply` killed mid-sync, the target SR full. Afterwards nothing is left that the next run does
/// not find, and the next run leaves the replica equal to the source.
@Suite struct ReplicationTwoPoolsFaultTests {
    typealias T = ReplicationTwoPoolsEndToEndTests

    /// haven's objects on a pool that are neither the replica, its restore points and disks, nor
    /// a replication anchor: what a failed or killed run could have left behind.
    static func strays(_ c: XenAPIClient) async throws -> [String] {
        var kept = Set<String>()
        let vms = try await c.records(VMRecord.self)
        for (ref, vm) in vms where vm.otherConfig["haven.role"] == "replica" || vm.otherConfig["haven.role"] == "restore-point" {
            kept.insert(vm.uuid)
            for v in try await c.diskVDIs(ref) { kept.insert(try await c.record(v).uuid) }
        }
        var out: [String] = []
        for vm in vms.values where vm.otherConfig["haven.owner"] != nil && !kept.contains(vm.uuid) { out.append("VM \(vm.nameLabel) \(vm.otherConfig["haven.role"] ?? "")") }
        for vdi in try await c.records(VDIRecord.self).values where vdi.otherConfig["haven.owner"] != nil && !kept.contains(vdi.uuid)
            && vdi.otherConfig["haven.role"] != "cbt-anchor" {
            out.append("VDI \(vdi.nameLabel) \(vdi.otherConfig["haven.role"] ?? "")")
        }
        return out
    }

    static func expectNoStrays(_ c: XenAPIClient, _ note: String) async throws {
        let left = try await strays(c)
        #expect(left.isEmpty, "\(note): \(left)")
    }

    @Test func theTargetPoolCutOffMidSyncFailsClearlyAndTheNextRunCatchesUp() async throws {
        let s = try T.scenario()
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "201"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        // The read of the source is slowed so that dr is cut off while the sync is under way.
        #expect(try s.simControl(["fault", "--pool", "lab", "--rule", "latency:VDI.get_nbd_info:2s"]).status == 0)
        let events = s.dir.appendingPathComponent("events.jsonl")
        let apply = try s.startApply(events: events)
        #expect(s.waitForEvent(events) { $0["event"] as? String == "started" && $0["action"] as? String == "replicate" })
        #expect(try s.simControl(["fault", "--pool", "dr", "--rule", "unreachable"]).status == 0)
        apply.waitUntilExit()
        #expect(apply.terminationStatus == 2)
        let text = try String(contentsOf: events, encoding: .utf8)
        let failed = text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .first { $0["event"] as? String == "failed" && $0["action"] as? String == "replicate" }
        #expect(failed != nil, "\(text)")
        // The error names the pool that was cut off (not only a host address) and is not a
        // libcurl rewind failure of a reused connection.
        let error = failed?["error"] as? String ?? ""
        #expect(error.contains("pool dr could not be reached"), "\(error)")
        #expect(!error.contains("rewinding"), "\(error)")
        // The source snapshot of the failed sync was removed (lab is reachable).
        #expect(try await lab.records(VMRecord.self).values.filter { $0.otherConfig["haven.role"] == "replication-snapshot" }.isEmpty)
        // While dr is cut off the plan says so and changes nothing on it.
        let diff = try s.diff()
        #expect(diff.status == 2, "\(diff.stdout)\(diff.stderr)")
        #expect(diff.stdout.contains("pool dr cannot be read"), "\(diff.stdout)")
        #expect(try s.simControl(["fault", "--pool", "dr", "--clear"]).status == 0)
        #expect(try s.simControl(["fault", "--pool", "lab", "--clear"]).status == 0)
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await T.expectEqual(s, lab: lab, dr: dr, "the run after dr came back")
        let (rep, _) = try #require(try await T.replicas(dr).first)
        #expect(try await T.replicas(dr).count == 1)
        #expect(try await dr.records(VMRecord.self).values.filter { $0.isASnapshot && $0.snapshotOf == rep }.count == 2, "keep: 2")
        try await Self.expectNoStrays(dr, "dr")
        try await Self.expectNoStrays(lab, "lab")
        #expect(try s.diff().status == 0)
    }

    @Test func applyKilledMidSyncThenReappliedLeavesNoOrphanAndAConsistentReplica() async throws {
        let s = try T.scenario()
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        #expect(try s.apply().status == 0)
        for round in 0..<2 {
            #expect(try s.simControl(["write", "--vm", "web", "--percent", "6", "--seed", String(210 + round)]).status == 0)
            s.now = s.now.addingTimeInterval(3_700)
            // Slow the replica's restore point on dr in the first round (killed after the
            // replica was written), the source's NBD in the second (killed before it was).
            let rule = round == 0 ? ["--pool", "dr", "--rule", "latency:VM.snapshot:3s@count=1"] : ["--pool", "lab", "--rule", "latency:VDI.get_nbd_info:3s@count=1"]
            #expect(try s.simControl(["fault"] + rule).status == 0)
            let events = s.dir.appendingPathComponent("events-\(round).jsonl")
            let apply = try s.startApply(events: events)
            #expect(s.waitForEvent(events) { $0["event"] as? String == "started" && $0["action"] as? String == "replicate" })
            usleep(round == 0 ? 2_000_000 : 1_500_000)
            kill(apply.processIdentifier, SIGKILL)
            apply.waitUntilExit()
            usleep(3_000_000)
            let run = try s.apply()
            #expect(run.status == 0, "round \(round): \(run.stdout)\(run.stderr)")
            try await T.expectEqual(s, lab: lab, dr: dr, "round \(round): after the re-apply")
            #expect(try await T.replicas(dr).count == 1)
            try await Self.expectNoStrays(dr, "dr")
            try await Self.expectNoStrays(lab, "lab")
            let (rep, _) = try #require(try await T.replicas(dr).first)
            #expect(try await dr.records(VMRecord.self).values.filter { $0.isASnapshot && $0.snapshotOf == rep }.count <= 2)
            #expect(try s.diff().status == 0, "round \(round)")
        }
    }

    @Test func aFullTargetSRFailsTheSyncWithTheSRNamedAndTheNextRunRecovers() async throws {
        let s = try T.scenario()
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        #expect(try s.simControl(["fault", "--pool", "dr", "--rule", "sr-full:DR fast"]).status == 0)
        var run = try s.apply()
        #expect(run.status == 2, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("SR_FULL"), "\(run.stdout)")
        #expect(run.stdout.contains("DR fast"), "the error names the SR: \(run.stdout)")
        try await Self.expectNoStrays(lab, "lab")
        #expect(try s.simControl(["fault", "--pool", "dr", "--clear"]).status == 0)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try await T.replicas(dr).count == 1)
        try await T.expectEqual(s, lab: lab, dr: dr, "after the SR had room again")
        try await Self.expectNoStrays(dr, "dr")

        // Full again during an incremental: the restore point cannot be taken; the next run
        // after that rewrites what the failed one wrote and takes it.
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "221"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        #expect(try s.simControl(["fault", "--pool", "dr", "--rule", "sr-full:DR fast"]).status == 0)
        run = try s.apply()
        #expect(run.status == 2, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("SR_FULL"), "\(run.stdout)")
        #expect(try s.simControl(["fault", "--pool", "dr", "--clear"]).status == 0)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await T.expectEqual(s, lab: lab, dr: dr, "after the incremental that followed")
        try await Self.expectNoStrays(dr, "dr")
        try await Self.expectNoStrays(lab, "lab")
        #expect(try s.diff().status == 0)
    }

    /// The VHD delta goes out while the source is still being read: an upload cut halfway fails
    /// the sync (the blocks before the cut are on the replica, as with xapi, and its CBT logged
    /// them), the replica and its restore points stay, and the next run rewrites the replica
    /// equal to the source.
    @Test func anUploadCutMidStreamFailsTheSyncAndTheNextRunRepairsTheReplica() async throws {
        let s = try T.scenario()
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        #expect(try s.apply().status == 0)
        let (rep, _) = try #require(try await T.replicas(dr).first)
        func points() async throws -> Set<String> {
            Set(try await dr.records(VMRecord.self).values.filter { $0.isASnapshot && $0.snapshotOf == rep }.map(\.uuid))
        }
        let before = try await points()
        let replicaDisk = try #require(try await dr.diskVDIs(rep).first)
        let disk0 = try await T.exported(s, dr, replicaDisk)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "30", "--seed", "231"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        // The first upload is cut after its head and one block of 64 KiB and a bit.
        #expect(try s.simControl(["fault", "--pool", "dr", "--rule", "upload-cut:100000@count=1"]).status == 0)
        var run = try s.apply()
        #expect(run.status == 2, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("import_raw_vdi") || run.stdout.contains("upload"), "\(run.stdout)")
        #expect(try await T.replicas(dr).map(\.0) == [rep], "the replica stays")
        #expect(try await points() == before, "no restore point is taken or removed by the failed sync")
        #expect(try await T.exported(s, dr, replicaDisk) != disk0, "the blocks before the cut were written")
        try await Self.expectNoStrays(lab, "lab")
        try await Self.expectNoStrays(dr, "dr")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        // The replica's CBT saw the cut import's writes: the guard names them, and they are rewritten.
        #expect((run.stdout + run.stderr).contains("was written since the last sync"), "\(run.stdout)\(run.stderr)")
        try await T.expectEqual(s, lab: lab, dr: dr, "the run after the cut upload")
        try await Self.expectNoStrays(dr, "dr")
        try await Self.expectNoStrays(lab, "lab")
        #expect(try s.diff().status == 0)
    }

    /// The read failing while the VHD delta is already going out (every NBD connection of the
    /// source drops at once, beyond the retries) stops the upload: the sync fails with the NBD
    /// error, not the upload's, and the next run leaves the replica equal to the source.
    @Test func aReadFailingMidStreamStopsTheUploadAndTheNextRunCatchesUp() async throws {
        let s = try T.scenario()
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "30", "--seed", "232"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        #expect(try s.simControl(["fault", "--pool", "lab", "--rule", "nbd-drop:100"]).status == 0)
        var run = try s.apply()
        #expect(run.status == 2, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.lowercased().contains("nbd"), "the read's error, not the cut upload's: \(run.stdout)")
        #expect(try await T.replicas(dr).count == 1)
        try await Self.expectNoStrays(lab, "lab")
        try await Self.expectNoStrays(dr, "dr")
        #expect(try s.simControl(["fault", "--pool", "lab", "--clear"]).status == 0)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await T.expectEqual(s, lab: lab, dr: dr, "the run after the failed read")
        try await Self.expectNoStrays(dr, "dr")
        #expect(try s.diff().status == 0)
    }

    @Test func statusShowsEachReplicaWithLastSyncLagRestorePointsAndGuard() async throws {
        let s = try T.scenario()
        let dr = try s.client(pool: "dr")
        #expect(try s.apply().status == 0)
        func row() throws -> [String] {
            let status = try s.haven(["status", "-f", s.config])
            #expect(status.stdout.contains("REPLICA OF"), "\(status.stdout)")
            let line = status.stdout.split(separator: "\n").first { $0.hasPrefix("web ") && $0.contains("replica-web") }
            return (line ?? "").split(separator: " ").map(String.init)
        }
        var r = try row()
        // web offsite replica-web dr DATE TIME (0m ago) LAG POINTS STATE
        #expect(r.count >= 11 && r[3] == "dr" && r[8] == "none" && r[9] == "1" && r[10] == "ok", "\(r)")
        #expect(try s.haven(["status", "-f", s.config, "--check"]).status == 0)
        // Three hours on with an hourly schedule: two hours behind, and --check says so.
        s.now = s.now.addingTimeInterval(3 * 3_600)
        r = try row()
        #expect(r.count >= 11 && r[8] == "2h00m", "\(r)")
        #expect(try s.haven(["status", "-f", s.config, "--check"]).status == 3)
        let json = try JSONSerialization.jsonObject(with: Data(try s.haven(["status", "-f", s.config, "--output", "json"]).stdout.utf8)) as? [String: Any]
        let rep = try #require((json?["replicas"] as? [[String: Any]])?.first)
        #expect(rep["targetPool"] as? String == "dr" && rep["lagSeconds"] as? Int == 7_200 && rep["restorePoints"] as? Int == 1, "\(rep)")
        // Started by hand on dr: the guard state says it.
        let (ref, _) = try #require(try await T.replicas(dr).first)
        try await dr.unblock(ref, operation: "start")
        try await dr.start(ref)
        #expect(try row().joined(separator: " ").contains("running (never written)"))
        try await dr.hardShutdown(ref)
        // dr cut off: the replica's state is unknown, and the pool is named.
        #expect(try s.simControl(["fault", "--pool", "dr", "--rule", "unreachable"]).status == 0)
        let status = try s.haven(["status", "-f", s.config])
        #expect(status.stdout.contains("unknown (pool dr cannot be read)"), "\(status.stdout)\(status.stderr)")
    }
}

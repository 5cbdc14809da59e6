import Foundation
import Testing
import XenAPI

/// Fail-back, method xva, singlePass and replicas left by killed runs, end to end through the
/// binary (replica on another SR of the same pool, as in ReplicationEndToEndTests).
@Suite struct ReplicationFailbackEndToEndTests {
    typealias R = ReplicationEndToEndTests

    func replicas(_ c: XenAPIClient) async throws -> [(VMRef, VMRecord)] {
        try await c.records(VMRecord.self).filter { $0.value.isRealVM && $0.value.nameLabel == "replica-web" }.map { ($0.key, $0.value) }
    }

    /// The source VM's disks equal the replica's, byte for byte.
    func expectEqual(_ s: Scenario, _ c: XenAPIClient, _ note: String) async throws {
        try await R().expectEqualDisks(s, c, note)
    }

    /// Hashes of every disk of the VMs and snapshots haven did not make: they must never change.
    func userState(_ s: Scenario, _ c: XenAPIClient) async throws -> [String: String] {
        var out: [String: String] = [:]
        for (ref, vm) in try await c.records(VMRecord.self) where vm.otherConfig["haven.owner"] == nil && !vm.nameLabel.hasPrefix("replica-")
            && (vm.isRealVM || vm.isASnapshot) {
            for vdi in try await c.diskVDIs(ref) {
                let uuid = try await c.record(vdi).uuid
                out["\(vm.uuid)/\(uuid)"] = try s.sha(s.diskFile(uuid))
            }
            out[vm.uuid] = "\(vm.nameLabel) \(vm.powerState.rawValue) \(vm.otherConfig.filter { $0.key.hasPrefix("haven.") })"
        }
        return out
    }

    /// The "finished" progress event of the first action of a kind, from a run's JSON lines.
    func finished(_ run: Scenario.Run, kind: String) -> [String: Any]? {
        for line in run.stderr.split(separator: "\n") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
            if obj["event"] as? String == "finished", obj["action"] as? String == kind { return obj }
        }
        return nil
    }

    func writtenBlocks(_ run: Scenario.Run) -> Int {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any] else { return -1 }
        return (obj["blocks"] as? [Any])?.count ?? -1
    }

    @Test func failbackSendsOnlyWhatTheReplicaChangedAndResumesTheNormalDirection() async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2), srs: R.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "3"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        #expect(try s.apply().status == 0)
        let users = try await userState(s, c)

        var run = try s.haven(["failover", "-f", s.config, "dr", "web"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let (rep, _) = try #require(try await replicas(c).first)
        #expect(try await c.record(rep).powerState == .running)
        // The failover recorded CBT anchors of the replica's disks: CBT is on for them.
        for vdi in try await c.diskVDIs(rep) { #expect(try await c.record(vdi).cbtEnabled) }
        // Guest writes on the running replica, on both disks.
        let w0 = try s.simControl(["write", "--vm", "replica-web", "--disk", "0", "--percent", "4", "--seed", "91", "--output", "json"])
        let w1 = try s.simControl(["write", "--vm", "replica-web", "--disk", "1", "--percent", "6", "--seed", "92", "--output", "json"])
        let changed = writtenBlocks(w0) + writtenBlocks(w1)
        #expect(writtenBlocks(w0) > 0 && writtenBlocks(w1) > 0, "\(w0.stdout)")

        // The original still runs: the fail-back waits and says why.
        run = try s.haven(["failback", "-f", s.config, "dr", "web", "--auto-approve"])
        #expect(run.status == 2)
        #expect(run.stdout.contains("a running original is never written"), "\(run.stdout)")
        #expect(try s.simControl(["power", "--vm", "web", "shutdown"]).status == 0)
        // Without reverse: true a plain diff only names the command.
        #expect(try s.diff().stdout.contains("haven failback dr web"))

        run = try s.haven(["failback", "-f", s.config, "dr", "web", "--auto-approve"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("fail back from replica replica-web on lab: changed blocks of 2 disks"), "\(run.stdout)")
        #expect(run.stdout.contains("(2) send onto the halted web the blocks the replica changed since the failover"), "\(run.stdout)")
        #expect(run.stdout.contains("the replica is running"), "\(run.stdout)")
        try await expectEqual(s, c, "after the fail-back")
        // Only the changed blocks crossed: exactly the 64 KiB blocks the guest wrote on the replica.
        let done = try #require(finished(run, kind: "failback"), "\(run.stderr)")
        #expect((done["bytesStored"] as? Int) == changed * 65_536, "\(done)")

        // The failover is closed and the replica blocked again; it still runs until shut down.
        let rec = try await c.record(rep)
        #expect(rec.blockedOperations["start"]?.contains("haven failover") == true)
        #expect(rec.otherConfig["haven.failed-over"] == nil)
        let list = try s.haven(["replicas", "list", "-f", s.config])
        #expect(!list.stdout.contains("failed over"), "\(list.stdout)")
        var diff = try s.diff()
        #expect(diff.stdout.contains("replica replica-web of web is running"), "\(diff.stdout)")
        // The failover anchors are gone.
        let anchors = try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.role"] == "failover-anchor" }
        #expect(anchors.isEmpty)

        // The user shuts the replica down; the original runs again and is written; the next sync
        // is a normal incremental (the fail-back left anchors and a restore point).
        try await c.hardShutdown(rep)
        #expect(try s.simControl(["power", "--vm", "web", "start"]).status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "3", "--seed", "95"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        let actions = try s.planActions().filter { $0["kind"] as? String == "replicate" }
        #expect((actions.first?["headline"] as? String)?.contains("changed blocks of") == true, "\(actions)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(!run.stdout.contains("resync"), "nothing was written on the replica after the fail-back: \(run.stdout)")
        try await expectEqual(s, c, "first sync after the fail-back")
        diff = try s.diff()
        #expect(diff.status == 0, "\(diff.stdout)")
        // The user's other VMs and snapshots are untouched.
        let after = try await userState(s, c)
        let webUUID = try await c.vmNamed("web").1.uuid
        for (k, v) in users where !k.hasPrefix(webUUID) { #expect(after[k] == v, "\(k)") }
    }

    @Test func reverseTruePlansTheFailbackOnApply() async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2, extra: "  reverse: true"), srs: R.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        #expect(try s.haven(["failover", "-f", s.config, "dr", "web", "--no-start"]).status == 0)
        let (rep, _) = try #require(try await replicas(c).first)
        try await c.start(rep)
        #expect(try s.simControl(["write", "--vm", "replica-web", "--percent", "8", "--seed", "7"]).status == 0)
        var diff = try s.diff()
        #expect(diff.stdout.contains("fail-back of web from replica-web waits"), "\(diff.stdout)")
        #expect(try s.simControl(["power", "--vm", "web", "shutdown"]).status == 0)
        try await c.hardShutdown(rep)
        diff = try s.diff()
        #expect(diff.stdout.contains("reverse: true; the replica was failed over"), "\(diff.stdout)")
        #expect(!diff.stdout.contains("the replica is running"))
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await expectEqual(s, c, "after the fail-back")
        #expect(try s.diff().status == 0, "in the normal direction again, nothing due")
    }

    @Test func methodXVAReplacesTheReplicaOnlyOnceTheNewOneIsImported() async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2, extra: "  method: xva"), srs: R.srs)
        let c = s.client()
        let users = try await userState(s, c)
        var run = try s.diff()
        #expect(run.stdout.contains("export the VM whole (XVA) and import it as replica replica-web"), "\(run.stdout)")
        #expect(!run.stdout.contains("not built"), "\(run.stdout)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let first = try await replicas(c)
        #expect(first.count == 1)
        let (rep, rec) = try #require(first.first)
        #expect(rec.otherConfig["haven.role"] == "replica" && !rec.isATemplate)
        #expect(rec.blockedOperations["start"]?.contains("haven failover") == true)
        try await expectEqual(s, c, "xva initial")
        #expect(try await c.records(VMRecord.self).values.filter { $0.isASnapshot && $0.snapshotOf == rep }.count == 1, "a restore point")

        // Second run: a new replica replaces the old one.
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "31"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.diff()
        #expect(run.stdout.contains("then remove the previous replica"), "\(run.stdout)")
        #expect(try s.apply().status == 0)
        let second = try await replicas(c)
        #expect(second.count == 1)
        #expect(second.first?.1.uuid != rec.uuid, "a new replica")
        try await expectEqual(s, c, "xva second run")

        // Killed after the new replica was recorded, before the old one went: two replicas, and
        // the next run removes the older.
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "32"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_STEP": "xva-recorded"])
        #expect(run.status == 99, "\(run.stdout)\(run.stderr)")
        let both = try await replicas(c)
        #expect(both.count == 2, "never a moment without a replica")
        let newest = try #require(both.first { $0.1.uuid != second.first?.1.uuid })
        run = try s.diff()
        #expect(run.stdout.contains("an older replica of web"), "\(run.stdout)")
        #expect(run.stdout.contains("left over from a replication sync that did not finish"), "\(run.stdout)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let left = try await replicas(c)
        #expect(left.map(\.1.uuid) == [newest.1.uuid], "the older replica went, the newer stays")
        try await expectEqual(s, c, "after the run that followed the kill")
        #expect(try s.diff().status == 0)
        let leftovers = try await c.records(VMRecord.self).values.filter { $0.isASnapshot && $0.otherConfig["haven.role"] == "replication-snapshot" }
        #expect(leftovers.isEmpty)
        // The user's VMs are untouched, except for web's guest writes.
        let after = try await userState(s, c)
        let webUUID = try await c.vmNamed("web").1.uuid
        for (k, v) in users where !k.hasPrefix(webUUID) { #expect(after[k] == v, "\(k)") }
    }

    @Test func singlePassCommitsABackupFromTheSameReadThatRestoresEqualToTheReplica() async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2, extra: "  singlePass: {repository: local}"), srs: R.srs)
        let c = s.client()
        var run = try s.diff()
        #expect(run.stdout.contains("record a backup version in local from the same read"), "\(run.stdout)")
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "4", "--seed", "61"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.diff()
        #expect(run.stdout.contains("singlePass: the same read commits an incremental backup version to local"), "\(run.stdout)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let done = try #require(finished(run, kind: "replicate"))
        // The incremental read only the changed blocks (the backup referenced the previous chunks).
        let (web, _) = try await c.vmNamed("web")
        let total = try await c.diskVDIs(web).asyncReduce(Int64(0)) { $0 + (try await c.record($1).virtualSize) }
        #expect(((done["bytesRead"] as? Int) ?? Int.max) < Int(total) / 4, "\(done)")
        let backups = try s.backups()
        #expect(backups.count == 2, "\(backups)")
        #expect(backups.allSatisfy { ($0["policy"] as? String) == "dr" }, "\(backups)")
        for b in backups {
            let show = try s.haven(["backups", "show", "-f", s.config, b["id"] as? String ?? ""])
            #expect(show.stdout.contains("single-pass"), "the version says it came from the replication: \(show.stdout)")
        }
        #expect(backups.contains { $0["kind"] as? String == "incremental" }, "\(backups)")
        // The newest version restores to the replica's bytes.
        let (rep, _) = try #require(try await replicas(c).first)
        for (i, vdi) in try await c.diskVDIs(rep).enumerated() {
            let file = s.dir.appendingPathComponent("restored-\(i).raw").path
            let r = try s.haven(["restore", "-f", s.config, "--backup", "latest", "--vm", "web", "--disk", String(i), "--to-file", file])
            #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
            #expect(try s.sha(file) == s.sha(s.diskFile(try await c.record(vdi).uuid)), "disk \(i)")
        }
    }

    /// A sync that dies inside the repository write (HAVEN_CRASH_AT: the first durable step of
    /// the singlePass write) commits no version and has not written the replica yet; the next run
    /// does both.
    @Test func aSinglePassSyncKilledInTheRepositoryWriteLeavesNoVersionAndTheReplicaAsItWas() async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2, extra: "  singlePass: {repository: local}"), srs: R.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        let (rep, _) = try #require(try await replicas(c).first)
        var before: [String] = []
        for v in try await c.diskVDIs(rep) { before.append(try s.sha(s.diskFile(try await c.record(v).uuid))) }
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "6", "--seed", "66"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        let run = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_AT": "1"])
        #expect(run.status == 99, "\(run.stdout)\(run.stderr)")
        #expect(try s.backups().count == 1, "no half version")
        var after: [String] = []
        for v in try await c.diskVDIs(rep) { after.append(try s.sha(s.diskFile(try await c.record(v).uuid))) }
        #expect(after == before, "the replica was not written")
        let next = try s.apply()
        #expect(next.status == 0, "\(next.stdout)\(next.stderr)")
        try await expectEqual(s, c, "the run after the kill")
        #expect(try s.backups().count == 2)
    }

    /// Found by the kill sweep: an xva sync killed after `/import` and before the import was made
    /// the replica left a template carrying its source snapshot's marks (role
    /// replication-snapshot; or no role, killed while the role was rewritten) and its disks, which
    /// no later run found. The intent recorded before the import proves it haven's: the next run
    /// removes it with its disks, and the replica of record stays.
    @Test(arguments: [("after /import", "replication-snapshot"), ("before xapi VM.add_to_other_config#6", "")])
    func anXVAImportLeftByAKilledSyncIsFoundAndRemoved(point: String, role: String) async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2, extra: "  method: xva"), srs: R.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        let (_, kept) = try #require(try await replicas(c).first)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "71"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        var run = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_AT": point])
        #expect(run.status == 99, "\(run.stdout)\(run.stderr)")
        func imports() async throws -> [(VMRef, VMRecord)] {
            try await c.records(VMRecord.self).filter { $0.value.isATemplate && !$0.value.isASnapshot && $0.value.otherConfig["haven.owner"] != nil }
                .map { ($0.key, $0.value) }
        }
        let left = try await imports()
        #expect(left.count == 1, "the killed sync left its import")
        let (importRef, importRec) = try #require(left.first)
        #expect((importRec.otherConfig["haven.role"] ?? "") == role, "\(importRec.otherConfig)")
        var importDisks: [String] = []
        for v in try await c.diskVDIs(importRef) { importDisks.append(try await c.record(v).uuid) }
        #expect(!importDisks.isEmpty)
        // The next run comes an hour later, as scheduled: the intent that proves the import
        // haven's must outlive the 10 minutes after which intents of snapshots never made go.
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.diff()
        #expect(run.stdout.contains("an xva import of web left by a sync that stopped before making it the replica"), "\(run.stdout)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try await imports().isEmpty, "the import is gone")
        let vdis = try await c.records(VDIRecord.self).values
        for uuid in importDisks { #expect(!vdis.contains { $0.uuid == uuid }, "the import's disk \(uuid) is gone") }
        let now = try await replicas(c)
        #expect(now.count == 1 && now.first?.1.uuid != kept.uuid, "the run after the kill made a new replica and removed the old")
        try await expectEqual(s, c, "after the run that followed the kill")
        #expect(try s.diff().status == 0)
    }

    /// Found by the kill sweep: xva syncs killed after `/import`, an hour apart, left imports that
    /// no later run removed (the intents proving them were dropped as stale after 10 minutes, and
    /// two removals planned under one intent failed on the second). Each run removes what the one
    /// before left, under that run's own intent, and nothing stays.
    @Test func xvaImportsLeftByKilledSyncsAnHourApartAreAllRemoved() async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2, extra: "  method: xva"), srs: R.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        for seed in [81, 82] {
            #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "\(seed)"]).status == 0)
            s.now = s.now.addingTimeInterval(3_700)
            let killed = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_AT": "after /import"])
            #expect(killed.status == 99, "\(killed.stdout)\(killed.stderr)")
        }
        func imports() async throws -> [VMRecord] {
            try await c.records(VMRecord.self).values.filter { $0.isATemplate && !$0.isASnapshot && $0.otherConfig["haven.owner"] != nil }
        }
        // The second run, an hour after the first, removed the first import (its intent still
        // proves it) before its own sync, then left its own.
        #expect(try await imports().count == 1, "one import left: the second run's")
        s.now = s.now.addingTimeInterval(3_700)
        let next = try s.apply()
        #expect(next.status == 0, "\(next.stdout)\(next.stderr)")
        #expect(try await imports().isEmpty, "both imports are gone")
        #expect(try await replicas(c).count == 1)
        try await expectEqual(s, c, "after the run that followed the kills")
        #expect(try s.diff().status == 0)
    }

    @Test(arguments: ["replica-created", "replica-disk-created"])
    func aReplicaLeftByAKilledInitialSyncIsFoundAndRemoved(step: String) async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(), srs: R.srs)
        let c = s.client()
        var run = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_STEP": step])
        #expect(run.status == 99, "\(run.stdout)\(run.stderr)")
        #expect(try await replicas(c).count == 1, "the killed sync left its replica")
        run = try s.diff()
        #expect(run.stdout.contains("remove replica replica-web"), "\(run.stdout)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let left = try await replicas(c)
        #expect(left.count == 1)
        try await expectEqual(s, c, "after the recovery")
        // No replica disk of haven's outside the replica and its restore points.
        let (rep, _) = try #require(left.first)
        var kept = Set<String>()
        for (ref, vm) in try await c.records(VMRecord.self) where ref == rep || vm.snapshotOf == rep {
            for v in try await c.diskVDIs(ref) { kept.insert(try await c.record(v).uuid) }
        }
        let loose = try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.role"] == "replica-disk" && !kept.contains($0.uuid) }
        #expect(loose.isEmpty, "\(loose.map(\.nameLabel))")
        #expect(try s.diff().status == 0)
    }
}

extension Array {
    func asyncReduce<T>(_ initial: T, _ next: (T, Element) async throws -> T) async rethrows -> T {
        var acc = initial
        for e in self { acc = try await next(acc, e) }
        return acc
    }
}

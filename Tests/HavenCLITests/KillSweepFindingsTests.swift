import Foundation
import Testing
import XenAPI

/// What the kill sweep of `make reliability` found, each replayed at the crash point that showed
/// it (`HAVEN_CRASH_AT=LABEL#K`: the Kth durable step of that name, whatever runs beside it).
@Suite struct KillSweepFindingsTests {
    static let srs = "[{name: Local storage, type: ext, size: 64Gi, default: true}, {name: Replica storage, type: ext, size: 64Gi}]"

    func anchors(_ c: XenAPIClient, of disk: String) async throws -> [VDIRecord] {
        let vdis = try await c.records(VDIRecord.self)
        guard let source = vdis.first(where: { $0.value.uuid == disk })?.key else { return [] }
        return vdis.values.filter { $0.snapshotOf == source && $0.type == "cbt_metadata" }
    }

    /// A backup records its new CBT anchor and is killed before the old one is retired: the old
    /// one used to stay on the SR forever (nothing planned it away). The next plan retires it.
    @Test func anAnchorReplacedByAKilledBackupIsRetiredByTheNextRun() async throws {
        let vms = """
                  - name: web
                    power: Running
                    disks: [{name: web-root, size: 2Mi, fill: {seed: 51}}]
            """
        let s = try Scenario(vms: vms, policy: """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [web]}, schedule: {every: 1h}, repository: local}
            """)
        #expect(try s.apply().status == 0)
        let c = s.client()
        let disk = try await c.record(try await c.diskVDIs(try await c.vmNamed("web").0)[0]).uuid
        let first = try await anchors(c, of: disk)
        #expect(first.count == 1)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "10"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        // The second `set anchor` of the purge: the new anchor is recorded with its data destroyed.
        let killed = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_AT": "catalog set anchor#2"])
        #expect(killed.status == 99, "\(killed.stderr)")
        #expect(try await anchors(c, of: disk).count == 2, "killed before the old anchor was retired")
        let diff = try s.diff()
        #expect(diff.stdout.contains("retire CBT anchor \(first[0].uuid)") && diff.stdout.contains("stopped before removing it"), "\(diff.stdout)")
        #expect(try s.apply().status == 0)
        let left = try await anchors(c, of: disk)
        #expect(left.count == 1 && left[0].uuid != first[0].uuid, "only the new anchor stays")
        #expect(try s.diff().status == 0)
    }

    /// A replication sync killed right after the pool made the restore point, before haven marked
    /// it as one: the snapshot carries the marks it copied from the replica (role `replica`) and
    /// used to stay forever, in no inventory, beside the `keep` restore points.
    @Test func aRestorePointMadeForAKilledSyncIsFoundByItsIntentAndRemoved() async throws {
        let vms = """
                  - name: web
                    power: Running
                    disks: [{name: web-root, size: 2Mi, fill: {seed: 52}}]
            """
        let s = try Scenario(vms: vms, policy: ReplicationEndToEndTests.policy(keep: 2), srs: Self.srs)
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "10"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        // VM.snapshot #1 is the source's snapshot, #2 the replica's restore point.
        let killed = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_AT": "after xapi VM.snapshot#2"])
        #expect(killed.status == 99, "\(killed.stderr)")
        let c = s.client()
        func points() async throws -> [VMRecord] {
            try await c.records(VMRecord.self).values.filter { $0.isASnapshot && $0.nameLabel.hasPrefix("replica-web restore point") }
        }
        let unfinished = try await points().filter { $0.otherConfig["haven.role"] != "restore-point" }
        #expect(unfinished.count == 1, "the pool made the restore point; haven died before marking it")
        let diff = try s.diff()
        #expect(diff.stdout.contains("left by a run that stopped during VM.snapshot"), "\(diff.stdout)")
        #expect(try s.apply().status == 0)
        let after = try await points()
        #expect(!after.contains { $0.uuid == unfinished.first?.uuid }, "the unfinished restore point is gone")
        #expect(after.count == 2 && after.allSatisfy { $0.otherConfig["haven.role"] == "restore-point" })
        #expect(try s.diff().status == 0)
    }

    /// With singlePass, the replication's anchors are also the snapshots its backup versions were
    /// read from: `catalog rebuild` recorded them under the version's policy (the replication's
    /// bare name) instead of the replication's, and the next sync left them beside its own for
    /// good (one CBT anchor too many per disk after every rebuild).
    @Test func aRebuiltCatalogKeepsSinglePassAnchorsUnderTheReplication() async throws {
        let s = try Scenario(vms: ReplicationEndToEndTests.vms, policy: ReplicationEndToEndTests.policy(extra: "  singlePass: {repository: local}"),
                             srs: Self.srs)
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        #expect(try s.apply().status == 0)
        let rebuild = try s.haven(["catalog", "rebuild", "-f", s.config])
        #expect(rebuild.status == 0, "\(rebuild.stdout)\(rebuild.stderr)")
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "9"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let c = s.client()
        for vdi in try await c.diskVDIs(try await c.vmNamed("web").0) {
            let disk = try await c.record(vdi).uuid
            #expect(try await anchors(c, of: disk).count == 1, "one CBT anchor per disk after the sync that followed the rebuild")
        }
        #expect(try s.diff().status == 0)
    }

    /// A sync killed after the pool made the restore point and before haven marked it (the
    /// snapshot carries the replica's copied marks), then `catalog rebuild`: the rebuild dropped
    /// the recorded intents, the only proof of what the snapshot was, and the restore point with
    /// its disks (`replica-disk`, copied) stayed for good beside the `keep` ones (kill sweep of
    /// 10:04: a restore point, a `replica-disk` beyond those kept). The rebuild keeps the intents.
    /// With the catalog lost too (no intent left), a restore point marked as haven's with no role
    /// yet is removed by its mark and the rebuilt inventory.
    @Test(arguments: [("after xapi VM.snapshot#2", false), ("before xapi VM.add_to_other_config#7", false),
                      ("before xapi VM.add_to_other_config#7", true)])
    func aRestorePointLeftByAKilledSyncIsStillFoundAfterACatalogRebuild(point: String, catalogLost: Bool) async throws {
        let s = try Scenario(vms: ReplicationEndToEndTests.vms, policy: ReplicationEndToEndTests.policy(keep: 2), srs: Self.srs)
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "10"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        let killed = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_AT": point])
        #expect(killed.status == 99, "\(killed.stderr)")
        let c = s.client()
        func points() async throws -> [VMRecord] {
            try await c.records(VMRecord.self).values.filter { $0.isASnapshot && $0.nameLabel.hasPrefix("replica-web restore point") }
        }
        let unfinished = try await points().filter { $0.otherConfig["haven.role"] != "restore-point" }
        #expect(unfinished.count == 1, "the pool made the restore point; haven died before marking it")
        if catalogLost {
            #expect(unfinished.first?.otherConfig["haven.owner"] != nil && unfinished.first?.otherConfig["haven.role"] == nil)
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: s.dir.appendingPathComponent("state/catalog.sqlite\(suffix)").path) }
        }
        let rebuild = try s.haven(["catalog", "rebuild", "-f", s.config])
        #expect(rebuild.status == 0, "\(rebuild.stdout)\(rebuild.stderr)")
        s.now = s.now.addingTimeInterval(3_700)
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let after = try await points()
        #expect(!after.contains { $0.uuid == unfinished.first?.uuid }, "the unfinished restore point is gone")
        #expect(after.allSatisfy { $0.otherConfig["haven.role"] == "restore-point" })
        let vms = try await c.records(VMRecord.self).values
        let mine = vms.filter { $0.otherConfig["haven.owner"] != nil }
        #expect(!mine.contains { $0.otherConfig["haven.role"] == nil }, "no VM of haven's without a role")
        let vdis = try await c.records(VDIRecord.self).values
        #expect(!vdis.contains { $0.otherConfig["haven.owner"] != nil && $0.vbds.isEmpty && $0.type != "cbt_metadata" }, "no loose disk of haven's")
        #expect(try s.diff().status == 0)
    }

    /// `haven catalog rebuild` used to drop the replica VM from the inventory and to record its
    /// disks as anchors of no policy: the next apply planned "retire CBT anchor" on the replica's
    /// own disks. After a rebuild nothing is planned, and the next sync is an incremental.
    @Test func aRebuiltCatalogKeepsTheReplicaAndItsDisks() async throws {
        let s = try Scenario(vms: ReplicationEndToEndTests.vms, policy: ReplicationEndToEndTests.policy(), srs: Self.srs)
        #expect(try s.apply().status == 0)
        let rebuild = try s.haven(["catalog", "rebuild", "-f", s.config])
        #expect(rebuild.status == 0, "\(rebuild.stdout)\(rebuild.stderr)")
        let diff = try s.diff()
        #expect(diff.status == 0, "nothing to do after a rebuild: \(diff.stdout)")
        #expect(!diff.stdout.contains("retire"))
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        let actions = try s.planActions().filter { $0["kind"] as? String == "replicate" }
        #expect((actions.first?["headline"] as? String)?.contains("changed blocks") == true, "\(actions)")
        #expect(try s.apply().status == 0)
        let c = s.client()
        let replica = try await c.records(VMRecord.self).first { $0.value.isRealVM && $0.value.nameLabel == "replica-web" }
        let (web, _) = try await c.vmNamed("web")
        let sources = try await c.diskVDIs(web)
        let copies = try await c.diskVDIs(try #require(replica?.key))
        #expect(sources.count == copies.count)
        for (a, b) in zip(sources, copies) {
            #expect(try s.sha(s.diskFile(try await c.record(a).uuid)) == s.sha(s.diskFile(try await c.record(b).uuid)))
        }
    }
}

/// Leftovers of the second kill sweep (docs/RELIABILITY.md), each replayed at its crash point.
@Suite struct KillSweepLeftoverTests {
    typealias R = ReplicationEndToEndTests

    /// haven's VDIs attached to no VM (CBT metadata anchors excepted): what no run looks for.
    func looseDisks(_ c: XenAPIClient) async throws -> [VDIRecord] {
        try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil && $0.vbds.isEmpty && $0.type != "cbt_metadata" }
    }

    /// An xva sync removes the previous replica after recording the new one: its restore points
    /// and then itself. It destroyed each VM before its disks, so a kill in between left the
    /// restore point's disks (in no inventory) or the replica's (named after the source snapshot's
    /// disks, which the plan did not match) attached to nothing, for good. Disks now go first, and
    /// loose xva replica disks are found by the inventory.
    @Test(arguments: ["after xapi VM.destroy#1", "after xapi VM.destroy#2", "after xapi VDI.destroy#1", "after xapi VDI.destroy#3"])
    func anXVASyncKilledWhileRemovingThePreviousReplicaLeavesNothingLoose(point: String) async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2, extra: "  method: xva"), srs: R.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "73"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        let killed = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_AT": point])
        #expect(killed.status == 99, "\(killed.stdout)\(killed.stderr)")
        s.now = s.now.addingTimeInterval(3_700)
        let next = try s.apply()
        #expect(next.status == 0, "\(next.stdout)\(next.stderr)")
        let loose = try await looseDisks(c)
        #expect(loose.isEmpty, "\(loose.map { "\($0.nameLabel) \($0.uuid) \($0.otherConfig)" })")
        let replicas = try await c.records(VMRecord.self).values.filter { $0.isRealVM && $0.nameLabel == "replica-web" }
        #expect(replicas.count == 1)
        #expect(try s.diff().status == 0)
    }

    /// An xva sync killed after the import was marked and recorded as the replica, but while it
    /// was still a template (before `VM.set_is_a_template false`): the observer does not count a
    /// template as a VM, so the marked import must be found among haven's templates by the
    /// inventory even when no intent is open any more (the kill sweep's extra `replica`).
    @Test(arguments: [false, true])
    func anXVAImportKilledWhileStillATemplateIsRemovedByTheNextRun(previousReplica: Bool) async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2, extra: "  method: xva"), srs: R.srs)
        let c = s.client()
        if previousReplica {
            #expect(try s.apply().status == 0)
            #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "74"]).status == 0)
            s.now = s.now.addingTimeInterval(3_700)
        }
        let killed = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_AT": "before xapi VM.set_is_a_template#1"])
        #expect(killed.status == 99, "\(killed.stdout)\(killed.stderr)")
        for _ in 0..<2 {
            s.now = s.now.addingTimeInterval(3_700)
            let next = try s.apply()
            #expect(next.status == 0, "\(next.stdout)\(next.stderr)")
        }
        let templates = try await c.records(VMRecord.self).values.filter { $0.isATemplate && !$0.isASnapshot && $0.otherConfig["haven.role"] != nil }
        #expect(templates.isEmpty, "\(templates.map { "\($0.nameLabel) \($0.uuid) \($0.otherConfig)" })")
        let loose = try await looseDisks(c)
        #expect(loose.isEmpty, "\(loose.map { "\($0.nameLabel) \($0.uuid) \($0.otherConfig)" })")
        let replicas = try await c.records(VMRecord.self).values.filter { $0.isRealVM && $0.nameLabel == "replica-web" }
        #expect(replicas.count == 1)
        #expect(try s.diff().status == 0)
    }

    /// A fail-back killed after it closed the failover in the catalog and before it retired the
    /// failover anchors (snapshots of the replica's disks, CBT metadata) left them for good: no
    /// failover was open, so nothing looked at them. The next run retires them.
    @Test func failoverAnchorsLeftByAKilledFailbackAreRetired() async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2), srs: R.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        var run = try s.haven(["failover", "-f", s.config, "dr", "web", "--no-start"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        func anchors() async throws -> [VDIRecord] {
            try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.role"] == "failover-anchor" }
        }
        #expect(try await !anchors().isEmpty, "the failover recorded its anchors")
        #expect(try s.simControl(["power", "--vm", "web", "shutdown"]).status == 0)
        s.now = s.now.addingTimeInterval(60)
        run = try s.haven(["failback", "-f", s.config, "dr", "web", "--auto-approve"], env: ["HAVEN_CRASH_AT": "catalog set replica"])
        #expect(run.status == 99, "\(run.stdout)\(run.stderr)")
        #expect(try await !anchors().isEmpty, "killed before the anchors were retired")
        let diff = try s.diff()
        #expect(diff.stdout.contains("left by a fail-back that stopped before retiring it"), "\(diff.stdout)")
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try await anchors().isEmpty, "the failover anchors are gone")
        #expect(try s.diff().status == 0)
    }

    /// A failover killed after it reverted the replica (xapi gives it new disks) and before it
    /// recorded the failover: the next apply took the replica for an unfinished one (its recorded
    /// disks gone), destroyed it and began a new initial sync. The failover is now recorded first;
    /// killed anywhere, the replica stays the VM of record until `haven failback`, which completes,
    /// and nothing of the failover (anchor snapshot, anchors) stays after it.
    @Test(arguments: ["after xapi VM.revert", "after xapi VM.snapshot", "catalog own#1", "before xapi VDI.data_destroy"])
    func aKilledFailoverLeavesTheReplicaFailedOverAndNothingBehindAfterTheFailback(point: String) async throws {
        let s = try Scenario(vms: R.vms, policy: R.policy(keep: 2), srs: R.srs)
        let c = s.client()
        #expect(try s.apply().status == 0)
        func replicas() async throws -> [VMRecord] {
            try await c.records(VMRecord.self).values.filter { $0.isRealVM && $0.nameLabel == "replica-web" }
        }
        let replica = try #require(try await replicas().first)
        s.now = s.now.addingTimeInterval(60)
        var run = try s.haven(["failover", "-f", s.config, "dr", "web", "--no-start"], env: ["HAVEN_CRASH_AT": point])
        #expect(run.status == 99, "\(run.stdout)\(run.stderr)")
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try await replicas().map(\.uuid) == [replica.uuid], "the replica being failed over is never removed nor replaced")
        #expect(try s.simControl(["power", "--vm", "web", "shutdown"]).status == 0)
        run = try s.haven(["failback", "-f", s.config, "dr", "web", "--auto-approve"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let vms = try await c.records(VMRecord.self).values
        let vdis = try await c.records(VDIRecord.self).values
        #expect(!vms.contains { $0.otherConfig["haven.role"] == "failover-anchor" || $0.nameLabel.contains("failover anchor") })
        #expect(!vdis.contains { $0.otherConfig["haven.role"] == "failover-anchor" })
        #expect(try await looseDisks(c).isEmpty)
        #expect(try await replicas().map(\.uuid) == [replica.uuid])
        #expect(try s.diff().status == 0)
    }

    /// An XVA version restored to the pool: xapi's `/import` gave the VM and its disks the marks
    /// the archive's snapshot carried (haven's owner, role backup-snapshot / snapshot-disk), which
    /// the restore then removed; killed in between, a VM and disks marked as haven's stayed that
    /// no inventory or plan covered. The archive now goes in without them.
    @Test(arguments: ["after /import", "before xapi VM.remove_from_other_config"])
    func anXVARestoreKilledAfterTheImportLeavesNothingMarkedAsHavens(point: String) async throws {
        let s = try Scenario(vms: XVARestoreEndToEndTests.vms, policy: XVARestoreEndToEndTests.policy)
        let id = try XVARestoreEndToEndTests().backUp(s)
        let c = s.client()
        let run = try s.haven(["restore", "-f", s.config, "--backup", id, "--to-pool", "lab", "--sr", "Local storage", "--name", "back"],
                              env: ["HAVEN_CRASH_AT": point])
        #expect(run.status == 99, "\(run.stdout)\(run.stderr)")
        // The import (named `back` or not yet): a VM that is not a snapshot, with app's disks.
        let imports = try await c.records(VMRecord.self).filter { !$0.value.isASnapshot && $0.value.nameLabel != "app" && !$0.value.isControlDomain
            && !$0.value.vbds.isEmpty }
        #expect(imports.count == 1, "\(imports.values.map(\.nameLabel))")
        for (vm, rec) in imports {
            #expect(rec.otherConfig["haven.owner"] == nil && rec.otherConfig["haven.role"] == nil, "\(rec.otherConfig)")
            for d in try await XVARestoreEndToEndTests().disks(c, vm) {
                #expect(!d.vdi.otherConfig.keys.contains { $0.hasPrefix("haven.") }, "\(d.vdi.otherConfig)")
            }
        }
    }

    /// `restore --disk N --to-file` of an XVA version wrote into the target as it went: killed
    /// halfway, the target held part of a disk under its final name. It is now written beside it
    /// and renamed once complete (the steps every restore to a file has).
    @Test func anXVADiskExtractionKilledBeforeItsRenameLeavesNoTarget() async throws {
        let s = try Scenario(vms: XVARestoreEndToEndTests.vms, policy: XVARestoreEndToEndTests.policy)
        let id = try XVARestoreEndToEndTests().backUp(s)
        let target = s.dir.appendingPathComponent("disk0.raw").path
        let killed = try s.haven(["restore", "-f", s.config, "--backup", id, "--disk", "0", "--to-file", target],
                                 env: ["HAVEN_CRASH_AT": "restored image written"])
        #expect(killed.status == 99, "\(killed.stdout)\(killed.stderr)")
        #expect(!FileManager.default.fileExists(atPath: target), "no partial image under the target's name")
        let run = try s.haven(["restore", "-f", s.config, "--backup", id, "--disk", "0", "--to-file", target])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let c = s.client()
        let source = try await XVARestoreEndToEndTests().disks(c, try await c.vmNamed("app").0)[0]
        #expect(try s.sha(target) == s.sha(s.diskFile(source.vdi.uuid)))
    }
}

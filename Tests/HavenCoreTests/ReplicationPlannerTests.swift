import Foundation
import HavenSpec
import Testing

@testable import HavenCore

/// The replication planner's fail-back, xva and leftover-replica decisions, without sockets.
@Suite struct ReplicationPlannerTests {
    static func policy(_ extra: String = "") -> String {
        """
        ---
        apiVersion: haven/v1
        kind: ReplicationPolicy
        metadata: {name: dr}
        spec:
          source: lab
          vms: {names: [web]}
          target: {pool: lab, sr: Replica storage}
        \(extra)
        """
    }

    /// web with two disks, its replica "rep" (halted, failed over at `failedOver`), CBT anchors on both sides.
    func failedOver(webPower: String, failoverAnchors: Bool = true) -> World {
        var w = World()
        w.pool.srs["sr2"] = ObservedSR(uuid: "sr2", name: "Replica storage", type: "ext", physicalSize: 1 << 40, physicalUtilisation: 0, supportsCBT: true)
        w.vm("web", disks: ["root", "data"], cbt: true)
        w.pool.vms[0].powerState = webPower
        var disks: [ObservedDisk] = []
        for i in 0..<2 {
            let uuid = "rep-vdi-\(i)"
            w.pool.vdis[uuid] = ObservedVDI(uuid: uuid, name: "replica disk", srUUID: "sr2", size: 1 << 30, type: "user", cbtEnabled: true, isSnapshot: false,
                                            snapshotOf: "", otherConfig: ["haven.owner": w.instance, "haven.role": "replica-disk"])
            disks.append(ObservedDisk(userdevice: String(i), device: "xvda", vdiUUID: uuid))
            for (side, vdi, policy) in [("fo", uuid, "failover:dr"), ("src", "web-vdi-\(i)", "replication:dr")] where side == "src" || failoverAnchors {
                let anchor = "\(side)-anchor-\(i)"
                w.pool.vdis[anchor] = ObservedVDI(uuid: anchor, name: "anchor", srUUID: "sr1", size: 1 << 30, type: "cbt_metadata", cbtEnabled: true,
                                                  isSnapshot: true, snapshotOf: vdi, otherConfig: ["haven.owner": w.instance])
                w.catalog.anchors.append(Anchor(pool: "lab", policy: policy, vmUUID: "web-uuid", diskKey: String(i), sourceVDI: vdi, snapshotVM: "",
                                                snapshotVDI: anchor, backupID: "", dataDestroyed: true))
            }
        }
        var rep = ObservedVM(uuid: "rep", name: "replica-web", powerState: "Running", tags: [], disks: disks)
        rep.otherConfig = ["haven.owner": w.instance, "haven.role": "replica", "haven.policy": "replication:dr", "haven.source": "web-uuid"]
        w.pool.vms.append(rep)
        w.catalog.inventory.append(OwnedObject(pool: "lab", cls: "VM", uuid: "rep", role: "replica", policy: "replication:dr", vmUUID: "web-uuid", createdAt: w.now))
        w.catalog.replicas.append(ReplicaRecord(policy: "dr", sourcePool: "lab", sourceVM: "web-uuid", sourceName: "web", targetPool: "lab", replicaUUID: "rep",
                                                disks: ["0": "rep-vdi-0", "1": "rep-vdi-1"], lastSync: w.now.addingTimeInterval(-7_200),
                                                failedOverAt: w.now.addingTimeInterval(-3_600)))
        return w
    }

    func plan(_ w: World, _ desired: DesiredState, failback: FailbackRequest? = nil) -> Plan {
        Planner(instance: w.instance).plan(desired: desired, observed: ["lab": w.pool], catalog: w.catalog, now: w.now, failback: failback)
    }

    @Test func aFailbackWaitsWhileTheOriginalRunsThenShowsEachStep() throws {
        let desired = World().desired(extra: Self.policy("  reverse: true"))
        var p = plan(failedOver(webPower: "Running"), desired)
        #expect(!p.actions.contains { $0.kind == .failback || $0.kind == .replicate }, "a running original is never written")
        #expect(p.warnings.contains { $0.code == .failbackWaiting && $0.message.contains("a running original is never written") })
        #expect(p.errors.isEmpty)

        p = plan(failedOver(webPower: "Halted"), desired)
        let fb = try #require(p.actions.first { $0.kind == .failback })
        guard case .failback(let job) = fb.action else { Issue.record("not a failback"); return }
        #expect(job.disks.count == 2 && job.disks.allSatisfy(\.incremental))
        #expect(job.disks.map(\.failoverAnchorVDI) == ["fo-anchor-0", "fo-anchor-1"])
        #expect(job.disks.map(\.sourceAnchorVDI) == ["src-anchor-0", "src-anchor-1"])
        #expect(fb.headline.contains("changed blocks of 2 disks"))
        for step in ["(1) snapshot the replica", "(2) send onto the halted web", "(3) snapshot web as the next sync's CBT anchor", "(4) block the replica again"] {
            #expect(fb.reason.contains(step), "\(step): \(fb.reason)")
        }
        #expect(fb.reason.contains("the replica is running"), "the plan says what a running replica means")
        #expect(!p.actions.contains { $0.kind == .replicate }, "no sync while failed over")
    }

    @Test func withoutReverseOnlyTheCommandPlansIt() throws {
        let desired = World().desired(extra: Self.policy())
        let w = failedOver(webPower: "Halted")
        // (World's BackupPolicy `daily` also covers web: its backup is not the replication's business.)
        var p = plan(w, desired)
        #expect(!p.actions.contains { $0.kind == .failback || $0.kind == .replicate })
        #expect(p.warnings.contains { $0.code == .replicaFailedOver && $0.reason.contains("haven failback dr web") })
        p = plan(w, desired, failback: FailbackRequest(policy: "dr", vm: "web"))
        #expect(p.actions.filter { $0.kind != .backup }.map(\.kind) == [.failback])
    }

    @Test func aFailoverWithoutAnchorsSendsEveryBlockAndSaysWhy() throws {
        let p = plan(failedOver(webPower: "Halted", failoverAnchors: false), World().desired(extra: Self.policy("  reverse: true")))
        let fb = try #require(p.actions.first { $0.kind == .failback })
        #expect(fb.headline.contains("every block"))
        #expect(fb.reason.contains("the failover recorded no CBT anchor"))
    }

    @Test func aMarkedReplicaIsRemovedOnlyWhenTheCatalogProvesItHavens() throws {
        var w = World()
        w.pool.srs["sr2"] = ObservedSR(uuid: "sr2", name: "Replica storage", type: "ext", physicalSize: 1 << 40, physicalUtilisation: 0, supportsCBT: true)
        w.vm("web", disks: ["root"], cbt: true)
        var stray = ObservedVM(uuid: "stray", name: "replica-web", powerState: "Halted", tags: [], disks: [])
        stray.otherConfig = ["haven.owner": w.instance, "haven.role": "replica", "haven.policy": "replication:dr", "haven.source": "web-uuid"]
        w.pool.vms.append(stray)
        let desired = w.desired(extra: Self.policy())
        var p = plan(w, desired)
        #expect(!p.actions.contains { $0.kind == .removeReplica }, "marks alone prove nothing")
        #expect(p.warnings.contains { $0.code == .unprovenReplica })

        // The intent recorded before VM.create proves it: removed, then the initial sync.
        w.catalog.intents.append(SnapshotIntent(pool: "lab", vmUUID: "web-uuid", policy: "replication:dr", name: "replica replica-web 2026-06-10T11:00:00Z",
                                                requestedAt: w.now.addingTimeInterval(-3_600)))
        p = plan(w, desired)
        let removal = try #require(p.actions.first { $0.kind == .removeReplica })
        let sync = try #require(p.actions.first { $0.kind == .replicate })
        #expect(sync.after.contains(removal.key))
        #expect(sync.headline.contains("create replica replica-web"))
    }

    /// Found by the kill sweep: a replication's snapshot left by a run killed inside VM.snapshot
    /// is adopted (marked backup-snapshot under the intent's policy, `replication:dr`) and then
    /// removed; killed in between, it stayed for good — no backup policy's retention and no
    /// clean-up looks at a replication's snapshots. The next plan removes it.
    @Test func aReplicationSnapshotAdoptedButNotYetRemovedIsRemoved() throws {
        var w = World()
        w.pool.srs["sr2"] = ObservedSR(uuid: "sr2", name: "Replica storage", type: "ext", physicalSize: 1 << 40, physicalUtilisation: 0, supportsCBT: true)
        w.vm("web", disks: ["root"], cbt: true)
        w.pool.snapshots.append(ObservedSnapshot(uuid: "adopted", name: "haven replica dr web 2026-06-10T11:00:00Z", snapshotOf: "web-uuid",
                                                 otherConfig: ["haven.owner": w.instance, "haven.role": "backup-snapshot", "haven.policy": "replication:dr",
                                                               "haven.source": "web-uuid"], disks: []))
        w.catalog.inventory.append(OwnedObject(pool: "lab", cls: "VM", uuid: "adopted", role: "backup-snapshot", policy: "replication:dr",
                                               vmUUID: "web-uuid", createdAt: w.now))
        let p = plan(w, w.desired(extra: Self.policy()))
        let removal = try #require(p.actions.first { $0.kind == .deleteSnapshot && $0.key.subject == "adopted" })
        #expect(removal.reason.contains("adopted"))
        // A snapshot another instance marked is never planned.
        var other = w
        other.pool.snapshots[0].otherConfig["haven.owner"] = "someone-else"
        #expect(!plan(other, other.desired(extra: Self.policy())).actions.contains { $0.key.subject == "adopted" })
    }

    @Test func xvaNeedsNoCBTAndPullWithoutAbdIsAnError() throws {
        var w = World()
        w.pool.srs["sr2"] = ObservedSR(uuid: "sr2", name: "Replica storage", type: "ext", physicalSize: 1 << 40, physicalUtilisation: 0, supportsCBT: true)
        w.pool.cbtLicensed = false
        w.vm("web", disks: ["root"])
        var p = plan(w, w.desired(extra: Self.policy("  method: xva")))
        #expect(p.errors.isEmpty, "\(p.warnings)")
        #expect(p.actions.contains { $0.kind == .replicate && $0.headline.contains("XVA") })
        #expect(!p.actions.contains { $0.kind == .enableCBT && $0.policy == "replication:dr" })
        p = plan(w, w.desired(extra: Self.policy("  direction: pull")))
        #expect(p.errors.contains { $0.message.contains("direction pull has the target side fetch the blocks, which only appliances do (method abd)") })
        // The summary counts a plan error as an error, not as one more warning.
        #expect(p.summary.errors == p.errors.count && p.summary.errors > 0)
        #expect(p.summary.warnings == p.warnings.count - p.errors.count)
        #expect(p.summary.line.hasSuffix("warning\(p.summary.warnings == 1 ? "" : "s"), \(p.summary.errors) error\(p.summary.errors == 1 ? "" : "s")."))
    }

    static let appliancePools = "\n" + """
        ---
        apiVersion: haven/v1
        kind: AppliancePool
        metadata: {name: src}
        spec:
          pool: lab
          template: haven-abd
          sr: Local storage
          network: net0
          addresses: [127.0.77.50]
          netmask: 255.255.255.0
          max: 1
        ---
        apiVersion: haven/v1
        kind: AppliancePool
        metadata: {name: dst}
        spec:
          pool: lab
          template: haven-abd
          sr: Local storage
          network: net0
          addresses: [127.0.77.60]
          netmask: 255.255.255.0
          max: 1
        """

    @Test func abdPlansARouteThroughBothAppliancePoolsWithoutNBD() throws {
        var w = World()
        w.pool.srs["sr2"] = ObservedSR(uuid: "sr2", name: "Replica storage", type: "ext", physicalSize: 1 << 40, physicalUtilisation: 0, supportsCBT: true)
        w.pool.templates = ["haven-abd": "tpl-uuid"]
        w.pool.networks = ["net0"]
        w.pool.nbdNetworks = []
        w.vm("web", disks: ["root"])
        for direction in ["push", "pull"] {
            let p = plan(w, w.desired(extra: Self.policy("  method: abd\n  direction: \(direction)\n  appliances: {source: src, target: dst}") + Self.appliancePools))
            #expect(p.errors.isEmpty, "\(p.warnings)")
            let sync = try #require(p.actions.first { $0.kind == .replicate })
            guard case .replicate(let job) = sync.action else { Issue.record("not a replication"); continue }
            #expect(job.abd == ApplianceRoute(direction: direction == "push" ? .push : .pull, source: "src", target: "dst"))
            #expect(sync.headline.contains(direction == "push" ? "through appliances (push: src → dst)" : "through appliances (pull: dst ← src)"), "\(sync.headline)")
            // CBT is enabled for the next sync's changed blocks; both AppliancePools get an appliance for it.
            #expect(p.actions.contains { $0.kind == .enableCBT && $0.policy == "replication:dr" })
            #expect(Set(p.actions.compactMap { if case .provisionAppliance(let a) = $0.action { return a.appliancePool } else { return nil } }) == ["src", "dst"])
        }
    }

    @Test func abdRoutesThatCannotMoveDataArePlanErrors() throws {
        var w = World()
        w.pool.srs["sr2"] = ObservedSR(uuid: "sr2", name: "Replica storage", type: "ext", physicalSize: 1 << 40, physicalUtilisation: 0, supportsCBT: true)
        w.pool.templates = ["haven-abd": "tpl-uuid"]
        w.pool.networks = ["net0"]
        w.vm("web", disks: ["root"])
        var p = plan(w, w.desired(extra: Self.policy("  method: abd\n  appliances: {source: src, target: src}") + Self.appliancePools))
        #expect(p.errors.contains { $0.code == .replicationRoute && $0.message.contains("both name AppliancePool src") }, "\(p.warnings)")
        #expect(!p.actions.contains { $0.kind == .replicate })
        p = plan(w, w.desired(extra: Self.policy("  method: cbt\n  appliances: {source: src, target: dst}") + Self.appliancePools))
        #expect(p.errors.contains { $0.code == .replicationRoute && $0.message.contains("only method abd moves data through appliances") }, "\(p.warnings)")
        p = plan(w, w.desired(extra: Self.policy("  method: abd\n  appliances: {source: src, target: dst}\n  singlePass: {repository: local}") + Self.appliancePools))
        #expect(p.errors.contains { $0.code == .replicationRoute && $0.message.contains("singlePass") }, "\(p.warnings)")
    }
}

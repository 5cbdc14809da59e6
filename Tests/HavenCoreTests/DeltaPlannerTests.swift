import Foundation
import HavenSpec
import Testing

@testable import HavenCore

extension World {
    /// A backup that kept its snapshot disks whole as delta bases (purged: no snapshot VM).
    mutating func deltaBackedUp(_ vm: String, hoursAgo: Double, id: String = "b1") {
        catalog.backups.append(BackupRecord(id: id, repository: "local", pool: "lab", policy: "daily", vmUUID: "\(vm)-uuid", vmName: vm,
                                            createdAt: now.addingTimeInterval(-hoursAgo * 3_600), kind: "full", size: 0, storedBytes: 0))
        guard let v = pool.vms.first(where: { $0.name == vm }) else { return }
        for d in v.disks {
            let base = "\(d.vdiUUID)-base-\(id)"
            pool.vdis[base] = ObservedVDI(uuid: base, name: "base", srUUID: "sr1", size: 1 << 30, type: "user", cbtEnabled: false,
                                          isSnapshot: true, snapshotOf: d.vdiUUID, otherConfig: ["haven.owner": instance, "haven.role": "delta-base"])
            catalog.anchors.removeAll { $0.diskKey == d.userdevice && $0.vmUUID == v.uuid }
            catalog.anchors.append(Anchor(pool: "lab", policy: "daily", vmUUID: v.uuid, diskKey: d.userdevice, sourceVDI: d.vdiUUID, snapshotVM: "",
                                          snapshotVDI: base, backupID: id, dataDestroyed: false, kind: .delta))
            catalog.inventory.append(OwnedObject(pool: "lab", cls: "VDI", uuid: base, role: "delta-base", policy: "daily", vmUUID: v.uuid, createdAt: now))
        }
    }
}

/// `method: auto` without CBT, and `method: delta`: VHD deltas against the previous backup's
/// snapshot disk, kept on the pool as the delta base.
@Suite struct DeltaPlannerTests {
    func backups(_ p: Plan) -> [PlannedAction] { p.actions.filter { $0.kind == .backup } }

    @Test func anUnlicensedPoolStartsWithAFullReadThatKeepsDeltaBases() throws {
        var w = World()
        w.pool.cbtLicensed = false
        w.vm("web", disks: ["root", "data"])
        let p = w.plan(w.desired())
        let b = try #require(backups(p).first)
        #expect(b.method == .fullNBD)
        #expect(b.reason.contains("full, because CBT is not licensed and this is the first backup with VHD deltas"), "\(b.reason)")
        #expect(b.reason.contains("its disks are kept as the next delta's base"))
        #expect(b.job?.keepAnchors == true && b.job?.deltaBases == true)
        #expect(!p.actions.contains { $0.kind == .enableCBT })
        #expect(p.warnings.contains { $0.message.contains("no CBT licence (restrict_cbt): backups read VHD deltas") })
    }

    @Test func theNextBackupIsAVHDDeltaAgainstTheKeptBase() throws {
        var w = World()
        w.pool.cbtLicensed = false
        w.vm("web", disks: ["root", "data"])
        w.deltaBackedUp("web", hoursAgo: 26)
        let p = w.plan(w.desired())
        let b = try #require(backups(p).first)
        #expect(b.method == .deltaIncremental)
        #expect(b.reason.contains("incremental (VHD delta, no CBT licence)"), "\(b.reason)")
        #expect(b.disks.map(\.anchorVDI) == ["web-vdi-0-base-b1", "web-vdi-1-base-b1"])
        #expect(b.disks.allSatisfy { $0.baseBackup == "b1" })
        // The bases it replaces go once it succeeded; never a purge of their data.
        let retired = p.actions.filter { $0.kind == .retireAnchor }
        #expect(Set(retired.map(\.key.subject)) == ["web-vdi-0-base-b1", "web-vdi-1-base-b1"])
        #expect(retired.allSatisfy { $0.requires == [b.key] })
        #expect(!p.actions.contains { $0.kind == .purgeSnapshotData })
    }

    @Test func aBaseThatIsNotDueStaysAndIsNeverPurged() {
        var w = World()
        w.pool.cbtLicensed = false
        w.vm("web", disks: ["root"])
        w.deltaBackedUp("web", hoursAgo: 2)
        let p = w.plan(w.desired())
        #expect(p.actions.isEmpty, "\(p.actions.map(\.headline))")
    }

    @Test(arguments: [
        ("deleted", "full, because CBT is not licensed and the delta base of disk 0 was deleted"),
        ("no-data", "the delta base of disk 0 holds no data"),
        ("replaced", "disk 0 is another VDI than at the last backup"),
        ("version-gone", "the backup the delta base of disk 0 belongs to is gone"),
        ("resized", "disk 0 was resized since its delta base"),
    ])
    func aBaseThatCannotServeMeansAFullReadAndSaysWhy(situation: String, expected: String) throws {
        var w = World()
        w.pool.cbtLicensed = false
        w.vm("web", disks: ["root"])
        w.deltaBackedUp("web", hoursAgo: 30)
        let base = "web-vdi-0-base-b1"
        switch situation {
        case "deleted": w.pool.vdis[base] = nil
        case "no-data": w.pool.vdis[base]!.type = "cbt_metadata"
        case "replaced": w.catalog.anchors[0].sourceVDI = "another"
        case "resized": w.pool.vdis["web-vdi-0"]!.size = 2 << 30
        default:
            w.catalog.backups.removeAll()
            w.catalog.backups.append(BackupRecord(id: "other", repository: "local", pool: "lab", policy: "daily", vmUUID: "web-uuid", vmName: "web",
                                                  createdAt: w.now.addingTimeInterval(-30 * 3_600), kind: "full", size: 0, storedBytes: 0))
        }
        let b = try #require(backups(w.plan(w.desired())).first)
        #expect(b.method == .fullNBD)
        #expect(b.reason.contains(expected), "\(b.reason)")
        #expect(b.disks.allSatisfy { $0.anchorVDI == nil }, "a full read keeps new bases, it reads against none")
        #expect(b.job?.deltaBases == true)
    }

    @Test func methodDeltaIgnoresCBTEvenWhereItIsAvailable() throws {
        var w = World()
        w.vm("web", disks: ["root"], cbt: false)
        w.deltaBackedUp("web", hoursAgo: 26)
        let p = w.plan(w.desired("  method: delta"))
        let b = try #require(backups(p).first)
        #expect(b.method == .deltaIncremental)
        #expect(b.reason.contains("incremental (VHD delta, method: delta)"), "\(b.reason)")
        #expect(!p.actions.contains { $0.kind == .enableCBT }, "method delta defaults cbt to false")
    }

    @Test func cbtFalseWithAutoUsesDeltas() throws {
        var w = World()
        w.vm("web", disks: ["root"])
        w.deltaBackedUp("web", hoursAgo: 26)
        let b = try #require(backups(w.plan(w.desired("  cbt: false"))).first)
        #expect(b.method == .deltaIncremental)
        #expect(b.reason.contains("incremental (VHD delta, cbt: false)"), "\(b.reason)")
    }

    @Test func snapshotRetentionZeroKeepsNoBaseAndReadsWhole() throws {
        var w = World()
        w.pool.cbtLicensed = false
        w.vm("web", disks: ["root"])
        w.deltaBackedUp("web", hoursAgo: 26)
        let p = w.plan(w.desired("  snapshotRetention: 0"))
        let b = try #require(backups(p).first)
        #expect(b.method == .fullNBD)
        #expect(b.reason.contains("snapshotRetention is 0, so no snapshot is kept as a delta base"), "\(b.reason)")
        #expect(b.job?.keepAnchors == false && b.job?.deltaBases == nil)
        #expect(p.actions.contains { $0.kind == .retireAnchor && $0.key.subject == "web-vdi-0-base-b1" })
    }

    @Test func aLicenceGainedSwitchesToCBTAndRetiresTheBasesAfterwards() throws {
        var w = World()
        w.vm("web", disks: ["root"])
        w.deltaBackedUp("web", hoursAgo: 26)
        let p = w.plan(w.desired())
        let b = try #require(backups(p).first)
        #expect(b.method == .fullNBD)
        #expect(b.reason.contains("first backup with CBT") || b.reason.contains("CBT was re-enabled"), "\(b.reason)")
        #expect(p.actions.contains { $0.kind == .retireAnchor && $0.key.subject == "web-vdi-0-base-b1" && $0.requires == [b.key] })
    }

    @Test func cbtTrueWithMethodDeltaIsRefused() {
        let text = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [web]}, repository: local, method: delta, cbt: true}
            """
        let result = SpecLoader.load(sources: [.init(path: "t.yaml", text: text)])
        #expect(result.diagnostics.contains { $0.message.contains("'cbt: true' cannot be combined with 'method: delta'") })
    }
}

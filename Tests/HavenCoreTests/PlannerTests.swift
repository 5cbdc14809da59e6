import Foundation
import HavenSpec
import Testing

@testable import HavenCore

/// Builds small worlds for the planner: no sockets, no clock, no files.
struct World {
    var pool = ObservedPool(name: "lab", apiMajor: 2, apiMinor: 21, cbtLicensed: true, vms: [], snapshots: [], vdis: [:],
                            srs: ["sr1": ObservedSR(uuid: "sr1", name: "Local storage", type: "ext", physicalSize: 1 << 40, physicalUtilisation: 0, supportsCBT: true)],
                            nbdNetworks: ["net0"])
    var catalog = CatalogView()
    let instance = "haven-test"
    let now = ISO8601DateFormatter().date(from: "2026-06-10T12:00:00Z")!

    mutating func vm(_ name: String, disks: [String], cbt: Bool = false) {
        var ds: [ObservedDisk] = []
        for (i, d) in disks.enumerated() {
            let uuid = "\(name)-vdi-\(i)"
            pool.vdis[uuid] = ObservedVDI(uuid: uuid, name: d, srUUID: "sr1", size: 1 << 30, type: "user", cbtEnabled: cbt, isSnapshot: false,
                                          snapshotOf: "", otherConfig: [:])
            ds.append(ObservedDisk(userdevice: String(i), device: "xvd\(Character(UnicodeScalar(97 + i)!))", vdiUUID: uuid))
        }
        pool.vms.append(ObservedVM(uuid: "\(name)-uuid", name: name, powerState: "Running", tags: [], disks: ds))
    }

    func desired(_ policy: String = "", extra: String = "", replace: [(String, String)] = []) -> DesiredState {
        var text = """
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: lab}
            spec: {url: "https://xcp.example.com", credentials: {username: root, passwordEnv: PW}}
            ---
            apiVersion: haven/v1
            kind: Repository
            metadata: {name: local}
            spec: {path: /srv/haven}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec:
              pool: lab
              vms: {names: [web, db]}
              repository: local
            \(policy)
            \(extra)
            """
        for (a, b) in replace { text = text.replacingOccurrences(of: a, with: b) }
        let result = SpecLoader.load(sources: [.init(path: "t.yaml", text: text)])
        guard let state = result.state else { fatalError("\(result.diagnostics)") }
        return state
    }

    func plan(_ desired: DesiredState, scope: Set<String>? = nil) -> Plan {
        Planner(instance: instance).plan(desired: desired, observed: ["lab": pool], catalog: catalog, now: now, scope: scope)
    }

    mutating func backedUp(_ vm: String, hoursAgo: Double, anchors: Bool = true, id: String = "b1") {
        catalog.backups.append(BackupRecord(id: id, repository: "local", pool: "lab", policy: "daily", vmUUID: "\(vm)-uuid", vmName: vm,
                                            createdAt: now.addingTimeInterval(-hoursAgo * 3_600), kind: "full", size: 0, storedBytes: 0))
        guard anchors, let v = pool.vms.first(where: { $0.name == vm }) else { return }
        for d in v.disks {
            let snap = "\(d.vdiUUID)-anchor"
            pool.vdis[snap] = ObservedVDI(uuid: snap, name: "anchor", srUUID: "sr1", size: 1 << 30, type: "cbt_metadata", cbtEnabled: true,
                                          isSnapshot: true, snapshotOf: d.vdiUUID, otherConfig: ["haven.owner": instance])
            catalog.anchors.removeAll { $0.diskKey == d.userdevice && $0.vmUUID == v.uuid }
            catalog.anchors.append(Anchor(pool: "lab", policy: "daily", vmUUID: v.uuid, diskKey: d.userdevice, sourceVDI: d.vdiUUID, snapshotVM: "",
                                          snapshotVDI: snap, backupID: id, dataDestroyed: true))
            catalog.inventory.append(OwnedObject(pool: "lab", cls: "VDI", uuid: snap, role: "cbt-anchor", policy: "daily", vmUUID: v.uuid, createdAt: now))
        }
    }
}

extension PlannedAction {
    var job: BackupJob? {
        if case .backup(let b) = action { return b }
        return nil
    }
    var method: BackupMethod? { job?.method }
    var disks: [DiskJob] { job?.disks ?? [] }
    var skippedDisks: [String] { job?.skippedDisks ?? [] }
}

@Suite struct PlannerTests {
    func backups(_ p: Plan) -> [PlannedAction] { p.actions.filter { $0.kind == .backup } }

    @Test func firstRunEnablesCBTAndTakesFullBackups() {
        var w = World()
        w.vm("web", disks: ["root", "data"])
        w.vm("db", disks: ["root"])
        w.vm("other", disks: ["root"])
        let p = w.plan(w.desired())
        #expect(p.actions.filter { $0.kind == .enableCBT }.count == 3)
        #expect(backups(p).map(\.vm?.name) == ["db", "web"])
        #expect(backups(p).allSatisfy { $0.method == .fullNBD && $0.reason.contains("due: never backed up; full, because first backup with CBT") })
        #expect(p.summary == Plan.Summary(add: 2, change: 3, destroy: 0, warnings: 0))
        #expect(p.summary.line == "Plan: 2 to add, 3 to change, 0 to destroy, 0 warnings.")
    }

    @Test func dueOnlyWhenTheScheduleSaysSo() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.backedUp("web", hoursAgo: 23)
        #expect(backups(w.plan(w.desired())).isEmpty)
        var late = World()
        late.vm("web", disks: ["root"], cbt: true)
        late.backedUp("web", hoursAgo: 26)
        let b = backups(late.plan(late.desired()))
        #expect(b.count == 1)
        #expect(b[0].method == .cbtIncremental)
        #expect(b[0].reason.hasPrefix("due: last backup 26h ago, schedule every 24h"))
        #expect(b[0].disks[0].anchorVDI == "web-vdi-0-anchor")
    }

    @Test func cronSlotsDecide() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.backedUp("web", hoursAgo: 13)  // 2026-06-09 23:00 UTC
        let d = w.desired("  schedule: {cron: \"30 1 * * *\", timezone: UTC}")
        let b = backups(w.plan(d))
        #expect(b.count == 1, "01:30 on the 10th passed since the 9th at 23:00")
        #expect(b[0].reason.contains("cron slot '30 1 * * *'"))
        var w2 = World()
        w2.vm("web", disks: ["root"], cbt: true)
        w2.backedUp("web", hoursAgo: 9)  // 03:00 on the 10th: after the slot
        #expect(backups(w2.plan(d)).isEmpty)
    }

    @Test(arguments: [
        ("licence", "full, because CBT is not licensed"),
        ("api", "full, because the pool predates CBT (API 2.7)"),
        ("anchor-deleted", "full, because the CBT anchor of disk 0 was deleted"),
        ("cbt-disabled", "full, because CBT was re-enabled on disk 0"),
        ("disk-replaced", "full, because disk 0 is another VDI than at the last backup"),
        ("version-gone", "full, because the backup the CBT anchor of disk 0 belongs to is gone"),
    ])
    func fallbacksAreAnnounced(situation: String, expected: String) {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.backedUp("web", hoursAgo: 30)
        switch situation {
        case "licence": w.pool.cbtLicensed = false
        case "api":
            w.pool.apiMajor = 2
            w.pool.apiMinor = 7
        case "anchor-deleted": w.pool.vdis["web-vdi-0-anchor"] = nil
        case "cbt-disabled": w.pool.vdis["web-vdi-0"]!.cbtEnabled = false
        case "disk-replaced": w.catalog.anchors[0].sourceVDI = "some-other-vdi"
        default: w.catalog.backups.removeAll()
            w.catalog.backups.append(BackupRecord(id: "other", repository: "local", pool: "lab", policy: "daily", vmUUID: "web-uuid", vmName: "web",
                                                  createdAt: w.now.addingTimeInterval(-30 * 3_600), kind: "full", size: 0, storedBytes: 0))
        }
        let p = w.plan(w.desired())
        let b = backups(p)
        #expect(b.count == 1)
        #expect(b.first?.reason.contains(expected) == true, "\(b.first?.reason ?? "")")
        #expect(b.first?.method != .cbtIncremental)
        if situation == "licence" || situation == "api" {
            #expect(!p.warnings.isEmpty, "the pool-level cause is also a warning")
            #expect(!p.actions.contains { $0.kind == .enableCBT })
        }
        if situation == "cbt-disabled" {
            #expect(p.actions.contains { $0.kind == .enableCBT }, "CBT is switched on again")
        }
    }

    @Test func excludedDisksAreSkippedAndListed() {
        var w = World()
        w.vm("web", disks: ["root", "scratch"])
        let p = w.plan(w.desired("  excludeDisks: [scratch]"))
        let b = backups(p)[0]
        #expect(b.disks.map(\.name) == ["root"])
        #expect(b.skippedDisks == ["scratch (disk 1)"])
        #expect(p.actions.filter { $0.kind == .enableCBT }.map(\.headline) == ["enable CBT on root (disk 0)"])
        #expect(!p.warnings.contains { $0.message.contains("excludeDisks") }, "scratch matches a disk: \(p.warnings.map(\.message))")
    }

    @Test func anExcludeDisksEntryThatMatchesNoDiskIsAWarningWithItsPlace() {
        var w = World()
        w.vm("web", disks: ["root", "scratch"])
        let p = w.plan(w.desired("  excludeDisks: [scratch, xvdb, scrach]"))
        let texts = p.warnings.filter { $0.code == .noMatch && $0.message.contains("excludeDisks") }.map(\.message)
        #expect(texts.count == 1, "only the typo: \(texts)")
        #expect(texts.first?.contains("spec.excludeDisks names 'scrach'") == true && texts.first?.contains("t.yaml:") == true, "\(texts)")
        #expect(backups(p)[0].disks.map(\.name) == ["root"])
    }

    @Test func usersSnapshotsAndUnmarkedObjectsAreNeverTouched() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.pool.snapshots.append(ObservedSnapshot(uuid: "user-snap", name: "before upgrade", snapshotOf: "web-uuid", otherConfig: ["owner": "alice"], disks: []))
        // In the inventory, but the pool object lacks haven's mark (someone else's now): left alone.
        w.catalog.inventory.append(OwnedObject(pool: "lab", cls: "VM", uuid: "user-snap", role: "backup-snapshot", policy: "daily", vmUUID: "gone-uuid", createdAt: w.now))
        // Marked as haven's, but not in the inventory: left alone too.
        w.pool.snapshots.append(ObservedSnapshot(uuid: "stray", name: "x", snapshotOf: "gone-uuid", otherConfig: ["haven.owner": w.instance], disks: []))
        let p = w.plan(w.desired())
        #expect(!p.actions.contains { $0.key.subject == "user-snap" || $0.key.subject == "stray" })
    }

    @Test func aVMLeavingAllPoliciesIsCleanedUpButItsBackupsStay() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.vm("old", disks: ["root"], cbt: true)
        w.backedUp("old", hoursAgo: 5)
        w.pool.vdis["old-vdi-0"]!.otherConfig["haven.cbt"] = w.instance
        w.catalog.cbtMarks.append(CBTMark(pool: "lab", vdiUUID: "old-vdi-0", policy: "daily"))
        // A disk whose CBT the user enabled: no mark, never disabled.
        w.vm("mine", disks: ["root"], cbt: true)
        let p = w.plan(w.desired())
        #expect(p.actions.contains { $0.kind == .retireAnchor && $0.key.subject == "old-vdi-0-anchor" && $0.reason.contains("no longer covered") })
        #expect(p.actions.contains { $0.kind == .disableCBT && $0.key.subject == "old-vdi-0" })
        #expect(!p.actions.contains { $0.kind == .disableCBT && $0.key.subject == "mine-vdi-0" })
        #expect(!p.actions.contains { $0.kind == .prune }, "backups stay until retention or `haven backups forget`")
    }

    /// Found by the kill sweep (`make reliability`): a backup records its new anchor, the run is
    /// killed before the old one is retired, and the old one (haven's, in the inventory, no longer
    /// any disk's anchor) used to stay on the SR for good.
    @Test func anAnchorReplacedByARunThatWasKilledIsRetired() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.backedUp("web", hoursAgo: 1)
        // The previous anchor: still on the pool and in the inventory, no longer in the anchor table.
        w.pool.vdis["old-anchor"] = ObservedVDI(uuid: "old-anchor", name: "root", srUUID: "sr1", size: 1 << 30, type: "cbt_metadata", cbtEnabled: true,
                                                isSnapshot: true, snapshotOf: "web-vdi-0", otherConfig: ["haven.owner": w.instance, "haven.role": "cbt-anchor"])
        w.catalog.inventory.append(OwnedObject(pool: "lab", cls: "VDI", uuid: "old-anchor", role: "cbt-anchor", policy: "daily", vmUUID: "web-uuid", createdAt: w.now))
        // The same with a delta base (method delta keeps the snapshot's disk whole).
        w.pool.vdis["old-base"] = ObservedVDI(uuid: "old-base", name: "root", srUUID: "sr1", size: 1 << 30, type: "user", cbtEnabled: false,
                                              isSnapshot: true, snapshotOf: "web-vdi-0", otherConfig: ["haven.owner": w.instance, "haven.role": "delta-base"])
        w.catalog.inventory.append(OwnedObject(pool: "lab", cls: "VDI", uuid: "old-base", role: "delta-base", policy: "daily", vmUUID: "web-uuid", createdAt: w.now))
        // The disk of a snapshot that is still there (snapshotRetention) is its snapshot's business.
        w.pool.vdis["kept-disk"] = ObservedVDI(uuid: "kept-disk", name: "root", srUUID: "sr1", size: 1 << 30, type: "user", cbtEnabled: true,
                                               isSnapshot: true, snapshotOf: "web-vdi-0", otherConfig: ["haven.owner": w.instance, "haven.role": "snapshot-disk"])
        w.catalog.inventory.append(OwnedObject(pool: "lab", cls: "VDI", uuid: "kept-disk", role: "snapshot-disk", policy: "daily", vmUUID: "web-uuid", createdAt: w.now))
        w.pool.snapshots.append(ObservedSnapshot(uuid: "kept", name: "haven daily web", snapshotOf: "web-uuid", otherConfig: ["haven.owner": w.instance],
                                                 disks: [ObservedDisk(userdevice: "0", device: "xvda", vdiUUID: "kept-disk")]))
        // One the user made that looks the same but is not in the inventory: never touched.
        w.pool.vdis["users"] = ObservedVDI(uuid: "users", name: "root", srUUID: "sr1", size: 1 << 30, type: "cbt_metadata", cbtEnabled: true,
                                           isSnapshot: true, snapshotOf: "web-vdi-0", otherConfig: ["haven.owner": w.instance, "haven.role": "cbt-anchor"])
        let p = w.plan(w.desired())
        let retired = Set(p.actions.filter { $0.kind == .retireAnchor }.map(\.key.subject))
        #expect(retired == ["old-anchor", "old-base"], "\(retired)")
        #expect(p.actions.first { $0.key.subject == "old-anchor" }?.reason.contains("stopped before removing it") == true)
        #expect(!p.actions.contains { $0.kind == .backup }, "the web VM is not due: only the leftover goes")
    }

    @Test func suspendedPoliciesPlanNothingAndProtectTheirVMs() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.backedUp("web", hoursAgo: 100)
        let p = w.plan(w.desired("  suspend: true"))
        #expect(p.actions.isEmpty, "\(p.actions.map(\.headline))")
    }

    @Test func targetingOnePolicyCleansNothingElse() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.vm("old", disks: ["root"], cbt: true)
        w.backedUp("old", hoursAgo: 5)
        let p = w.plan(w.desired(), scope: ["daily"])
        #expect(!p.actions.contains { $0.kind == .deleteSnapshot })
        #expect(backups(p).map(\.vm?.name) == ["web"])
    }

    @Test func noNBDNetworkMeansAWarningAndHTTPExport() {
        var w = World()
        w.pool.nbdNetworks = []
        w.vm("web", disks: ["root"], cbt: true)
        w.backedUp("web", hoursAgo: 30)
        let p = w.plan(w.desired())
        #expect(p.warnings.contains { $0.message.contains("NBD purpose") })
        #expect(backups(p)[0].method == .fullExport)
    }

    @Test func retentionPrunesAndCollectsGarbage() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        for i in 0..<10 { w.backedUp("web", hoursAgo: Double(i) * 24 + 1, anchors: i == 0, id: "v\(i)") }
        let p = w.plan(w.desired("  retention: {keepLast: 3}"))
        let pruned = p.actions.filter { $0.kind == .prune }.map(\.key.subject)
        #expect(Set(pruned) == Set((3..<10).map { "v\($0)" }))
        #expect(p.actions.filter { $0.kind == .gc }.map(\.key.subject) == ["local"])
    }

    @Test func longVHDChainsAreWarnedAbout() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        var parent: String? = nil
        for i in 0..<28 {
            w.pool.vdis["chain-\(i)"] = ObservedVDI(uuid: "chain-\(i)", name: "base", srUUID: "sr1", size: 0, type: "user", cbtEnabled: false,
                                                   isSnapshot: false, snapshotOf: "", otherConfig: [:], vhdParent: parent)
            parent = "chain-\(i)"
        }
        w.pool.vdis["web-vdi-0"]!.vhdParent = parent
        let p = w.plan(w.desired())
        #expect(p.warnings.contains { $0.message.contains("VHD chain of 29 images") })
        w.pool.vdis["web-vdi-0"]!.vhdParent = "chain-0"
        #expect(!w.plan(w.desired()).warnings.contains { $0.code == .longChain })
    }

    @Test func theFingerprintFollowsThePool() {
        var w = World()
        w.vm("web", disks: ["root"])
        let a = w.plan(w.desired()).fingerprint
        #expect(a == w.plan(w.desired()).fingerprint)
        w.pool.vdis["web-vdi-0"]!.cbtEnabled = true
        #expect(a != w.plan(w.desired()).fingerprint)
    }
}

@Suite struct RetentionTests {
    let f = ISO8601DateFormatter()
    let utc = TimeZone(identifier: "UTC")!

    func days(_ list: [String]) -> [(id: String, date: Date)] { list.map { ($0, f.date(from: "\($0)T12:00:00Z")!) } }

    func kept(_ list: [String], _ r: BackupPolicySpec.Retention) -> [String] {
        let d = Retention.decide(days(list), rules: r, timeZone: utc)
        return list.filter { d[$0]!.keep }
    }

    func rules(keepLast: Int = 0, hourly: Int = 0, daily: Int = 0, weekly: Int = 0, monthly: Int = 0, yearly: Int = 0) -> BackupPolicySpec.Retention {
        BackupPolicySpec.Retention(keepLast: keepLast, hourly: hourly, daily: daily, weekly: weekly, monthly: monthly, yearly: yearly)
    }

    @Test func keepLastKeepsTheNewest() {
        #expect(kept(["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"], rules(keepLast: 2)) == ["2026-01-03", "2026-01-04"])
    }

    @Test func emptyPeriodsDoNotCount() {
        // Backups on the 1st, 2nd and 10th: daily 3 keeps all three despite the gap.
        #expect(kept(["2026-01-01", "2026-01-02", "2026-01-10"], rules(daily: 3)) == ["2026-01-01", "2026-01-02", "2026-01-10"])
    }

    @Test func theNewestInAPeriodIsKept() {
        let list = days(["2026-01-05", "2026-01-06"]) + [("late", f.date(from: "2026-01-06T22:00:00Z")!)]
        let d = Retention.decide(list, rules: rules(daily: 2), timeZone: utc)
        #expect(d["late"]!.keep && !d["2026-01-06"]!.keep && d["2026-01-05"]!.keep)
    }

    @Test func periodsCoveredByEarlierRulesDoNotUseUpCounts() {
        // keepLast 1 keeps the 14th (ISO week 3); weekly 2 then keeps the newest of weeks 2 and 1.
        let list = ["2026-01-02", "2026-01-04", "2026-01-07", "2026-01-11", "2026-01-14"]
        #expect(kept(list, rules(keepLast: 1, weekly: 2)) == ["2026-01-04", "2026-01-11", "2026-01-14"])
    }

    @Test func monthlyAndYearly() {
        let list = ["2024-06-01", "2025-03-01", "2025-11-15", "2025-12-20", "2026-01-10", "2026-01-20"]
        #expect(kept(list, rules(monthly: 2)) == ["2025-12-20", "2026-01-20"])
        #expect(kept(list, rules(yearly: 3)) == ["2024-06-01", "2025-12-20", "2026-01-20"])
    }

    @Test func theNewestIsAlwaysKept() {
        #expect(kept(["2026-01-01", "2026-01-02"], rules(monthly: 0, yearly: 0)).contains("2026-01-02"))
    }

    @Test func timeZonesMoveDayBoundaries() {
        // 23:30 UTC on the 1st is the 2nd in Berlin.
        let list = [("a", f.date(from: "2026-01-01T23:30:00Z")!), ("b", f.date(from: "2026-01-02T10:00:00Z")!)]
        let utcDecision = Retention.decide(list, rules: rules(daily: 2), timeZone: utc)
        let berlin = Retention.decide(list, rules: rules(daily: 2), timeZone: TimeZone(identifier: "Europe/Berlin")!)
        #expect(utcDecision["a"]!.keep && utcDecision["b"]!.keep)
        #expect(!berlin["a"]!.keep && berlin["b"]!.keep)
    }
}

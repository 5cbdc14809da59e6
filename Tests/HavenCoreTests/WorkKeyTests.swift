import Foundation
import HavenSpec
import Testing

@testable import HavenCore

/// The daemon's keys: a plan scoped to one (policy, VM) key plans that VM's actions and nothing
/// else; housekeeping alone cleans up; the keys' due times are the planner's own.
@Suite struct WorkKeyTests {
    func key(_ vm: String, _ policy: String = "daily") -> WorkKey { WorkKey(.backup, pool: "lab", policy: policy, vm: "\(vm)-uuid") }

    @Test func aKeyScopedPlanHoldsOnlyThatVMsActions() {
        var w = World()
        w.vm("web", disks: ["root", "data"])
        w.vm("db", disks: ["root"])
        let p = Planner(instance: w.instance).plan(desired: w.desired(), observed: ["lab": w.pool], catalog: w.catalog, now: w.now,
                                                   scope: ["daily"], keys: KeyScope(keys: [key("web")]))
        #expect(!p.actions.isEmpty)
        #expect(p.actions.allSatisfy { $0.vm?.name == "web" }, "\(p.actions.map(\.key))")
        #expect(p.actions.filter { $0.kind == .enableCBT }.count == 2)
        #expect(p.actions.filter { $0.kind == .backup }.count == 1)
    }

    @Test func cleanupIsTheHousekeepingsAlone() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.vm("old", disks: ["root"], cbt: true)
        w.backedUp("old", hoursAgo: 1)
        // 'old' left the policy: its anchor is haven's to remove.
        w.catalog.backups[0].policy = "daily"
        let desired = w.desired(replace: [("names: [web, db]", "names: [web]")])
        let planner = Planner(instance: w.instance)
        let keyed = planner.plan(desired: desired, observed: ["lab": w.pool], catalog: w.catalog, now: w.now, scope: ["daily"],
                                 keys: KeyScope(keys: [key("web")]))
        #expect(!keyed.actions.contains { $0.kind == .retireAnchor }, "a key's plan cleans nothing up")
        let hk = planner.plan(desired: desired, observed: ["lab": w.pool], catalog: w.catalog, now: w.now, keys: KeyScope(keys: [], housekeeping: true))
        #expect(hk.actions.contains { $0.kind == .retireAnchor && $0.vm?.name == "old" })
        #expect(!hk.actions.contains { $0.kind == .backup || $0.kind == .enableCBT }, "housekeeping backs nothing up: \(hk.actions.map(\.key))")
        // CBT that a policy still wants is not switched off by the housekeeping.
        #expect(!hk.actions.contains { $0.kind == .disableCBT && $0.vm?.name == "web" })
    }

    @Test func housekeepingLeavesBusyVMsAlone() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        // A snapshot of web whose intent is recorded but which is not in the inventory yet: left by a dead
        // run — or made a moment ago by a worker still running.
        w.pool.snapshots.append(ObservedSnapshot(uuid: "snap-1", name: "haven daily web", snapshotOf: "web-uuid", otherConfig: [:], disks: []))
        w.catalog.intents = [SnapshotIntent(pool: "lab", vmUUID: "web-uuid", policy: "daily", name: "haven daily web", requestedAt: w.now)]
        let planner = Planner(instance: w.instance)
        func deletes(busy: Set<WorkKey>) -> Bool {
            planner.plan(desired: w.desired(), observed: ["lab": w.pool], catalog: w.catalog, now: w.now,
                         keys: KeyScope(keys: [], housekeeping: true, busy: busy)).actions.contains { $0.kind == .deleteSnapshot }
        }
        #expect(deletes(busy: []), "a dead run's snapshot is adopted and removed")
        #expect(!deletes(busy: [key("web")]), "not while a worker reconciles web")
    }

    @Test func keysAreTimedWhenThePlannerWillPlanThem() {
        var w = World()
        w.vm("web", disks: ["root"], cbt: true)
        w.vm("db", disks: ["root"], cbt: true)
        w.backedUp("web", hoursAgo: 23)
        let desired = w.desired()
        let planner = Planner(instance: w.instance)
        let keys = planner.workKeys(desired: desired, observed: ["lab": w.pool], catalog: w.catalog, now: w.now)
        #expect(keys.map(\.key) == [key("db"), key("web")])
        #expect(keys.first { $0.key == key("db") }?.next == w.now, "never backed up: due now")
        let webDue = try! #require(keys.first { $0.key == key("web") }?.next)
        #expect(webDue == w.now.addingTimeInterval(3_600))
        // One second before, nothing is planned for web; at the due time, its backup is.
        func planned(at t: Date) -> Bool {
            planner.plan(desired: desired, observed: ["lab": w.pool], catalog: w.catalog, now: t, scope: ["daily"],
                         keys: KeyScope(keys: [key("web")])).actions.contains { $0.kind == .backup }
        }
        #expect(!planned(at: webDue.addingTimeInterval(-1)))
        #expect(planned(at: webDue))
    }

    @Test func aSuspensionInTheCatalogSuspendsThePolicy() {
        var w = World()
        w.vm("web", disks: ["root"])
        w.catalog.suspensions = [Suspension(policy: "daily", at: w.now, by: "test")]
        let p = w.plan(w.desired())
        #expect(!p.actions.contains { $0.kind == .backup || $0.kind == .enableCBT })
        #expect(Planner(instance: w.instance).workKeys(desired: w.desired(), observed: ["lab": w.pool], catalog: w.catalog, now: w.now).isEmpty)
        w.catalog.suspensions = []
        #expect(w.plan(w.desired()).actions.contains { $0.kind == .backup })
    }

    @Test func aVMWithNoDiskToReadHasNoTimer() {
        var w = World()
        w.vm("web", disks: [])
        let keys = Planner(instance: w.instance).workKeys(desired: w.desired(), observed: ["lab": w.pool], catalog: w.catalog, now: w.now)
        #expect(keys.count == 1 && keys[0].next == nil)
    }
}

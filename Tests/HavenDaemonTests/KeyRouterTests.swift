import Foundation
import HavenCore
import HavenSpec
import Testing

@testable import HavenDaemon

/// Pool events to work keys: a disk's CBT switched off by hand reaches its VM's key; a VM tagged
/// into a policy gets the key of that policy at once; a VM leaving a policy asks for housekeeping.
@Suite struct KeyRouterTests {
    static let desiredText = """
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
        metadata: {name: tagged}
        spec: {pool: lab, vms: {tags: [backup]}, repository: local, schedule: {every: 24h}}
        ---
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: paused}
        spec: {pool: lab, vms: {names: [web]}, repository: local, schedule: {every: 24h}, suspend: true}
        """

    let desired: DesiredState = {
        let r = SpecLoader.load(sources: [.init(path: "t.yaml", text: KeyRouterTests.desiredText)])
        guard let s = r.state else { fatalError("\(r.diagnostics)") }
        return s
    }()

    /// web is tagged `backup` (one disk, one anchor); db is not.
    func world() -> (ObservedPool, CatalogView) {
        var web = ObservedVM(uuid: "web-u", name: "web", powerState: "Running", tags: ["backup"],
                             disks: [ObservedDisk(userdevice: "0", device: "xvda", vdiUUID: "web-d0")])
        web.otherConfig = [:]
        let db = ObservedVM(uuid: "db-u", name: "db", powerState: "Running", tags: [], disks: [ObservedDisk(userdevice: "0", device: "xvda", vdiUUID: "db-d0")])
        let pool = ObservedPool(name: "lab", apiMajor: 2, apiMinor: 21, cbtLicensed: true, vms: [web, db],
                                snapshots: [ObservedSnapshot(uuid: "snap-u", name: "s", snapshotOf: "web-u", otherConfig: [:], disks: [])],
                                vdis: [:], srs: [:], nbdNetworks: [])
        let catalog = CatalogView(anchors: [Anchor(pool: "lab", policy: "tagged", vmUUID: "web-u", diskKey: "0", sourceVDI: "web-d0", snapshotVM: "",
                                                   snapshotVDI: "anchor-1", backupID: "b1", dataDestroyed: true)])
        return (pool, catalog)
    }

    func index() -> PoolIndex {
        let (pool, catalog) = world()
        let keys = Planner(instance: "i").workKeys(desired: desired, observed: ["lab": pool], catalog: catalog, now: Date()).map(\.key)
        return PoolIndex(pool: pool, keys: keys, catalog: catalog)
    }

    let webKey = WorkKey(.backup, pool: "lab", policy: "tagged", vm: "web-u")

    func route(_ t: TouchedObject...) -> Set<WorkKey> { KeyRouter.route(t, pool: "lab", desired: desired, index: index()) }

    @Test func aDiskChangedByHandReachesItsVMsKey() {
        #expect(route(TouchedObject(cls: .vdi, uuid: "web-d0")) == [webKey])
    }

    @Test func anAnchorDeletedReachesTheKeyThatKeepsIt() {
        var t = TouchedObject(cls: .vdi, uuid: "anchor-1")
        t.deleted = true
        #expect(route(t) == [webKey])
    }

    @Test func aSnapshotReachesItsVMsKey() {
        var t = TouchedObject(cls: .vdi, uuid: "new-snap-disk")
        t.isSnapshot = true
        t.snapshotOf = "web-d0"
        #expect(route(t) == [webKey])
        var vm = TouchedObject(cls: .vm, uuid: "snap-u")
        vm.isSnapshot = true
        vm.snapshotOf = "web-u"
        #expect(route(vm) == [webKey])
    }

    @Test func aVMTaggedIntoAPolicyGetsItsKeyAtOnce() {
        var t = TouchedObject(cls: .vm, uuid: "db-u")
        t.isRealVM = true
        t.name = "db"
        t.tags = ["backup"]
        #expect(route(t) == [WorkKey(.backup, pool: "lab", policy: "tagged", vm: "db-u")])
    }

    @Test func aVMLeavingEveryPolicyAsksForHousekeeping() {
        var t = TouchedObject(cls: .vm, uuid: "web-u")
        t.isRealVM = true
        t.name = "web"
        t.tags = []
        #expect(route(t) == [.housekeeping("lab")], "named by the suspended policy only: no key of its own")
        var gone = TouchedObject(cls: .vm, uuid: "web-u")
        gone.deleted = true
        #expect(route(gone) == [.housekeeping("lab")])
    }

    @Test func unrelatedObjectsAndSuspendedPoliciesQueueNothing() {
        var other = TouchedObject(cls: .vm, uuid: "db-u")
        other.isRealVM = true
        other.name = "db"
        #expect(route(other).isEmpty)
        #expect(route(TouchedObject(cls: .vdi, uuid: "db-d0")).isEmpty)
        #expect(route(TouchedObject(cls: .vdi, uuid: "unknown")).isEmpty)
    }
}

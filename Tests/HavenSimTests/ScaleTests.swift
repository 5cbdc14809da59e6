import Foundation
import Testing
import XenAPI

@testable import HavenSim

/// What keeps a large simulated pool linear: lookups by uuid through an index, and the state
/// written outside the database lock (a 1,000-VM reconcile used to starve every call while the
/// whole database was encoded, after each change).
@Suite struct ScaleTests {
    @Test func uuidLookupsFollowInsertsRemovalsAndChangedUUIDs() {
        let db = Database()
        db.withLock {
            let a = db.insert("VDI", ["uuid": "u-a", "name_label": "a"])
            let b = db.insert("VDI", ["uuid": "u-b"])
            let vm = db.insert("VM", ["uuid": "u-vm"])
            #expect(db.byUUID("VDI", "u-a") == a)
            #expect(db.byUUID("VDI", "u-b") == b)
            #expect(db.byUUID("VM", "u-vm") == vm)
            // Another class's uuid is not found under this class.
            #expect(db.byUUID("VDI", "u-vm") == nil)
            #expect(db.byUUID("VM", "u-a") == nil)
            db.remove(a)
            #expect(db.byUUID("VDI", "u-a") == nil)
            // A field update that changes the uuid: the old one is gone, the new one found.
            db.set(b, "uuid", "u-b2")
            #expect(db.byUUID("VDI", "u-b") == nil)
            #expect(db.byUUID("VDI", "u-b2") == b)
            // A uuid given to a new object after its first owner went.
            let a2 = db.insert("VDI", ["uuid": "u-a"])
            #expect(db.byUUID("VDI", "u-a") == a2)
            // A database loaded from a snapshot finds what it holds.
            let loaded = Database(snapshot: db.snapshot())
            loaded.withLock {
                #expect(loaded.byUUID("VDI", "u-b2") == b)
                #expect(loaded.byUUID("VDI", "u-a") == a2)
                #expect(loaded.byUUID("VDI", "u-b") == nil)
            }
        }
    }

    /// The state is encoded with the database lock free: a 1,000-VM pool's encoding took seconds,
    /// and every call waited behind it.
    @Test func theStateIsEncodedOutsideTheDatabaseLock() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        try await c.setOtherConfig(web, key: "changed", value: "yes")
        let pool = sim.pool
        // The flusher may have written the change already: mark it dirty again until this flush encodes.
        var encodedWithLockHeld: [Bool] = []
        while encodedWithLockHeld.isEmpty {
            pool.db.withLock { pool.db.markDirty() }
            pool.flush { state in
                encodedWithLockHeld.append(pool.db.heldByThisThread)
                #expect(state.objects.values.contains { $0.fields["other_config"]?.stringMap["changed"] == "yes" })
                return try JSONEncoder().encode(state)
            }
        }
        #expect(encodedWithLockHeld == [false])
    }

    /// Many changes while the flusher runs, then a stop: the state on disk is the last one, so a
    /// simulator started again on it has every object (the flush taken under the lock and written
    /// outside it must never write an older generation over a newer one).
    @Test func theStateWrittenAtStopIsTheLast() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        var snapshots: [String] = []
        for i in 0..<40 {
            let snap = try await c.snapshot(web, name: "s\(i)")
            snapshots.append(try await c.record(snap).uuid)
        }
        let last = try await c.snapshot(web, name: "last")
        try await c.setOtherConfig(last, key: "written", value: "at-the-end")
        sim.simulator.stop()
        let again = Simulator(world: try World.load(path: sim.state.appendingPathComponent("world.yaml").path),
                              stateDirectory: sim.state.appendingPathComponent("state"))
        _ = try again.start()
        defer { again.stop() }
        let pool = again.pools[0]
        pool.db.withLock {
            for uuid in snapshots { #expect(pool.db.byUUID("VM", uuid) != nil, "snapshot \(uuid) persisted") }
            let ends = pool.db.find("VM") { $0["name_label"]?.stringValue == "last" }
            #expect(ends.count == 1)
            #expect(ends.first.flatMap { pool.db.field($0, "other_config")?.stringMap["written"] } == "at-the-end")
        }
    }
}

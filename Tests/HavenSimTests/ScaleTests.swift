import Foundation
import Synchronization
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
    /// stop() racing the flusher: the loop has taken the last change and is still encoding when
    /// stop()'s flush finds the database clean. That flush must wait for the write, or the process
    /// exits (after SIGTERM) with the last change never on disk.
    @Test func aFlushThatFindsTheDatabaseCleanWaitsForTheWriteInProgress() throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let pool = sim.pool
        let file = pool.directory.appendingPathComponent("db.json")
        let encoding = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let taken = Mutex<Int64>(-1)
        // Hold a flush in its encoding, with a fresh change in its copy (again if the simulator's
        // own flusher took the change first).
        Thread {
            while taken.withLock({ $0 }) < 0 {
                pool.db.withLock { _ = pool.db.insert("message", ["uuid": .string(UUID().uuidString), "name": "last"]) }
                pool.flush { state in
                    taken.withLock { $0 = state.generation }
                    encoding.signal()
                    release.wait()
                    return try JSONEncoder().encode(state)
                }
            }
        }.start()
        encoding.wait()
        let generation = taken.withLock { $0 }
        // The second flush (what stop() does) on its own thread; what is on disk when it returns.
        let onDisk = Mutex<Int64?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            pool.flush()
            let data = try? Data(contentsOf: file)
            onDisk.withLock { $0 = data.flatMap { try? JSONDecoder().decode(DatabaseSnapshot.self, from: $0) }?.generation ?? -1 }
            done.signal()
        }.start()
        // Give a flush that does not wait the time to return early (not a limit: with the wait it
        // passes however long this takes), then let the encoding finish.
        Thread.sleep(forTimeInterval: 0.3)
        release.signal()
        done.wait()
        #expect(onDisk.withLock { $0 } == generation)
    }

    /// A simulator killed while haven read a disk over NBD: its dom0 VBD (xapi-nbd's) is in the
    /// saved state. Started again, the simulator drops it, so the VDI can be destroyed.
    @Test func nbdAttachmentsLeakedByAKillAreDroppedAtStart() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let snap = try await c.snapshot(web, name: "read over nbd")
        let pool = sim.pool
        let (vdi, vdiUUID): (String, String) = try #require(pool.db.withLock {
            pool.db.find("VDI") { $0["is_a_snapshot"]?.boolValue == true }.first.map { ($0, pool.db.field($0, "uuid")?.stringValue ?? "") }
        })
        let session = try await c.sessionReference()
        let opened = pool.nbdOpen(export: "/\(vdiUUID)?session_id=\(session)", hostAddress: pool.hosts[0].address)
        let vbd = try #require(opened.structValue?["vbd"]?.stringValue)
        #expect(!vbd.isEmpty)
        // What a kill -9 leaves: the state with the VBD, and no connection.
        pool.flush()
        sim.simulator.stop()
        let again = Simulator(world: try World.load(path: sim.state.appendingPathComponent("world.yaml").path),
                              stateDirectory: sim.state.appendingPathComponent("state"))
        _ = try again.start()
        defer { again.stop() }
        let restarted = again.pools[0]
        restarted.db.withLock {
            #expect(restarted.db.get(vbd, "VBD") == nil)
            #expect(restarted.db.field(vdi, "VBDs")?.stringArray.contains(vbd) == false)
        }
        _ = snap
    }
}

import Foundation
import Testing
import XenAPI

@testable import HavenSim

@Suite struct VMTests {
    @Test func snapshotsAreTemplatesAndDestroyLeavesTheirDisks() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, before) = try await c.vm(named: "web")
        let snap = try await c.snapshot(web, name: "s1")
        let r = try await c.record(snap)
        #expect(r.isASnapshot && r.isATemplate)
        #expect(r.snapshotOf == web)
        #expect(r.powerState == .halted)
        #expect(r.tags == before.tags)
        #expect(r.otherConfig["owner"] == "team-a")
        #expect(r.fields["snapshot_info"]?.stringMap["power-state-at-snapshot"] == "Running")
        #expect(try await c.record(web).snapshots == [snap])
        let disks = try await c.disks(of: snap)
        try await c.destroy(snap)
        for d in disks { #expect(try await c.record(d).isASnapshot, "VM.destroy leaves the VDIs") }
        #expect(try await c.record(web).snapshots.isEmpty)
    }

    @Test func powerStateRulesUseXapisErrors() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        await #expect(throws: XenAPIError(code: "VM_BAD_POWER_STATE", parameters: [web.raw, "halted, suspended", "running"])) {
            try await c.destroy(web)
        }
        await #expect(throws: XenAPIError(code: "VM_BAD_POWER_STATE", parameters: [web.raw, "halted", "running"])) {
            try await c.start(web)
        }
        try await c.cleanShutdown(web)
        #expect(try await c.record(web).powerState == .halted)
        try await c.block(web, operation: "start", reason: "replica")
        await #expect(throws: XenAPIError(code: "OPERATION_BLOCKED", parameters: [web.raw, "replica"])) { try await c.start(web) }
        try await c.unblock(web, operation: "start")
        try await c.start(web)
        let snap = try await c.snapshot(web, name: "s")
        await #expect(throws: XenAPIError(code: "VM_IS_SNAPSHOT", parameters: [snap.raw, "start"])) { try await c.start(snap) }
    }

    @Test func mapsRefuseDuplicateKeys() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        _ = try await c.call(.vmAddToOtherConfig, [web.value, "haven.owner", "a"])
        await #expect(throws: XenAPIError(code: "MAP_DUPLICATE_KEY", parameters: ["VM", "other_config", web.raw, "haven.owner"])) {
            _ = try await c.call(.vmAddToOtherConfig, [web.value, "haven.owner", "b"])
        }
        try await c.setOtherConfig(web, key: "haven.owner", value: "b")
        #expect(try await c.record(web).otherConfig["haven.owner"] == "b")
        try await c.addTag(web, "protected")
        #expect(try await c.record(web).tags.contains("protected"))
    }

    @Test func asyncCallsRunAsTasks() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let task = try await c.callAsync(.vmSnapshotLegacy, [web.value, "async-snap"])
        let result = try await c.wait(for: task)
        let ref = try XMLRPC.parseValue(result).stringValue ?? ""
        #expect(ref.hasPrefix("OpaqueRef:"))
        #expect(try await c.record(VMRef(ref)).nameLabel == "async-snap")
        let record = try await c.record(task)
        #expect(record.status == .success && record.progress == 1)
        try await c.destroy(task)

        _ = try sim.control(["command": "fault", "rule": "task-fail:VM.snapshot:SR_BACKEND_FAILURE_44"])
        let failing = try await c.callAsync(.vmSnapshotLegacy, [web.value, "x"])
        await #expect(throws: XenAPIError(code: "SR_BACKEND_FAILURE_44")) { _ = try await c.wait(for: failing) }
    }

    @Test func eventsReportAddModAndDel() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let first = try await c.events(of: ["vm"], token: "", timeout: 1)
        #expect(first.events.allSatisfy { $0.operation == .add })
        #expect(first.events.count == first.validRefCounts["vm"].map(Int.init))
        let (web, _) = try await c.vm(named: "web")
        let snap = try await c.snapshot(web, name: "watched")
        let second = try await c.events(of: ["vm"], token: first.token, timeout: 1)
        #expect(second.events.contains { $0.ref == snap.raw && $0.operation == .add && $0.snapshot?["name_label"]?.stringValue == "watched" })
        #expect(second.events.contains { $0.ref == web.raw && $0.operation == .mod })
        try await c.destroy(snap)
        let third = try await c.events(of: ["vm"], token: second.token, timeout: 1)
        #expect(third.events.contains { $0.ref == snap.raw && $0.operation == .del && $0.snapshot == nil })
        // Nothing happening: the call waits for the timeout and returns no events.
        let quiet = try await c.events(of: ["vm"], token: third.token, timeout: 0.3)
        #expect(quiet.events.isEmpty)
        await #expect(throws: XenAPIError(code: "EVENT_FROM_TOKEN_PARSE_FAILURE", parameters: ["garbage"])) {
            _ = try await c.events(of: ["vm"], token: "garbage", timeout: 0)
        }
    }

    @Test func stateSurvivesARestart() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let snap = try await c.snapshot(web, name: "kept")
        sim.simulator.stop()
        let again = Simulator(world: sim.simulator.world, stateDirectory: sim.simulator.stateDirectory)
        try again.start()
        defer { again.stop() }
        let c2 = sim.client()
        #expect(try await c2.record(snap).nameLabel == "kept")
    }

    /// A second stop once closed the listening descriptors again, by then reused by whatever the
    /// process opened next (a curl socket, a SQLite file): flaky "SSL connect error" and "disk
    /// I/O error" elsewhere in the test process. Descriptors opened between the two stops live on.
    @Test func stoppingTwiceClosesNothingElse() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        _ = try await sim.client().vm(named: "web")
        sim.simulator.stop()
        // Let the accept threads leave, so the lowest free numbers are the listeners' old ones.
        try await Task.sleep(for: .milliseconds(300))
        var opened: [Int32] = []
        for _ in 0..<16 { opened.append(open("/dev/null", O_RDONLY | O_CLOEXEC)) }
        defer { for fd in opened { close(fd) } }
        sim.simulator.stop()
        for fd in opened { #expect(fcntl(fd, F_GETFD) != -1, "descriptor \(fd) was closed by the second stop") }
    }
}

@Suite struct EventStreamTests {
    @Test func eventStreamDeliversChangesAsTheyHappen() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let start = try await c.events(of: ["vm"], token: "", timeout: 0)
        let (web, _) = try await c.vm(named: "web")
        let stream = c.eventStream(of: ["vm"], from: start.token, timeout: 2)
        let watcher = Task { () -> [XenEvent] in
            var seen: [XenEvent] = []
            for try await batch in stream {
                seen += batch.events
                if seen.contains(where: { $0.operation == .add && $0.snapshot?["name_label"]?.stringValue == "streamed" }) { break }
            }
            return seen
        }
        try await Task.sleep(for: .milliseconds(200))
        _ = try await c.snapshot(web, name: "streamed")
        let seen = try await watcher.value
        #expect(seen.contains { $0.className == "vm" && $0.operation == .add })
    }
}

import Foundation
import Testing
import XenAPI

@testable import HavenSim

/// The simulator survives hostile requests and behaves as xapi does where it used not to
/// (issue 13, defects 3, 9 and 10).
@Suite struct HostileInputTests {
    func rawPost(_ sim: SimHarness, path: String, body: [UInt8]) throws -> HTTPResponseHead {
        let http = HTTPClient(tls: .caFile(sim.endpoint.caFile))
        return try http.fetch(HTTPRequest(method: .post, url: sim.endpoint.masterURL + path), body: .bytes(body)).0
    }

    @Test func deeplyNestedUnauthenticatedRequestsAreRefusedNotFatal() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        // 1,000 levels used to overflow the server thread's stack and kill the simulator.
        let json = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"session.login_with_password\",\"params\":"
            + String(repeating: "[", count: 1_000) + String(repeating: "]", count: 1_000) + "}"
        #expect(try rawPost(sim, path: "/jsonrpc", body: Array(json.utf8)).status == 500)
        let xml = "<?xml version=\"1.0\"?><methodCall><methodName>session.login_with_password</methodName><params><param>"
            + String(repeating: "<value><array><data>", count: 5_000) + String(repeating: "</data></array></value>", count: 5_000)
            + "</param></params></methodCall>"
        #expect(try rawPost(sim, path: "/", body: Array(xml.utf8)).status == 500)
        // Still serving.
        let c = sim.client()
        #expect(try await !c.records(VMRecord.self).isEmpty)
    }

    @Test func taskFailFailsTheSynchronousCallToo() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        _ = try sim.control(["command": "fault", "rule": "task-fail:VM.snapshot:SR_BACKEND_FAILURE_44@count=1"])
        let before = try await c.records(VMRecord.self).count
        await #expect(throws: XenAPIError(code: "SR_BACKEND_FAILURE_44")) { _ = try await c.snapshot(web, name: "doomed") }
        #expect(try await c.records(VMRecord.self).count == before, "a failed task leaves nothing behind")
        // @count=1: spent; the next snapshot works.
        let snap = try await c.snapshot(web, name: "fine")
        #expect(try await c.record(snap).nameLabel == "fine")
    }

    @Test func tooBusyIsRetriedByTheClient() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let ep = sim.endpoint
        let c = XenAPIClient(
            url: ep.masterURL, credentials: XenCredentials(username: ep.username, password: ep.password), tls: .caFile(ep.caFile),
            limits: XenAPILimits(busyRetryDelays: [0.01, 0.01, 0.01]))
        try await c.login()
        _ = try sim.control(["command": "fault", "rule": "error:VM.get_all_records:TOO_BUSY@count=3"])
        #expect(try await !c.records(VMRecord.self).isEmpty, "three refusals, three resends, then an answer")
        _ = try sim.control(["command": "fault", "rule": "error:VM.get_all_records:TOO_BUSY@count=4"])
        await #expect(throws: XenAPIError(code: "TOO_BUSY")) { _ = try await c.records(VMRecord.self) }
        #expect(try await !c.records(VMRecord.self).isEmpty)
    }

    @Test func lowerCasePowerStatesAreXapisSpelling() async throws {
        let sim = try SimHarness(SimHarness.basicWorld.replacingOccurrences(of: "power: Running", with: "power: running"))
        let c = sim.client()
        let (web, record) = try await c.vm(named: "web")
        #expect(record.powerState == .running)
        let snap = try await c.snapshot(web, name: "from-running")
        #expect(try await c.record(snap).isASnapshot)
    }

    @Test func anUnknownPowerStateIsRefusedWithItsPlace() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-world-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("world.yaml")
        try SimHarness.basicWorld.replacingOccurrences(of: "power: Running", with: "power: asleep").write(to: file, atomically: true, encoding: .utf8)
        #expect { try World.load(path: file.path) } throws: { error in
            "\(error)".contains("world.yaml:17:16: VM 'web': power 'asleep' is not a power state (Halted, Paused, Running, Suspended)")
        }
    }

    @Test func nbdPurposeAddedAtRunTimeServesEveryConnection() async throws {
        let sim = try SimHarness(SimHarness.basicWorld.replacingOccurrences(of: ", purpose: [nbd]", with: ""))
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let disk = try await c.disks(of: try await c.snapshot(web, name: "nbd"))[0]
        #expect(try await c.nbdInfo(disk).isEmpty)
        // What `xe network-param-add param-name=purpose param-key=nbd` does.
        let net = try #require(try await c.records(NetworkRecord.self).keys.first)
        try await c.addPurpose(net, "nbd")
        let info = try #require(try await c.nbdInfo(disk).first)
        let certDir = sim.state.appendingPathComponent("ca")
        try FileManager.default.createDirectory(at: certDir, withIntermediateDirectories: true)
        try info.cert.write(to: certDir.appendingPathComponent("ca-cert.pem"), atomically: true, encoding: .utf8)
        let name = info.exportName.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? info.exportName
        let uri = "nbds://\(info.address):\(info.port)/\(name)?tls-certificates=\(certDir.path)"
        // The daemons restart asynchronously, as xapi's firewall change does (clients retry).
        var first = (Int32(1), "")
        for _ in 0..<100 {
            first = try run("nbdinfo", ["--size", uri])
            if first.0 == 0 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(first.0 == 0, "\(first.1)")
        // Then every connection is served, not just the first; the restart thread is long gone.
        try await Task.sleep(for: .milliseconds(500))
        for n in 0..<4 {
            let (rc, text) = try run("nbdinfo", ["--size", uri])
            #expect(rc == 0, "connection \(n + 2): \(text)")
        }
    }
}

import Foundation
import Testing
import XenAPI

@testable import HavenSim

@Suite struct SessionTests {
    @Test(arguments: [WireProtocol.jsonrpc, .xmlrpc])
    func loginLearnsCapabilities(wire: WireProtocol) async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let client = sim.client(wire: wire)
        let caps = try await client.login()
        #expect(caps.apiVersion == "2.21")
        #expect(caps.canUseCBT)
        #expect(caps.snapshotTakesIgnoreVDIs)
        #expect(await client.wire == wire)
        let vms = try await client.records(VMRecord.self)
        #expect(vms.values.filter(\.isRealVM).map(\.nameLabel).sorted() == ["db", "web"])
        #expect(vms.values.contains { $0.isControlDomain })
        await client.logout()
    }

    @Test func slaveAnswersHostIsSlaveAndTheClientFollowsToTheMaster() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let client = sim.client(hostIndex: 1)
        try await client.login()
        #expect(await client.baseURL == sim.endpoint.hosts[0].url)
    }

    @Test func wrongPasswordIsRefusedWithTheRealCode() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let client = sim.client(password: "nope")
        await #expect(throws: XenAPIError(code: "SESSION_AUTHENTICATION_FAILED", parameters: ["root", "Authentication failure"])) {
            try await client.login()
        }
    }

    @Test func pinnedFingerprintIsCheckedAndAWrongOneRefused() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let ep = sim.endpoint
        let good = XenAPIClient(url: ep.masterURL, credentials: .init(username: ep.username, password: ep.password),
                                tls: try #require(TLSPolicy.fingerprint(ep.fingerprint)))
        try await good.login()
        let wrong = String(repeating: "AB:", count: 31) + "AB"
        let bad = XenAPIClient(url: ep.masterURL, credentials: .init(username: ep.username, password: ep.password),
                               tls: try #require(TLSPolicy.fingerprint(wrong)))
        do {
            try await bad.login()
            Issue.record("a wrong pin must not connect")
        } catch let e as HTTPTransportError {
            #expect(e.isTLSVerificationFailure)
        }
        // The system trust store does not know the simulator's self-signed certificate.
        let system = XenAPIClient(url: ep.masterURL, credentials: .init(username: ep.username, password: ep.password), tls: .system)
        await #expect(throws: HTTPTransportError.self) { try await system.login() }
    }

    @Test func expiredSessionIsRenewedTransparently() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let client = sim.client()
        try await client.login()
        let first = try await client.sessionReference()
        // Sessions end after 5 s without use (as xapi's end after inactivity): the client sat idle
        // longer, then its re-login and retried call keep the new session in use.
        _ = try sim.control(["command": "fault", "rule": "session-expiry:5s"])
        try await Task.sleep(for: .milliseconds(5300))
        let vms = try await client.records(VMRecord.self)
        #expect(!vms.isEmpty)
        #expect(try await client.sessionReference() != first)
    }

    @Test func masterFailoverIsFollowed() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let client = sim.client()
        try await client.login()
        _ = try sim.control(["command": "fault", "rule": .string("failover:\(sim.endpoint.hosts[1].address)")])
        let vms = try await client.records(VMRecord.self)
        #expect(!vms.isEmpty)
        #expect(await client.baseURL == sim.endpoint.hosts[1].url)
    }

    @Test func unknownMethodsAndWrongArityGetXapisCodes() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let client = sim.client()
        try await client.login()
        await #expect(throws: XenAPIError(code: "MESSAGE_METHOD_UNKNOWN", parameters: ["VM.frobnicate"])) {
            _ = try await client.call(XenMethodForTests.make("VM.frobnicate", 1), [])
        }
        await #expect(throws: XenAPIError(code: "MESSAGE_PARAMETER_COUNT_MISMATCH", parameters: ["VM.get_record", "1", "2"])) {
            _ = try await client.call(XenMethodForTests.make("VM.get_record", 3), ["OpaqueRef:NULL", "x"])
        }
        await #expect(throws: XenAPIError(code: "HANDLE_INVALID", parameters: ["VM", "OpaqueRef:nope"])) {
            _ = try await client.record(VMRef("OpaqueRef:nope"))
        }
    }

    @Test func injectedErrorsFireTheConfiguredNumberOfTimes() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let client = sim.client()
        try await client.login()
        // Not TOO_BUSY: the client resends those itself (HostileInputTests).
        _ = try sim.control(["command": "fault", "rule": "error:VM.get_all_records:INTERNAL_ERROR@count=2"])
        for _ in 0..<2 {
            await #expect(throws: XenAPIError(code: "INTERNAL_ERROR")) { _ = try await client.records(VMRecord.self) }
        }
        #expect(try await !client.records(VMRecord.self).isEmpty)
    }
}

/// Builds methods outside the client's catalogue, to probe the simulator's dispatch.
enum XenMethodForTests {
    static func make(_ name: String, _ arity: Int) -> XenMethod {
        XenMethod.testing(name, arity)
    }
}

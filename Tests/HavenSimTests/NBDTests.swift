import Foundation
import Testing
import XenAPI

@testable import HavenSim

@Suite struct NBDTests {
    func uri(_ info: NBDServerInfo, certDir: URL) -> String {
        let name = info.exportName.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? info.exportName
        return "nbds://\(info.address):\(info.port)/\(name)?tls-certificates=\(certDir.path)"
    }

    @Test func snapshotIsReadableOverTLSWithTheCertificateXapiReturns() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let snapDisk = try await c.disks(of: try await c.snapshot(web, name: "nbd"))[0]
        let infos = try await c.nbdInfo(snapDisk)
        #expect(infos.count == 1, "a local SR is seen by one host, which has one address on the NBD network")
        let info = try #require(infos.first)
        #expect(info.port == 10809)
        #expect(info.exportName.hasPrefix("/\(try await c.record(snapDisk).uuid)?session_id=OpaqueRef:"))
        let certDir = sim.state.appendingPathComponent("ca")
        try FileManager.default.createDirectory(at: certDir, withIntermediateDirectories: true)
        try info.cert.write(to: certDir.appendingPathComponent("ca-cert.pem"), atomically: true, encoding: .utf8)
        let out = sim.state.appendingPathComponent("read.raw").path
        let (rc, text) = try run("nbdcopy", ["--no-extents", uri(info, certDir: certDir), out])
        #expect(rc == 0, "\(text)")
        let uuid = try await c.record(snapDisk).uuid
        let (same, _) = try run("cmp", [out, sim.pool.disks.path(uuid)])
        #expect(same == 0)
        let (infoRC, infoText) = try run("nbdinfo", [uri(info, certDir: certDir)])
        #expect(infoRC == 0)
        #expect(infoText.contains("is_read_only: true"))
        #expect(infoText.contains("can_multi_conn: false"))
    }

    @Test func aLoggedOutSessionCannotOpenExports() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let disk = try await c.disks(of: try await c.snapshot(web, name: "nbd"))[0]
        let info = try #require(try await c.nbdInfo(disk).first)
        await c.logout()
        let certDir = sim.state.appendingPathComponent("ca")
        try FileManager.default.createDirectory(at: certDir, withIntermediateDirectories: true)
        try info.cert.write(to: certDir.appendingPathComponent("ca-cert.pem"), atomically: true, encoding: .utf8)
        let (rc, _) = try run("nbdinfo", [uri(info, certDir: certDir)])
        #expect(rc != 0)
    }

    @Test func noNBDNetworkMeansNoNBDInfo() async throws {
        let world = SimHarness.basicWorld.replacingOccurrences(of: ", purpose: [nbd]", with: "")
        let sim = try SimHarness(world)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let disk = try await c.disks(of: web)[0]
        #expect(try await c.nbdInfo(disk).isEmpty)
        let networks = try await c.records(NetworkRecord.self)
        let net = try #require(networks.keys.first)
        try await c.addPurpose(net, "insecure_nbd")
        await #expect(throws: XenAPIError(code: "NETWORK_INCOMPATIBLE_PURPOSES", parameters: ["nbd", "insecure_nbd"])) {
            try await c.addPurpose(net, "nbd")
        }
        #expect(try await c.nbdInfo(disk).count == 1)
    }
}

import Foundation
import Testing

@testable import HavenMover

/// Tokens, pins and the secrets' descriptions.
@Suite struct SecurityTests {
    func code(_ body: () async throws -> Void) async -> MoverError.Code? {
        do {
            try await body()
            return nil
        } catch let e as MoverError {
            return e.code
        } catch {
            return .internal
        }
    }

    @Test func aConnectionWithoutAValidTokenIsRefused() async throws {
        let h = try MoverHarness()
        try h.makeDisk("xvdb", size: 65536 * 4)
        let other = try MoverCredentials.generate(name: "other")
        let cases: [(String, MoverToken)] = [
            ("empty", MoverToken(jobID: "j", scope: .all, expires: Date().addingTimeInterval(60), text: "")),
            ("garbage", MoverToken(jobID: "j", scope: .all, expires: Date().addingTimeInterval(60), text: "hvt1.x.read.1.y")),
            ("another appliance's key", other.issueToken(jobID: "j", scope: .all, expires: Date().addingTimeInterval(60))),
            ("expired", h.token(.all, expires: Date().addingTimeInterval(-5))),
        ]
        for (label, token) in cases {
            let client = MoverClient(endpoint: h.endpoint, token: token)
            let got = await code { _ = try await client.disks() }
            #expect(got == .unauthorized, "\(label)")
        }
        #expect(h.server.statistics.tokensRefused == cases.count)
        // A token whose text was altered (scope widened) no longer verifies.
        let readOnly = h.token(.read)
        let widened = readOnly.text.replacingOccurrences(of: ".read.", with: ".read,write.")
        let forged = MoverToken(jobID: readOnly.jobID, scope: .all, expires: readOnly.expires, text: widened)
        #expect(await code { _ = try await MoverClient(endpoint: h.endpoint, token: forged).disks() } == .unauthorized)
    }

    @Test func aTokenAllowsOnlyItsScope() async throws {
        let h = try MoverHarness()
        try h.makeDisk("xvdb", size: 65536 * 4)
        let before = try h.contents("xvdb")
        let reader = h.client(.read)
        #expect(await code { _ = try await reader.writeBlocks(disk: "xvdb") { _ in [UInt8](repeating: 1, count: 65536) } } == .forbidden)
        #expect(try h.contents("xvdb") == before)
        let writer = h.client(.write)
        #expect(await code { _ = try await writer.readBlocks(disk: "xvdb") { _ in } } == .forbidden)
        #expect(await code { _ = try await writer.hashRanges(disk: "xvdb") } == .forbidden)
        // Listing needs only a valid token.
        #expect(try await writer.disks().count == 1)
    }

    @Test func aClientRefusesAMoverWithAnotherCertificate() async throws {
        let h = try MoverHarness()
        let impostor = try MoverCredentials.generate(name: "impostor")
        let client = MoverClient(endpoint: MoverEndpoint(host: h.host, pin: impostor.pin), token: h.token())
        #expect(await code { _ = try await client.identify() } == .pinMismatch)
        // The token was never sent: the mover saw no HELLO at all.
        #expect(h.server.statistics.tokensRefused == 0)
    }

    @Test func pinIsTheCertificatesSHA256AsOpenSSLPrintsIt() throws {
        let c = try MoverCredentials.generate(name: "abd-pin")
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("mover-pin-\(UUID().uuidString).pem")
        defer { try? FileManager.default.removeItem(at: file) }
        try c.certificatePEM.write(to: file, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["openssl", "x509", "-in", file.path, "-noout", "-fingerprint", "-sha256", "-subject"]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(text.contains(c.pin.hex))
        #expect(text.contains("CN = abd-pin") || text.contains("CN=abd-pin"))
        #expect(CertificatePin(hex: c.pin.hex) == c.pin)
        #expect(CertificatePin(hex: c.pin.description) == c.pin)
    }

    @Test func credentialsRoundTripThroughXenstoreDataAndKeepSecretsOutOfDescriptions() throws {
        let c = try MoverCredentials.generate(name: "abd-x")
        var data = c.xenstoreData()
        data.merge(MoverNetworkConfig(ip: "127.40.0.9", netmask: "255.255.255.0", gateway: "127.40.0.1", dns: ["127.0.0.53"]).xenstoreData()) { $1 }
        #expect(Set(data.keys) == ["vm-data/haven/cert", "vm-data/haven/key", "vm-data/haven/token-key", "vm-data/haven/name",
                                   "vm-data/haven/ip", "vm-data/haven/netmask", "vm-data/haven/gateway", "vm-data/haven/dns"])
        let back = try MoverCredentials(xenstoreData: data)
        #expect(back.pin == c.pin)
        #expect(back.tokenKey == c.tokenKey)
        #expect(MoverNetworkConfig(xenstoreData: data).dns == ["127.0.0.53"])
        let token = c.issueToken(jobID: "backup web", scope: .read, expires: Date().addingTimeInterval(60))
        #expect(try MoverToken.verify(token.text, key: back.tokenKey, now: Date()).jobID == "backup web")
        for text in ["\(c)", "\(c.tokenKey)", "\(token)", String(reflecting: token.scope)] {
            #expect(!text.contains(c.tokenKey.base64))
            #expect(!text.contains("PRIVATE KEY"))
            #expect(!text.contains(token.text))
        }
        // An error about a bad token never quotes it.
        do {
            _ = try MoverToken.verify(token.text + "x", key: c.tokenKey, now: Date())
            Issue.record("a tampered token verified")
        } catch let e as MoverError {
            #expect(!e.description.contains(token.text))
        }
    }

    @Test func deniedSourcesCannotConnectButTheMoverStillConnectsOut() async throws {
        // The target accepts only "haven" (this process's default source, 127.0.0.1).
        let target = try MoverHarness(name: "abd-dr") { $0.allowedSources = ["127.0.0.1"] }
        let source = try MoverHarness(name: "abd-prod")
        let original = try source.makeDisk("xvdb", size: 65536 * 8 + 7)
        try target.emptyDisk("xvdb", size: 65536 * 8 + 7)
        // haven reaches the DR mover, the production mover cannot push into it…
        #expect(try await target.client(.read).identify().name == "abd-dr")
        var options = MoverClient.Options()
        options.resumeAttempts = 0
        let pusher = MoverClient(endpoint: source.endpoint, token: source.token(.read), options: options)
        do {
            _ = try await pusher.push(disk: "xvdb", to: target.peer(disk: "xvdb", .write))
            Issue.record("a push into a mover that refuses inbound connections worked")
        } catch let e as MoverError {
            #expect(e.code == .peerUnreachable)
            // What diag tells the user: the peer refused, not that it is slow or absent.
            #expect(e.message.contains("refused the connection"))
            #expect(e.message.contains(target.host))
        }
        #expect(target.server.statistics.connectionsRefused >= 1)
        // …but the DR mover pulls from it.
        _ = try await target.client(.write).pull(disk: "xvdb", from: source.peer(disk: "xvdb", .read))
        #expect(try target.contents("xvdb") == original)
    }
}

import Foundation
import Testing

@testable import XenAPI

/// Appliance VMs in `haven sim` run as a separate process (the binary finds itself), checked
/// from outside with openssl and Python sockets.
@Suite struct SimApplianceTests {
    func shell(_ script: String) throws -> (status: Int32, output: String) { try runTool("sh", ["-c", script]) }

    /// What a provisioning step would hand the guest, made with openssl.
    func credentials(in dir: URL, name: String) throws -> [String: String] {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let key = dir.appendingPathComponent("key.pem").path
        let cert = dir.appendingPathComponent("cert.pem").path
        let made = try runTool("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                                           "-subj", "/CN=\(name)", "-keyout", key, "-out", cert])
        #expect(made.status == 0)
        let tokenKey = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        return ["vm-data/haven/cert": try String(contentsOfFile: cert, encoding: .utf8), "vm-data/haven/key": try String(contentsOfFile: key, encoding: .utf8),
                "vm-data/haven/token-key": tokenKey, "vm-data/haven/name": name]
    }

    func served(_ address: String) throws -> String {
        try shell("openssl s_client -connect \(address):2811 </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256").output
    }

    /// Connects from `source` (as another appliance would) and tries a TLS handshake.
    func handshake(_ address: String, from source: String) throws -> Int32 {
        let script = """
            import socket, ssl, sys
            ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
            try:
                s = socket.create_connection(("\(address)", 2811), timeout=5, source_address=("\(source)", 0))
                ctx.wrap_socket(s).close()
            except OSError:
                sys.exit(3)
            """
        return try runTool("python3", ["-c", script]).status
    }

    @Test func anApplianceLeasesAnAddressRunsItsMoverAndAPoolFaultDeniesInbound() async throws {
        let s = try Scenario(
            vms: "      - {name: web, disks: [{size: 4Mi}]}", policy: "",
            poolExtra: "    templates:\n      - {name: abd, appliance: true, memory: 128Mi, disks: [{size: 4Mi}]}",
            networks: "[{name: net0, purpose: [nbd], dhcp: \"{P}.200-{P}.249\"}]")
        let c = s.client()
        let template = try await c.records(VMRecord.self).first { $0.value.nameLabel == "abd" && $0.value.isATemplate }!.key
        let vm = try await c.clone(template, name: "abd-1")
        try await c.provision(vm)
        try await c.setIsATemplate(vm, false)
        let data = try credentials(in: s.dir.appendingPathComponent("creds"), name: "abd-1")
        _ = try await c.call(XenMethod("VM.set_xenstore_data", 3), [vm.value, .structure(data.mapValues { .string($0) })])
        try await c.start(vm)
        let gm = try await c.call(XenMethod("VM.get_guest_metrics", 2), [vm.value]).stringValue ?? ""
        let networks = try await c.call(XenMethod("VM_guest_metrics.get_networks", 2), [.string(gm)])
        let address = "\(s.prefix).200"
        #expect(networks["0/ip"]?.stringValue == address)
        let expected = try shell("openssl x509 -in \(s.dir.path)/creds/cert.pem -noout -fingerprint -sha256").output
        #expect(try served(address) == expected)
        #expect(try handshake(address, from: "\(s.prefix).77") == 0)

        // The DR site's firewall: another address is refused, haven's own (127.0.0.1) is not.
        #expect(try s.simControl(["fault", "--pool", "lab", "--rule", "deny-inbound"]).stdout.contains("deny-inbound"))
        #expect(try handshake(address, from: "\(s.prefix).77") == 3)
        #expect(try served(address) == expected)
        #expect(try s.simControl(["fault", "--pool", "lab", "--rule", "deny-inbound:x"]).status == 2)
        _ = try s.simControl(["fault", "--pool", "lab", "--clear"])
        #expect(try handshake(address, from: "\(s.prefix).77") == 0)

        // The simulator killed outright: its appliances' movers go with it.
        kill(s.sim.processIdentifier, SIGKILL)
        s.sim.waitUntilExit()
        var refused = false
        for _ in 0..<200 where !refused {
            refused = try handshake(address, from: "127.0.0.1") == 3
            if !refused { usleep(25_000) }
        }
        #expect(refused)
    }
}

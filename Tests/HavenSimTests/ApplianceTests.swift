import Foundation
import HavenMover
import Testing

@testable import HavenSim
@testable import XenAPI

/// Appliance VMs: a `haven mover` process per running appliance, at its address, with the
/// disks plugged into it. Needs the built `haven` binary beside the test runner.
@Suite struct ApplianceTests {
    static let world = """
        pools:
          - name: prod
            port: 4443
            credentials: {username: root, password: s3cret}
            hosts:
              - {name: prod-host1, address: "{A}.1"}
            networks:
              - {name: net0, purpose: [nbd], dhcp: "{A}.200-{A}.201"}
            templates:
              - {name: abd, appliance: true, memory: 128Mi, disks: [{size: 4Mi}]}
              - {name: plain, memory: 128Mi, disks: [{size: 4Mi}]}
            vms:
              - name: web
                disks:
                  - {name: web-root, size: 8Mi, fill: {seed: 7}}
          - name: dr
            port: 4443
            credentials: {username: root, password: s3cret}
            hosts:
              - {name: dr-host1, address: "{A}.2"}
            networks:
              - {name: net0, purpose: [nbd]}
            templates:
              - {name: abd, appliance: true, memory: 128Mi, disks: [{size: 4Mi}]}
            vms:
              - name: web-replica
                disks:
                  - {name: replica-root, size: 8Mi}
        """

    let sim: SimHarness
    let prefix: String

    init() throws {
        sim = try SimHarness(Self.world)
        prefix = String(sim.endpoints[0].hosts[0].address.dropLast(2))
    }

    func client(_ pool: Int = 0) -> XenAPIClient {
        let ep = sim.endpoints[pool]
        return XenAPIClient(url: ep.hosts[0].url, credentials: XenCredentials(username: ep.username, password: ep.password), tls: .caFile(ep.caFile))
    }

    func template(_ c: XenAPIClient, _ name: String) async throws -> VMRef {
        let all = try await c.records(VMRecord.self)
        return all.first { $0.value.nameLabel == name && $0.value.isATemplate && !$0.value.isASnapshot }!.key
    }

    /// A clone of the appliance template with credentials (and a static address) in xenstore_data.
    func appliance(_ c: XenAPIClient, name: String, ip: String?, template: String = "abd") async throws -> (VMRef, MoverCredentials) {
        // As `xe vm-install` does it: clone, provision, no longer a template.
        let vm = try await c.clone(try await self.template(c, template), name: name)
        try await c.provision(vm)
        try await c.setIsATemplate(vm, false)
        let creds = try MoverCredentials.generate(name: name)
        var data = creds.xenstoreData()
        data.merge(MoverNetworkConfig(ip: ip, netmask: "255.255.255.0").xenstoreData()) { $1 }
        _ = try await c.call(XenMethod("VM.set_xenstore_data", 3), [vm.value, .structure(data.mapValues { .string($0) })])
        return (vm, creds)
    }

    /// What the guest agent reports: `VM_guest_metrics.networks` through `VM.guest_metrics`.
    func reportedAddress(_ c: XenAPIClient, _ vm: VMRef) async throws -> String? {
        let gm = try await c.call(XenMethod("VM.get_guest_metrics", 2), [vm.value]).stringValue ?? "OpaqueRef:NULL"
        guard gm != "OpaqueRef:NULL" else { return nil }
        let networks = try await c.call(XenMethod("VM_guest_metrics.get_networks", 2), [.string(gm)])
        return networks["0/ip"]?.stringValue
    }

    func plug(_ c: XenAPIClient, _ vdi: VDIRef, into vm: VMRef, userdevice: String, mode: String) async throws -> VBDRef {
        var spec = NewVBD(vm: vm, vdi: vdi, userdevice: userdevice)
        spec.mode = mode
        let vbd = try await c.createVBD(spec)
        try await c.plug(vbd)
        return vbd
    }

    func mover(_ ip: String, _ creds: MoverCredentials, _ scope: MoverToken.Scope = .all) -> MoverClient {
        var options = MoverClient.Options()
        options.resumeAttempts = 0
        return MoverClient(
            endpoint: MoverEndpoint(host: ip, pin: creds.pin), token: creds.issueToken(jobID: "test", scope: scope, expires: Date().addingTimeInterval(600)),
            options: options)
    }

    @Test func startingAnApplianceStartsItsMoverAtTheStaticAddressAndShutdownStopsIt() async throws {
        let c = client()
        let ip = "\(prefix).50"
        let (vm, creds) = try await appliance(c, name: "abd-1", ip: ip)
        try await c.start(vm)
        #expect(try await reportedAddress(c, vm) == ip)
        let id = try await mover(ip, creds).identify()
        #expect(id.name == "abd-1")
        #expect(id.address == "\(ip):2811")
        // Its own system disk (userdevice 0) is not offered.
        #expect(try await mover(ip, creds).disks().isEmpty)
        try await c.hardShutdown(vm)
        do {
            _ = try await mover(ip, creds).identify()
            Issue.record("the mover still answers after shutdown")
        } catch let e as MoverError {
            #expect(e.code == .connection)
        }
        // Started again (clean shutdown this time): a mover again, fresh guest metrics.
        try await c.start(vm)
        #expect(try await mover(ip, creds).identify().name == "abd-1")
        try await c.cleanShutdown(vm)
        await #expect(throws: MoverError.self) { try await mover(ip, creds).identify() }
        // A VM of an ordinary template runs no mover and reports no address.
        let (plain, _) = try await appliance(c, name: "not-an-abd", ip: "\(prefix).51", template: "plain")
        try await c.start(plain)
        #expect(try await reportedAddress(c, plain) == nil)
        await #expect(throws: MoverError.self) { try await mover("\(prefix).51", creds).identify() }
    }

    @Test func withoutAStaticAddressAnApplianceLeasesOneFromTheNetworksDHCPRange() async throws {
        let c = client()
        let (a, credsA) = try await appliance(c, name: "abd-a", ip: nil)
        let (b, _) = try await appliance(c, name: "abd-b", ip: nil)
        let (third, _) = try await appliance(c, name: "abd-c", ip: nil)
        try await c.start(a)
        try await c.start(b)
        let ipA = try await reportedAddress(c, a)
        let ipB = try await reportedAddress(c, b)
        #expect(Set([ipA, ipB]) == ["\(prefix).200", "\(prefix).201"])
        #expect(try await mover(ipA!, credsA).identify().name == "abd-a")
        // The range is used up: the third boots without an address.
        try await c.start(third)
        #expect(try await reportedAddress(c, third) == nil)
        // A restart keeps the lease; destroying the VM gives it back.
        try await c.hardShutdown(a)
        try await c.start(a)
        #expect(try await reportedAddress(c, a) == ipA)
        try await c.hardShutdown(a)
        try await c.destroy(a)
        try await c.hardShutdown(third)
        try await c.start(third)
        #expect(try await reportedAddress(c, third) == ipA)
    }

    @Test func aPluggedDiskIsVisibleToTheMoverWithTheBytesXapiExportsAndItsWritesAreTracked() async throws {
        let c = client()
        let ip = "\(prefix).52"
        let (vm, creds) = try await appliance(c, name: "abd-disk", ip: ip)
        try await c.start(vm)
        let (web, _) = try await c.vm(named: "web")
        let vdi = try await c.disks(of: web)[0]
        let vbd = try await plug(c, vdi, into: vm, userdevice: "1", mode: "RW")
        let disks = try await mover(ip, creds).disks()
        #expect(disks == [MoverDisk(name: "xvdb", size: 8 << 20)])
        let collector = ByteBox()
        _ = try await mover(ip, creds).readBlocks(disk: "xvdb") { b in
            collector.bytes += b.isZero ? [UInt8](repeating: 0, count: 65536) : b.bytes
        }
        let exported = ByteBox()
        try await c.exportRawVDI(vdi) { exported.bytes.append(contentsOf: $0) }
        #expect(collector.bytes == exported.bytes)

        // Writes through the mover are what CBT reports next.
        try await c.enableCBT(vdi)
        let before = try await c.snapshot(vdi)
        let written: [Int64] = [3, 10, 11, 127]
        _ = try await mover(ip, creds).writeBlocks(disk: "xvdb", bitmap: ChangedBlocks(blocks: written)) { index in
            [UInt8](repeating: UInt8(index), count: 65536)
        }
        let after = try await c.snapshot(vdi)
        let changed = try ChangedBlocks(base64: try await c.listChangedBlocks(from: before, to: after))
        #expect(changed.blocks(in: BlockRange(first: 0, count: 128)) == written)
        let afterWrite = ByteBox()
        try await c.exportRawVDI(vdi) { afterWrite.bytes.append(contentsOf: $0) }
        #expect(Array(afterWrite.bytes[(10 * 65536)..<(11 * 65536)]) == [UInt8](repeating: 10, count: 65536))

        try await c.unplug(vbd)
        #expect(try await mover(ip, creds).disks().isEmpty)
    }

    @Test func denyInboundRefusesOtherAppliancesWhileTheDRMoverStillConnectsOut() async throws {
        let prod = client(0)
        let dr = client(1)
        let prodIP = "\(prefix).53"
        let drIP = "\(prefix).54"
        let (prodVM, prodCreds) = try await appliance(prod, name: "abd-prod", ip: prodIP)
        let (drVM, drCreds) = try await appliance(dr, name: "abd-dr", ip: drIP)
        try await prod.start(prodVM)
        try await dr.start(drVM)
        let (web, _) = try await prod.vm(named: "web")
        let source = try await prod.disks(of: web)[0]
        _ = try await plug(prod, source, into: prodVM, userdevice: "1", mode: "RO")
        let (replica, _) = try await dr.vm(named: "web-replica")
        let target = try await dr.disks(of: replica)[0]
        _ = try await plug(dr, target, into: drVM, userdevice: "2", mode: "RW")
        let prodPeer = MoverPeer(endpoint: MoverEndpoint(host: prodIP, pin: prodCreds.pin),
                                 token: prodCreds.issueToken(jobID: "sync", scope: .read, expires: Date().addingTimeInterval(600)), disk: "xvdb")
        let drPeer = MoverPeer(endpoint: MoverEndpoint(host: drIP, pin: drCreds.pin),
                               token: drCreds.issueToken(jobID: "sync", scope: .write, expires: Date().addingTimeInterval(600)), disk: "xvdc")
        #expect(try await mover(prodIP, prodCreds).probe(drPeer).name == "abd-dr")
        // The source disk is plugged read-only: the mover reads it, and refuses to write it.
        do {
            _ = try await mover(prodIP, prodCreds).writeBlocks(disk: "xvdb", range: BlockRange(first: 0, count: 1)) { _ in [UInt8](repeating: 9, count: 65536) }
            Issue.record("a disk plugged RO was written")
        } catch let e as MoverError {
            #expect(e.code == .forbidden)
        }

        _ = try Simulator.control(stateDirectory: sim.state.appendingPathComponent("state"), pool: "dr", ["command": "fault", "rule": "deny-inbound"])
        // haven still reaches the DR appliance; the production appliance does not.
        #expect(try await mover(drIP, drCreds).identify().name == "abd-dr")
        do {
            _ = try await mover(prodIP, prodCreds, .read).push(disk: "xvdb", to: drPeer)
            Issue.record("a push into a site that denies inbound connections worked")
        } catch let e as MoverError {
            #expect(e.code == .peerUnreachable)
            #expect(e.message.contains(drIP))
        }
        // The DR appliance pulls instead: the replica's disk ends equal to the source's.
        _ = try await mover(drIP, drCreds, .write).pull(disk: "xvdc", from: prodPeer)
        let want = ByteBox()
        try await prod.exportRawVDI(source) { want.bytes.append(contentsOf: $0) }
        let got = ByteBox()
        try await dr.exportRawVDI(target) { got.bytes.append(contentsOf: $0) }
        #expect(got.bytes == want.bytes)

        _ = try Simulator.control(stateDirectory: sim.state.appendingPathComponent("state"), pool: "dr", ["command": "fault-clear"])
        #expect(try await mover(prodIP, prodCreds).probe(drPeer).name == "abd-dr")
    }
}

import Foundation
import HavenCatalog
import HavenCore
import HavenEngine
import HavenMover
import Testing
import XenAPI

/// The AppliancePool lease against an in-process `haven sim` whose appliance template runs a
/// real `haven mover` per started VM (the built `haven` binary beside the test runner).
@Suite struct ApplianceLeaseTests {
    static let world = """
        pools:
          - name: lab
            port: 4443
            credentials: {username: root, password: engine-pw}
            hosts:
              - {name: h1, address: "{A}.1"}
            srs: [{name: Local storage, type: ext, size: 64Gi}]
            networks: [{name: net0, purpose: [nbd], dhcp: "{A}.200-{A}.249"}]
            templates:
              - {name: haven-abd, appliance: true, memory: 128Mi, disks: [{size: 4Mi}]}
            vms:
              - name: web
                power: Running
                disks: [{name: web-root, size: 4Mi, fill: {seed: 1}}]
        """

    func appliancePool(_ h: EngineHarness, addresses: String, dhcp: Bool, max: Int) -> String {
        """
        ---
        apiVersion: haven/v1
        kind: AppliancePool
        metadata: {name: abd}
        spec:
          pool: lab
          template: haven-abd
          sr: Local storage
          network: net0
          addresses: \(addresses)
          netmask: 255.255.255.0
          dhcpFallback: \(dhcp)
          max: \(max)
        """
    }

    /// Appliance VMs on the pool (marked by haven), by uuid.
    func appliancesOnPool(_ h: EngineHarness) async throws -> [String: VMRecord] {
        let c = h.client()
        let all = try await c.records(VMRecord.self)
        await c.logout()
        var out: [String: VMRecord] = [:]
        for (_, vm) in all where vm.isRealVM && vm.otherConfig["haven.role"] == "appliance" { out[vm.uuid] = vm }
        return out
    }

    /// The mover at the leased address answers: TLS with the pin haven recorded, a token signed with the key in haven's state directory.
    func identify(_ h: EngineHarness, _ a: ApplianceInfo) async throws -> MoverIdentity {
        let keyFile = h.dir.appendingPathComponent("state/appliances/lab/\(a.uuid).key")
        let attributes = try FileManager.default.attributesOfItem(atPath: keyFile.path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600, "the token key is readable by haven's user only")
        let key = try MoverTokenKey(base64: try String(contentsOf: keyFile, encoding: .utf8))
        let client = MoverClient(endpoint: MoverEndpoint(host: a.address, pin: try #require(CertificatePin(hex: a.pin))),
                                 token: MoverToken.issue(jobID: "test", scope: .read, expires: Date().addingTimeInterval(60), key: key))
        return try await client.identify()
    }

    @Test func fiveConcurrentLeasesWithThreeStaticAddressesAndTheNextRunReusesThem() async throws {
        let h = try EngineHarness(world: Self.world)
        let extra = appliancePool(h, addresses: "[\(h.prefix).50-\(h.prefix).52]", dhcp: true, max: 5)
        let engine = try h.engine(try h.desired(extra: extra))
        let leases = engine.applianceLeases()
        let got = try await withThrowingTaskGroup(of: ApplianceLease.self) { g in
            for _ in 0..<5 { g.addTask { try await leases.lease("abd") } }
            var all: [ApplianceLease] = []
            for try await l in g { all.append(l) }
            return all
        }
        let infos = got.map(\.appliance)
        #expect(Set(infos.map(\.uuid)).count == 5, "one appliance per concurrent transfer")
        #expect(Set(infos.map(\.address)).count == 5, "no address used twice: \(infos.map(\.address))")
        #expect(infos.filter(\.isStatic).map(\.address).sorted() == ["\(h.prefix).50", "\(h.prefix).51", "\(h.prefix).52"])
        let dhcp = infos.filter { !$0.isStatic }.map(\.address)
        #expect(dhcp.count == 2)
        #expect(dhcp.allSatisfy { $0.hasPrefix("\(h.prefix).2") && Int($0.split(separator: ".").last!)! >= 200 }, "\(dhcp)")
        // The pool agrees: five marked appliances whose guests report those addresses; each is in the inventory and the catalog.
        let onPool = try await appliancesOnPool(h)
        #expect(onPool.count == 5)
        #expect(onPool.values.allSatisfy { $0.powerState == .running && $0.otherConfig["haven.appliance-pool"] == "abd" && $0.otherConfig["haven.owner"] == engine.instance })
        let view = try engine.catalog.view()
        #expect(Set(view.inventory.filter { $0.role == "appliance" }.map(\.uuid)) == Set(onPool.keys))
        #expect(view.inventory.filter { $0.role == "appliance-disk" }.count == 5)
        #expect(view.appliances.count == 5 && view.appliances.allSatisfy { $0.pin.hasPrefix("sha256:") })
        #expect(view.leases.count == 5, "each lease is recorded: in use")
        #expect(!view.appliances.contains { $0.pin.contains(try! String(contentsOf: h.dir.appendingPathComponent("state/appliances/lab/\($0.uuid).key"), encoding: .utf8)) })
        for a in infos {
            let id = try await identify(h, a)
            #expect(id.name == a.name)
        }
        for l in got { await leases.release(l) }
        #expect(try engine.catalog.view().leases.isEmpty)
        await engine.logout()

        // The next run: five at once again, and not one VM is created.
        let again = try h.engine(try h.desired(extra: extra))
        let second = again.applianceLeases()
        let reused = try await withThrowingTaskGroup(of: ApplianceLease.self) { g in
            for _ in 0..<5 { g.addTask { try await second.lease("abd") } }
            var all: [ApplianceLease] = []
            for try await l in g { all.append(l) }
            return all
        }
        #expect(Set(reused.map(\.appliance.uuid)) == Set(infos.map(\.uuid)))
        #expect(try await appliancesOnPool(h).count == 5)
        for l in reused { await second.release(l) }
        await again.logout()
        #expect(h.openSessions == 0)
    }

    @Test func atMaxTheNextTransferWaitsForOneToBeGivenBack() async throws {
        let h = try EngineHarness(world: Self.world)
        let engine = try h.engine(try h.desired(extra: appliancePool(h, addresses: "[\(h.prefix).60-\(h.prefix).69]", dhcp: false, max: 2)))
        let leases = engine.applianceLeases()
        let first = try await leases.lease("abd")
        let second = try await leases.lease("abd")
        let waiting = Task { try await leases.lease("abd") }
        // The third cannot have one while both are held: it is still waiting after the pool was asked again.
        _ = try await appliancesOnPool(h)
        #expect(try await appliancesOnPool(h).count == 2)
        await leases.release(first)
        let third = try await waiting.value
        #expect(third.appliance.uuid == first.appliance.uuid, "the one given back is reused")
        #expect(try await appliancesOnPool(h).count == 2, "no third VM")
        await leases.release(second)
        await leases.release(third)
        await engine.logout()
    }

    @Test func aHostsManagementAddressIsNeverHandedOut() async throws {
        let h = try EngineHarness(world: Self.world)
        // The first host's PIF has prefix.1: a list that includes it must skip it.
        let engine = try h.engine(try h.desired(extra: appliancePool(h, addresses: "[\(h.prefix).1-\(h.prefix).2]", dhcp: false, max: 2)))
        let leases = engine.applianceLeases()
        let one = try await leases.lease("abd")
        #expect(one.appliance.address == "\(h.prefix).2")
        let waiting = Task { try await leases.lease("abd") }
        await leases.release(one)
        #expect(try await waiting.value.appliance.uuid == one.appliance.uuid, "no second appliance on the host's address")
        await engine.logout()
    }

    @Test func anAddressAnotherVMReportsIsNeverHandedOut() async throws {
        let h = try EngineHarness(world: Self.world)
        // A VM of the user's, made by hand from the same template, holds .70.
        let c = h.client()
        let template = try await c.records(VMRecord.self).first { $0.value.nameLabel == "haven-abd" && $0.value.isATemplate }!.key
        let mine = try await c.clone(template, name: "users-own")
        try await c.setIsATemplate(mine, false)
        let creds = try MoverCredentials.generate(name: "users-own")
        try await c.setXenstoreData(mine, creds.xenstoreData().merging(MoverNetworkConfig(ip: "\(h.prefix).70", netmask: "255.255.255.0").xenstoreData()) { $1 })
        try await c.start(mine)
        for _ in 0..<400 where try await c.guestAddresses(mine).isEmpty { try await Task.sleep(for: .milliseconds(25)) }
        #expect(try await c.guestAddresses(mine) == ["\(h.prefix).70"])
        let before = try await c.record(mine)

        let engine = try h.engine(try h.desired(extra: appliancePool(h, addresses: "[\(h.prefix).70-\(h.prefix).71]", dhcp: false, max: 2)))
        let leases = engine.applianceLeases()
        let one = try await leases.lease("abd")
        #expect(one.appliance.address == "\(h.prefix).71")
        // .70 is taken and DHCP is off: a second appliance cannot be made; the caller waits for the first.
        let waiting = Task { try await leases.lease("abd") }
        await leases.release(one)
        #expect(try await waiting.value.appliance.uuid == one.appliance.uuid)
        // The user's VM is untouched.
        let after = try await c.record(mine)
        #expect(after.powerState == .running && after.otherConfig == before.otherConfig && after.nameLabel == "users-own")
        await engine.logout()
        await c.logout()
    }
}

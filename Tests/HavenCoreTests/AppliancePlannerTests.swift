import Foundation
import HavenSpec
import Testing

@testable import HavenCore

/// Address allocation and the planning of AppliancePools: no sockets, no clock.
@Suite struct AddressAllocatorTests {
    func ranges(_ texts: [String]) -> [AddressRange] { texts.map { try! AddressRange.parse($0).get() } }
    func ip(_ s: String) -> IPAddress { IPAddress.parse(s)! }

    func take(_ a: inout AddressAllocator, _ n: Int) -> [String] {
        (0..<n).map { i in
            switch a.next(for: "a\(i)") {
            case .staticAddress(let ip): ip.description
            case .dhcp: "dhcp"
            case .exhausted: "exhausted"
            }
        }
    }

    @Test func singlesRangesAndShorthandInTheOrderWritten() {
        var a = AddressAllocator(ranges: ranges(["10.0.0.9", "10.0.0.20-22", "10.0.1.5-10.0.1.6"]), dhcpFallback: false, taken: [:])
        #expect(take(&a, 7) == ["10.0.0.9", "10.0.0.20", "10.0.0.21", "10.0.0.22", "10.0.1.5", "10.0.1.6", "exhausted"])
    }

    @Test func cidrLeavesOutNetworkAndBroadcast() {
        var a = AddressAllocator(ranges: ranges(["192.168.7.0/30"]), dhcpFallback: true, taken: [:])
        #expect(take(&a, 3) == ["192.168.7.1", "192.168.7.2", "dhcp"])
    }

    @Test func addressesOtherVMsReportAreSkipped() {
        let taken = [ip("10.0.0.20"): "VM web", ip("10.0.0.22"): "appliance haven-abd-1"]
        var a = AddressAllocator(ranges: ranges(["10.0.0.20-23"]), dhcpFallback: false, taken: taken)
        #expect(take(&a, 3) == ["10.0.0.21", "10.0.0.23", "exhausted"])
        #expect(a.takenInList.map { "\($0.0) \($0.1)" }.first == "10.0.0.20 VM web")
    }

    @Test func exhaustionFallsBackToDHCPOnlyWhenAllowed() {
        var on = AddressAllocator(ranges: ranges(["10.0.0.5"]), dhcpFallback: true, taken: [ip("10.0.0.5"): "VM x"])
        #expect(take(&on, 2) == ["dhcp", "dhcp"])
        var off = AddressAllocator(ranges: ranges(["10.0.0.5"]), dhcpFallback: false, taken: [ip("10.0.0.5"): "VM x"])
        #expect(take(&off, 1) == ["exhausted"])
    }

    @Test func aHugeBlockIsNotWalked() {
        // A /8 with its first 1,000 addresses taken: the scan stops at the first free one.
        var taken: [IPAddress: String] = [:]
        for i in 1...1_000 { taken[IPAddress(family: .v4, value: (10 << 24) + UInt128(i))] = "VM" }
        var a = AddressAllocator(ranges: ranges(["10.0.0.0/8"]), dhcpFallback: false, taken: taken)
        #expect(take(&a, 1) == ["10.0.3.233"])
        #expect(a.staticCount == 16_777_214)
    }

    @Test func gatewayAndDNSAreNeverHandedOut() {
        let s = AppliancePoolSettings(name: "abd", pool: "lab", template: "t", sr: "s", network: "n", addresses: ["10.0.0.52/30"],
                                      netmask: "255.255.255.0", gateway: "10.0.0.1", dns: ["10.0.0.53"], dhcpFallback: false, max: 3, memory: 1 << 27)
        var a = AddressAllocator(s, taken: [:])
        #expect(take(&a, 2) == ["10.0.0.54", "exhausted"])
    }
}

extension World {
    /// An AppliancePool `abd` on lab (template haven-abd, SR Local storage, network net0) and a
    /// BackupPolicy `daily` whose transfers go through it.
    func applianceDesired(addresses: String = "[127.0.77.50-52]", dhcp: Bool = true, max: Int = 5, transfers: Int = 5, vms: String = "[web, db]",
                          declare: Bool = true) -> DesiredState {
        let pool = """
            spec:
              url: "https://xcp.example.com"
              credentials: {username: root, passwordEnv: PW}
              limits: {transfers: \(transfers)}
            """
        let ap = !declare ? "" : """
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
        return desired("  appliances: abd", extra: ap,
                       replace: [("spec: {url: \"https://xcp.example.com\", credentials: {username: root, passwordEnv: PW}}", pool),
                                 ("vms: {names: [web, db]}", "vms: {names: \(vms)}")]
                           + (declare ? [] : [("  appliances: abd", "")]))
    }

    mutating func applianceWorld(vms: Int = 5) {
        pool.templates = ["haven-abd": "tpl-uuid", "Debian 12": "deb-uuid"]
        pool.networks = ["net0", "Pool-wide network"]
        for i in 1...vms { vm("vm\(i)", disks: ["root"], cbt: true) }
    }

    /// An appliance of this haven's (marked and in the inventory).
    mutating func appliance(_ name: String, ap: String = "abd", ip: String?, reported: [String]? = nil, power: String = "Running",
                            foreign: [String] = [], owner: String? = nil) {
        let uuid = "\(name)-uuid"
        pool.appliances.append(ObservedAppliance(uuid: uuid, name: name, powerState: power, owner: owner ?? instance, appliancePool: ap,
                                                 staticAddress: ip, addresses: reported ?? [ip ?? "127.0.99.200"], foreignDisks: foreign))
        if owner == nil || owner == instance {
            catalog.inventory.append(OwnedObject(pool: "lab", cls: "VM", uuid: uuid, role: "appliance", policy: "appliance:\(ap)", vmUUID: uuid, createdAt: now))
            catalog.appliances.append(ApplianceRecord(pool: "lab", uuid: uuid, name: name, appliancePool: ap, staticAddress: ip ?? "", pin: "sha256:00",
                                                      createdAt: now))
        }
    }
}

@Suite struct AppliancePlannerTests {
    let five = "[vm1, vm2, vm3, vm4, vm5]"

    func provisions(_ p: Plan) -> [ApplianceProvision] {
        p.actions.compactMap { if case .provisionAppliance(let j) = $0.action { return j } else { return nil } }
    }
    func removals(_ p: Plan) -> [String] {
        p.actions.compactMap { if case .removeAppliance(let t) = $0.action { return t.name } else { return nil } }
    }

    @Test func fiveTransfersWithThreeStaticAddressesGetThreeStaticAndTwoDHCP() {
        var w = World()
        w.applianceWorld()
        let p = w.plan(w.applianceDesired(vms: five))
        let jobs = provisions(p)
        #expect(jobs.map(\.name) == ["haven-abd-1", "haven-abd-2", "haven-abd-3", "haven-abd-4", "haven-abd-5"])
        #expect(jobs.map { $0.address.ip ?? "dhcp" } == ["127.0.77.50", "127.0.77.51", "127.0.77.52", "dhcp", "dhcp"])
        #expect(jobs.allSatisfy { $0.templateUUID == "tpl-uuid" && $0.srUUID == "sr1" && $0.network == "net0" && $0.memory == 128 << 20 })
        #expect(jobs[0].address == ApplianceAddress(ip: "127.0.77.50", netmask: "255.255.255.0", gateway: nil, dns: []))
        #expect(jobs[4].address == ApplianceAddress(ip: nil, netmask: nil, gateway: nil, dns: []))
        let reason = p.actions.first { $0.kind == .provisionAppliance }!.reason
        #expect(reason.contains("5 planned transfers through AppliancePool abd need 5 appliances at once"), "\(reason)")
        #expect(reason.contains("0 idle exist"))
        // Every backup through the AppliancePool waits for the appliances to come up (or fail to).
        let backups = p.actions.filter { $0.kind == .backup }
        #expect(backups.count == 5)
        #expect(backups.allSatisfy { Set($0.after).isSuperset(of: p.actions.filter { $0.kind == .provisionAppliance }.map(\.key)) })
        #expect(p.appliancePools["abd"]?.max == 5)
        #expect(p.errors.isEmpty)
        #expect(p.summary.add == 10)
    }

    @Test func backupsThroughAppliancesNeedNoNBDNetworkAndReadChangedBlocksThroughThem() {
        var w = World()
        w.applianceWorld(vms: 1)
        w.pool.nbdNetworks = []
        var p = w.plan(w.applianceDesired(vms: "[vm1]"))
        var backup = p.actions.first { $0.kind == .backup }
        guard case .backup(let first)? = backup?.action else { Issue.record("no backup planned: \(p.actions.map(\.headline))"); return }
        #expect(first.method == .fullAppliance && first.appliances == "abd")
        #expect(backup?.headline.contains("full backup through an appliance of abd") == true, "\(backup?.headline ?? "")")
        #expect(!(backup?.reason.contains("no NBD network") ?? true), "\(backup?.reason ?? "")")
        // Without the AppliancePool, the same pool reads the whole disk through /export_raw_vdi.
        p = w.plan(w.applianceDesired(vms: "[vm1]", declare: false))
        backup = p.actions.first { $0.kind == .backup }
        guard case .backup(let plain)? = backup?.action else { Issue.record("no backup planned"); return }
        #expect(plain.method == .fullExport && plain.appliances == nil)
    }

    @Test func idleAppliancesAreReusedAndNoneIsMadeAgain() {
        var w = World()
        w.applianceWorld()
        for (i, ip) in ["127.0.77.50", "127.0.77.51", "127.0.77.52", nil, nil].enumerated() {
            w.appliance("haven-abd-\(i + 1)", ip: ip, reported: [ip ?? "127.0.99.\(200 + i)"])
        }
        let p = w.plan(w.applianceDesired(vms: five))
        #expect(provisions(p).isEmpty)
        #expect(removals(p).isEmpty)
        #expect(p.actions.filter { $0.kind == .backup }.count == 5)
    }

    @Test func needIsBoundedByMaxAndTheTransferLimit() {
        var w = World()
        w.applianceWorld()
        #expect(provisions(w.plan(w.applianceDesired(max: 2, vms: five))).count == 2)
        #expect(provisions(w.plan(w.applianceDesired(max: 5, transfers: 3, vms: five))).count == 3)
        #expect(provisions(w.plan(w.applianceDesired(vms: "[vm1]"))).count == 1)
        // Nothing planned through it: nothing provisioned.
        w.backedUp("vm1", hoursAgo: 1)
        #expect(provisions(w.plan(w.applianceDesired(vms: "[vm1]"))).isEmpty)
    }

    @Test func addressesReportedByOtherVMsAndHeldByAppliancesAreSkipped() {
        var w = World()
        w.applianceWorld()
        w.pool.guestAddresses = ["127.0.77.50": "web", "10.9.9.9": "db"]
        // Another AppliancePool's appliance was given .51 (its guest does not report yet).
        w.appliance("haven-other-1", ap: "other", ip: "127.0.77.51", reported: [])
        let p = w.plan(w.applianceDesired(addresses: "[127.0.77.48/29]", vms: "[vm1, vm2, vm3]"))
        #expect(provisions(p).map { $0.address.ip ?? "dhcp" } == ["127.0.77.49", "127.0.77.52", "127.0.77.53"])
    }

    @Test func exhaustedWithoutDHCPSaysWhyAndTheTransfersWait() {
        var w = World()
        w.applianceWorld()
        w.pool.guestAddresses = ["127.0.77.51": "web"]
        let p = w.plan(w.applianceDesired(addresses: "[127.0.77.50-51]", dhcp: false, max: 2, vms: "[vm1, vm2]"))
        #expect(provisions(p).map { $0.address.ip ?? "dhcp" } == ["127.0.77.50"])
        let warning = p.warnings.first { $0.code == .applianceAddressesExhausted }
        #expect(warning != nil)
        #expect(warning?.message.contains("127.0.77.51 by VM web") == true, "\(warning?.message ?? "")")
        #expect(warning?.message.contains("1 transfer waits for an appliance") == true)
        #expect(warning?.isError == false, "waiting is not an error")
        #expect(p.actions.filter { $0.kind == .backup }.count == 2, "the transfers are still planned")
    }

    @Test func aMissingTemplateIsAPlanErrorNamingIt() {
        var w = World()
        w.applianceWorld()
        w.pool.templates = ["haven-abd-v2": "x"]
        let p = w.plan(w.applianceDesired(vms: five))
        let e = p.errors.first { $0.code == .noApplianceTemplate }
        #expect(e?.message == "AppliancePool abd: pool lab has no template named 'haven-abd' (spec.template); did you mean 'haven-abd-v2'?")
        #expect(e?.resource == "AppliancePool/abd")
        #expect(provisions(p).isEmpty)
        #expect(p.actions.filter { $0.kind == .backup }.count == 5, "the rest of the plan stands")
        w.pool.templates = ["haven-abd": "x"]
        w.pool.networks = ["net1"]
        #expect(w.plan(w.applianceDesired(vms: five)).errors.map(\.code) == [.noApplianceNetwork])
    }

    @Test func loweredMaxRemovesIdleOnesFirstAndNeverOneInUse() {
        var w = World()
        w.applianceWorld()
        w.appliance("haven-abd-1", ip: "127.0.77.50", foreign: ["snap-vdi"])
        w.appliance("haven-abd-2", ip: "127.0.77.51")
        w.appliance("haven-abd-3", ip: "127.0.77.52")
        w.appliance("haven-abd-4", ip: nil)
        w.catalog.leases.append(ApplianceLeaseRecord(pool: "lab", uuid: "haven-abd-4-uuid", holder: "pid 1", since: w.now))
        w.backedUp("vm1", hoursAgo: 1)
        var p = w.plan(w.applianceDesired(max: 2, vms: "[vm1]"))
        #expect(removals(p) == ["haven-abd-3", "haven-abd-2"])
        #expect(p.actions.first { $0.kind == .removeAppliance }?.reason.contains("keeps at most 2 appliances (spec.max) and 4 exist") == true)
        // Down to one: the other two are in use; the plan says so.
        p = w.plan(w.applianceDesired(max: 1, vms: "[vm1]"))
        #expect(removals(p) == ["haven-abd-3", "haven-abd-2"])
        #expect(p.warnings.contains { $0.code == .applianceInUse && $0.message.contains("1 appliance beyond spec.max 1 is in use") })
    }

    @Test func aRemovedAppliancePoolRemovesExactlyItsAppliances() {
        var w = World()
        w.applianceWorld()
        w.appliance("haven-abd-1", ip: "127.0.77.50")
        w.appliance("haven-abd-2", ip: nil, reported: ["127.0.99.201"])
        w.appliance("haven-abd-3", ip: nil, foreign: ["x"])
        // Another haven's appliance, and one of this haven's name but not in the inventory: never touched.
        w.appliance("haven-abd-9", ip: "127.0.77.60", owner: "haven-other")
        w.pool.appliances.append(ObservedAppliance(uuid: "stray", name: "haven-abd-7", powerState: "Running", owner: w.instance,
                                                   appliancePool: "abd", staticAddress: nil, addresses: []))
        let p = w.plan(w.applianceDesired(declare: false))
        #expect(Set(removals(p)) == ["haven-abd-1", "haven-abd-2"])
        #expect(p.actions.first { $0.kind == .removeAppliance }?.reason == "AppliancePool abd is no longer declared on pool lab")
        #expect(p.warnings.contains { $0.code == .applianceInUse && $0.message.contains("haven-abd-3") })
        // With --target nothing is cleaned up.
        #expect(removals(w.plan(w.applianceDesired(declare: false), scope: ["daily"])).isEmpty)
    }

    @Test func anAddressNoLongerAllowedIsReplacedAndHaltedOnesStart() {
        var w = World()
        w.applianceWorld()
        w.appliance("haven-abd-1", ip: "127.0.77.40")
        w.appliance("haven-abd-2", ip: nil, reported: ["127.0.99.201"])
        w.appliance("haven-abd-3", ip: "127.0.77.50", power: "Halted")
        let p = w.plan(w.applianceDesired(dhcp: false, max: 3, vms: "[vm1, vm2]"))
        #expect(Set(removals(p)) == ["haven-abd-1", "haven-abd-2"])
        #expect(p.actions.contains { if case .startAppliance(let t) = $0.action { return t.name == "haven-abd-3" } else { return false } })
        // Two transfers, one kept appliance: one more, on the next free address (.50 is haven-abd-3's).
        #expect(provisions(p).map { "\($0.name) \($0.address.ip ?? "dhcp")" } == ["haven-abd-4 127.0.77.51"])
    }

    @Test func aSavedPlanComesOutTheSameAndItsFormatRoundTrips() throws {
        var w = World()
        w.applianceWorld()
        w.appliance("haven-abd-1", ip: "127.0.77.50", power: "Halted")
        let d = w.applianceDesired(vms: five)
        let p = w.plan(d)
        #expect(p.fingerprint == w.plan(d).fingerprint)
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let back = try decoder.decode(Plan.self, from: try encoder.encode(p))
        #expect(back.actions == p.actions)
        #expect(back.appliancePools == p.appliancePools)
        #expect(back.formatVersion == 3)
        // A lease taken changes what may be removed: the fingerprint sees it.
        w.catalog.leases.append(ApplianceLeaseRecord(pool: "lab", uuid: "haven-abd-1-uuid", holder: "pid 1", since: w.now))
        #expect(w.plan(d).fingerprint != p.fingerprint)
    }
}

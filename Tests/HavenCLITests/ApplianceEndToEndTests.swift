import Foundation
import Testing
import XenAPI

/// AppliancePools end to end through the binary against `haven sim`, whose appliance template
/// runs a real `haven mover` per started VM: provisioning driven by apply, reuse, a lowered max,
/// removal, `haven appliances list` and `diag` (with deny-inbound).
@Suite struct ApplianceEndToEndTests {
    static let vms = (1...5).map { i in
        """
                  - name: vm\(i)
                    power: Running
                    disks: [{name: vm\(i)-root, size: 2Mi, fill: {seed: \(30 + i)}}]
        """
    }.joined(separator: "\n") + "\n" + """
                  - name: user-app
                    power: Running
                    tags: [keep]
                    other_config: {owner-team: web}
                    networks: [net0]
                    disks: [{name: user-root, size: 2Mi, fill: {seed: 40}}]
        """
    static let templates = "    templates: [{name: haven-abd, appliance: true, memory: 128Mi, disks: [{size: 4Mi}]}]"
    static let networks = "[{name: net0, purpose: [nbd], dhcp: \"{P}.200-{P}.249\"}]"

    static func appliancePool(name: String = "abd", addresses: String = "[{P}.50-{P}.52]", dhcp: Bool = true, max: Int = 5) -> String {
        """

        ---
        apiVersion: haven/v1
        kind: AppliancePool
        metadata: {name: \(name)}
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

    static func backupPolicy(name: String = "daily", vms: String = "[vm1, vm2, vm3, vm4, vm5]", appliances: String? = "abd") -> String {
        """
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: \(name)}
        spec:
          pool: lab
          vms: {names: \(vms)}
          repository: local
        \(appliances.map { "  appliances: \($0)" } ?? "")
        """
    }

    func scenario(policy: String) throws -> Scenario {
        try Scenario(vms: Self.vms, policy: policy, poolExtra: Self.templates, networks: Self.networks, poolSpec: "limits: {transfers: 5}")
    }

    func writeConfig(_ s: Scenario, _ documents: String) throws {
        // The Pool and Repository stay as the scenario wrote them; the rest is replaced.
        let path = s.config + "/haven.yaml"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let head = text.components(separatedBy: "kind: Repository")[0]
        let repository = "kind: Repository\nmetadata: {name: local}\nspec: {path: \(s.repository)}\n---\n"
        try (head + repository + documents.replacingOccurrences(of: "{P}", with: s.prefix)).write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// haven's appliances on the pool, by name.
    func appliances(_ c: XenAPIClient) async throws -> [String: (VMRef, VMRecord)] {
        var out: [String: (VMRef, VMRecord)] = [:]
        for (ref, vm) in try await c.records(VMRecord.self) where vm.isRealVM && vm.otherConfig["haven.role"] == "appliance" { out[vm.nameLabel] = (ref, vm) }
        return out
    }

    /// What a user's VM looks like, in the fields appliance work could touch.
    func fingerprint(_ c: XenAPIClient, _ name: String) async throws -> String {
        let (ref, vm) = try await c.vmNamed(name)
        let vifs = try await c.records(VIFRecord.self).values.filter { $0.vm == ref }.map { "\($0.device)/\($0.mac)" }.sorted()
        return "\(vm.nameLabel) \(vm.powerState) \(vm.otherConfig.sorted { $0.key < $1.key }) \(vm.tags) \(vm.xenstoreData) \(vm.memoryStaticMax) \(vifs) \(vm.vbds.count)"
    }

    func listJSON(_ s: Scenario, _ extra: [String] = []) throws -> [[String: Any]] {
        let run = try s.haven(["appliances", "list", "-f", s.config, "--output", "json"] + extra)
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let obj = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
        return obj?["appliances"] as? [[String: Any]] ?? []
    }

    @Test func threeStaticAndTwoDHCPThenReusedThenMaxLoweredThenRemoved() async throws {
        let s = try scenario(policy: Self.backupPolicy() + Self.appliancePool())
        let c = s.client()
        let userBefore = try await fingerprint(c, "user-app")

        // The plan says how many the transfers need and which will be provisioned.
        var run = try s.diff()
        #expect(run.status == 1, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("5 planned transfers through AppliancePool abd need 5 appliances at once"), "\(run.stdout)")
        for (i, a) in ["static address \(s.prefix).50", "static address \(s.prefix).51", "static address \(s.prefix).52", "address from DHCP", "address from DHCP"].enumerated() {
            #expect(run.stdout.contains("+ provision appliance haven-abd-\(i + 1) (AppliancePool abd) from template haven-abd on SR Local storage, network net0, 128 MiB, \(a)"),
                    "\(run.stdout)")
        }
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")

        var onPool = try await appliances(c)
        #expect(onPool.count == 5)
        var addresses: [String: String] = [:]
        for (name, (ref, vm)) in onPool {
            #expect(vm.powerState == .running, "\(name) is kept running")
            addresses[name] = try await c.guestAddresses(ref).first
        }
        let statics = (1...3).map { addresses["haven-abd-\($0)"] }
        #expect(statics == ["\(s.prefix).50", "\(s.prefix).51", "\(s.prefix).52"])
        let dhcp = [addresses["haven-abd-4"], addresses["haven-abd-5"]].compactMap { $0 }
        #expect(dhcp.count == 2 && dhcp.allSatisfy { Int($0.split(separator: ".").last!)! >= 200 }, "\(dhcp)")
        #expect(Set(addresses.values).count == 5, "no address used twice")
        #expect(onPool["haven-abd-1"]?.1.xenstoreData["vm-data/haven/ip"] == "\(s.prefix).50")
        #expect(onPool["haven-abd-4"]?.1.xenstoreData["vm-data/haven/ip"] == nil)

        // haven appliances list: what was made, how it is addressed, idle, pinned.
        var list = try listJSON(s)
        #expect(list.count == 5)
        #expect(list.filter { $0["addressing"] as? String == "static" }.count == 3)
        #expect(list.filter { $0["addressing"] as? String == "dhcp" }.count == 2)
        #expect(list.allSatisfy { $0["use"] as? String == "idle" && ($0["pin"] as? String)?.hasPrefix("sha256:") == true && $0["power"] as? String == "Running" })
        #expect(Set(list.compactMap { $0["address"] as? String }) == Set(addresses.values))
        let text = try s.haven(["appliances", "list", "-f", s.config])
        #expect(text.stdout.contains("haven-abd-4") && text.stdout.contains("(DHCP)") && text.stdout.contains("\(s.prefix).50 (static)"), "\(text.stdout)")
        // The catalog holds the pin; the token key is in a 0600 file of the state directory, nowhere in the catalog.
        let keys = try FileManager.default.contentsOfDirectory(atPath: s.dir.path + "/state/appliances/lab")
        #expect(keys.count == 5)
        let catalog = try Data(contentsOf: s.dir.appendingPathComponent("state/catalog.sqlite"))
        for k in keys {
            let key = try String(contentsOfFile: s.dir.path + "/state/appliances/lab/" + k, encoding: .utf8)
            #expect(catalog.range(of: Data(key.utf8)) == nil, "the token key is not in the catalog")
            #expect(!run.stdout.contains(key) && !run.stderr.contains(key), "nor in apply's output")
        }

        // diag: every check passes on healthy appliances.
        let diag = try s.haven(["appliances", "diag", "lab", "-f", s.config])
        #expect(diag.status == 0, "\(diag.stdout)\(diag.stderr)")
        #expect(diag.stdout.contains("✔ haven-abd-1") && diag.stdout.contains("haven → appliance") && diag.stdout.contains("appliance → haven"), "\(diag.stdout)")
        #expect(!diag.stdout.contains("✘"), "\(diag.stdout)")

        // A catalog rebuilt from the pools knows the appliances again, with the pins of the certificates haven made.
        let pins = Dictionary(uniqueKeysWithValues: list.map { ($0["name"] as? String ?? "", $0["pin"] as? String ?? "") })
        #expect(try s.haven(["catalog", "rebuild", "-f", s.config]).status == 0)
        let rebuilt = try listJSON(s)
        #expect(Dictionary(uniqueKeysWithValues: rebuilt.map { ($0["name"] as? String ?? "", $0["pin"] as? String ?? "") }) == pins)
        #expect(try s.diff().status == 0, "after the rebuild nothing is planned for the appliances")

        // The next run: the backups are due again, and not one appliance is made.
        s.now = s.now.addingTimeInterval(25 * 3_600)
        run = try s.diff()
        #expect(run.status == 1 && !run.stdout.contains("provision appliance"), "\(run.stdout)")
        #expect(try s.apply().status == 0)
        let again = try await appliances(c)
        #expect(Set(again.values.map(\.1.uuid)) == Set(onPool.values.map(\.1.uuid)), "the same five appliances")

        // max lowered to 3: the two DHCP ones go (idle ones first, DHCP before static).
        try writeConfig(s, Self.backupPolicy() + Self.appliancePool(max: 3))
        run = try s.diff()
        #expect(run.stdout.contains("- remove appliance haven-abd-5") && run.stdout.contains("- remove appliance haven-abd-4"), "\(run.stdout)")
        #expect(run.stdout.contains("keeps at most 3 appliances (spec.max) and 5 exist"), "\(run.stdout)")
        #expect(try s.apply().status == 0)
        onPool = try await appliances(c)
        #expect(Set(onPool.keys) == ["haven-abd-1", "haven-abd-2", "haven-abd-3"])

        // A disk of the user's plugged into haven-abd-1 (as a transfer plugs a snapshot's): it is in use.
        let sr = try #require(try await c.records(SRRecord.self).first { $0.value.nameLabel == "Local storage" }?.key)
        let userDisk = try await c.createVDI(NewVDI(sr: sr, virtualSize: 1 << 20, nameLabel: "user scratch"))
        let (busyRef, _) = try #require(onPool["haven-abd-1"])
        let plugged = try await c.createVBD(NewVBD(vm: busyRef, vdi: userDisk, userdevice: "3"))
        try await c.plug(plugged)
        list = try listJSON(s)
        #expect(list.first { $0["name"] as? String == "haven-abd-1" }?["use"] as? String == "in use")

        // The AppliancePool removed: exactly its appliances go, with their disks — but never one in use; the user's VM,
        // the user's disk and the template stay.
        try writeConfig(s, Self.backupPolicy(appliances: nil))
        run = try s.diff()
        #expect(run.stdout.contains("AppliancePool abd is no longer declared on pool lab"), "\(run.stdout)")
        #expect(run.stdout.contains("appliance haven-abd-1 of AppliancePool abd, no longer declared, is in use"), "\(run.stdout)")
        #expect(!run.stdout.contains("remove appliance haven-abd-1"))
        #expect(try s.apply().status == 0)
        #expect(Set(try await appliances(c).keys) == ["haven-abd-1"])
        #expect(try await c.record(userDisk).uuid.isEmpty == false, "the user's disk is untouched")
        // Given back (the disk unplugged): the next run removes it.
        try await c.unplug(plugged)
        try await c.destroy(plugged)
        #expect(try s.diff().stdout.contains("remove appliance haven-abd-1"))
        #expect(try s.apply().status == 0)
        #expect(try await appliances(c).isEmpty)
        #expect(try await c.record(userDisk).vbds.isEmpty, "the user's disk is still there")
        #expect(try await c.records(VMRecord.self).values.contains { $0.nameLabel == "haven-abd" && $0.isATemplate })
        let leftovers = try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.role"] == "appliance-disk" }
        #expect(leftovers.isEmpty, "no appliance disk is left")
        list = try listJSON(s)
        #expect(list.isEmpty)
        run = try s.diff()
        #expect(run.status == 0, "nothing of the appliances is left to plan: \(run.stdout)")
        #expect(try await fingerprint(c, "user-app") == userBefore, "the user's VM is untouched")
        await c.logout()
    }

    @Test func theExampleIsValid() throws {
        let run = try HavenBinary.run(["validate", "examples/appliances"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("abd           on lab: up to 5 × 128Mi from 'haven-abd'"), "\(run.stdout)")
    }

    @Test func diagReportsADeniedPort() async throws {
        // Two AppliancePools used together by an abd ReplicationPolicy; each gets an appliance from a backup through it.
        let replication = """

            ---
            apiVersion: haven/v1
            kind: ReplicationPolicy
            metadata: {name: dr}
            spec:
              source: lab
              vms: {names: [vm3]}
              target: {pool: lab, sr: Local storage}
              method: abd
              appliances: {source: src, target: dst}
            """
        let docs = Self.backupPolicy(name: "a", vms: "[vm1]", appliances: "src") + "\n---\n" + Self.backupPolicy(name: "b", vms: "[vm2]", appliances: "dst")
            + Self.appliancePool(name: "src", addresses: "[{P}.60]", max: 1) + Self.appliancePool(name: "dst", addresses: "[{P}.70]", max: 1) + replication
        let s = try scenario(policy: docs)
        let c = s.client()
        // The backups and the abd replication (push, within the pool) run; the appliances stay, idle.
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try await appliances(c).count == 2, "\(run.stdout)")
        var diag = try s.haven(["appliances", "diag", "src", "-f", s.config])
        #expect(diag.status == 0, "\(diag.stdout)\(diag.stderr)")
        #expect(diag.stdout.contains("✔ haven-src-1 ↔ dst"), "\(diag.stdout)")

        // The site stops accepting inbound connections: haven still reaches its appliances, but the peer does not.
        #expect(try s.simControl(["fault", "--rule", "deny-inbound"]).status == 0)
        diag = try s.haven(["appliances", "diag", "src", "-f", s.config, "--output", "json"])
        #expect(diag.status == 2, "\(diag.stdout)\(diag.stderr)")
        let obj = try JSONSerialization.jsonObject(with: Data(diag.stdout.utf8)) as? [String: Any]
        let checks = obj?["checks"] as? [[String: Any]] ?? []
        let peer = checks.first { $0["check"] as? String == "peer" }
        #expect(peer?["status"] as? String == "failed", "\(checks)")
        #expect((peer?["detail"] as? String)?.contains("\(s.prefix).70:2811 refused the connection") == true, "\(peer ?? [:])")
        #expect((peer?["fix"] as? String)?.contains("allow TCP 2811") == true)
        #expect(checks.first { $0["check"] as? String == "haven-to-appliance" }?["status"] as? String == "ok")
        let text = try s.haven(["appliances", "diag", "src", "-f", s.config])
        #expect(text.stdout.contains("✘ haven-src-1 ↔ dst") && text.stdout.contains("fix: allow TCP 2811"), "\(text.stdout)")
        await c.logout()
    }
}

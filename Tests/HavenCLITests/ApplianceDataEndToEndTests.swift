import Foundation
import Testing
import XenAPI

/// Data through appliances, end to end through the binary against `haven sim` (whose appliance
/// VMs run a real `haven mover`): backups read by an appliance on a pool without an NBD network,
/// and ReplicationPolicy `method: abd`, push and pull, bytes compared.
@Suite struct ApplianceDataEndToEndTests {
    static let templates = "    templates: [{name: haven-abd, appliance: true, memory: 128Mi, disks: [{size: 4Mi}]}]"
    /// No network has the NBD purpose: only the appliances can read changed blocks.
    static let networks = "[{name: net0, dhcp: \"{P}.200-{P}.249\"}]"
    static let vms = """
              - name: app
                power: Running
                networks: [net0]
                disks: [{name: app-root, size: 6Mi, fill: {seed: 11, unallocated: 0.4}}]
              - name: user-app
                power: Running
                tags: [keep]
                other_config: {owner-team: web}
                networks: [net0]
                disks: [{name: user-root, size: 2Mi, fill: {seed: 40}}]
        """

    static func appliancePool(name: String = "abd", pool: String = "lab", addresses: String = "[{P}.50]", max: Int = 1) -> String {
        """
        apiVersion: haven/v1
        kind: AppliancePool
        metadata: {name: \(name)}
        spec:
          pool: \(pool)
          template: haven-abd
          sr: Local storage
          network: net0
          addresses: \(addresses)
          netmask: 255.255.255.0
          dhcpFallback: false
          max: \(max)
        """
    }

    static let backupPolicy = """
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: daily}
        spec:
          pool: lab
          vms: {names: [app]}
          schedule: {every: 24h}
          repository: local
          appliances: abd
        """

    /// What a user's VM looks like, in the fields appliance work could touch.
    func fingerprint(_ c: XenAPIClient, _ name: String) async throws -> String {
        let (ref, vm) = try await c.vmNamed(name)
        var disks: [String] = []
        for v in try await c.diskVDIs(ref) {
            let r = try await c.record(v)
            disks.append("\(r.uuid) \(r.vbds.count) \(r.otherConfig.sorted { $0.key < $1.key })")
        }
        return "\(vm.nameLabel) \(vm.powerState) \(vm.otherConfig.sorted { $0.key < $1.key }) \(vm.tags) \(vm.xenstoreData) \(vm.vbds.count) \(disks)"
    }

    /// VBDs a transfer plugged into an appliance and left there.
    func transferVBDs(_ c: XenAPIClient) async throws -> [VBDRecord] {
        try await c.records(VBDRecord.self).values.filter { $0.otherConfig["haven.role"] == "appliance-transfer-disk" }
    }

    func backupJSON(_ s: Scenario, _ id: String) throws -> [String: Any] {
        let run = try s.haven(["backups", "show", id, "-f", s.config, "--output", "json"])
        return try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any] ?? [:]
    }

    func restoreHash(_ s: Scenario, _ id: String, _ name: String) throws -> String {
        let out = s.dir.appendingPathComponent("\(name).raw").path
        let run = try s.haven(["restore", "-f", s.config, "--backup", id, "--to-file", out])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        return try s.sha(out)
    }

    @Test func aBackupThroughAnApplianceOnAPoolWithoutNBDRestoresToIdenticalBytes() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.backupPolicy + "\n---\n" + Self.appliancePool(), poolExtra: Self.templates, networks: Self.networks)
        let c = s.client()
        let userBefore = try await fingerprint(c, "user-app")
        let (app, _) = try await c.vmNamed("app")
        let source = try await c.record(try await c.diskVDIs(app)[0]).uuid

        // The plan: a full read through the AppliancePool, not over NBD (there is none).
        var backup = try #require(try s.planActions().first { $0["kind"] as? String == "backup" })
        #expect(backup["method"] as? String == "full-appliance", "\(backup)")
        #expect((backup["headline"] as? String)?.contains("full backup through an appliance of abd") == true, "\(backup)")
        var run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("read through appliance haven-abd-1 (\(s.prefix).50, xvdb)") || run.stderr.contains("read through appliance haven-abd-1 (\(s.prefix).50, xvdb)"),
                "\(run.stdout)\(run.stderr)")
        let v1Hash = try s.sha(s.diskFile(source))
        var list = try s.backups()
        #expect(list.count == 1)
        let v1 = try #require(list.first?["id"] as? String)
        #expect(try restoreHash(s, v1, "v1") == v1Hash, "the version restores to the bytes the snapshot held")
        // The snapshot's disk was taken out of the appliance again; the appliance stays, idle.
        #expect(try await transferVBDs(c).isEmpty)
        let appliances = try await c.records(VMRecord.self).values.filter { $0.isRealVM && $0.otherConfig["haven.role"] == "appliance" }
        #expect(appliances.count == 1 && appliances.first?.powerState == .running)
        #expect(appliances.first?.vbds.count == 1, "only its own disk")

        // Guest writes, a day later: CBT's changed blocks, read through the appliance.
        let written = try s.simControl(["write", "--vm", "app", "--percent", "5", "--seed", "4", "--output", "json"])
        let blocks = try #require((try JSONSerialization.jsonObject(with: Data(written.stdout.utf8)) as? [String: Any])?["blocks"] as? [Int])
        s.now = s.now.addingTimeInterval(25 * 3_600)
        backup = try #require(try s.planActions().first { $0["kind"] as? String == "backup" })
        #expect(backup["method"] as? String == "cbt-appliance", "\(backup)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        list = try s.backups()
        #expect(list.count == 2)
        let v2 = try #require(list.last?["id"] as? String)
        let shown = try backupJSON(s, v2)
        #expect(shown["kind"] as? String == "incremental")
        let read = try #require((shown["disks"] as? [[String: Any]])?.first?["readBytes"] as? Int)
        #expect(read == Set(blocks).count * 65_536, "read exactly the \(Set(blocks).count) blocks written")
        #expect(try restoreHash(s, v2, "v2") == (try s.sha(s.diskFile(source))), "the incremental restores to the disk as written")
        #expect(try restoreHash(s, v1, "v1b") == v1Hash, "the full version is untouched")
        #expect(try await transferVBDs(c).isEmpty)
        #expect(try await fingerprint(c, "user-app") == userBefore, "the user's VM is untouched")
        await c.logout()
    }

    @Test func aRunKilledWithTheDiskPluggedInLeavesNothingTheNextRunDoesNotClean() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.backupPolicy + "\n---\n" + Self.appliancePool(), poolExtra: Self.templates, networks: Self.networks)
        let c = s.client()
        let userBefore = try await fingerprint(c, "user-app")
        // Killed right after VBD.plug: the snapshot's disk stays plugged into the appliance.
        let killed = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_STEP": "appliance-disk-plugged"])
        #expect(killed.status != 0)
        let left = try await transferVBDs(c)
        #expect(left.count == 1 && left.first?.currentlyAttached == true, "\(left)")
        #expect(try s.backups().isEmpty)

        // The next run takes it out (the leftover snapshot's disk cannot go while plugged) and backs up.
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try await transferVBDs(c).isEmpty)
        #expect(try s.backups().count == 1)
        #expect(try await c.records(VMRecord.self).values.filter { $0.isASnapshot }.isEmpty, "the killed run's snapshot is gone")
        let settled = try s.diff()
        #expect(settled.status == 0, "\(settled.stdout)")
        #expect(try await fingerprint(c, "user-app") == userBefore, "the user's VM is untouched")
        await c.logout()
    }

    @Test func aConnectionToAMoverWithoutHavensTokenIsRefused() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.backupPolicy + "\n---\n" + Self.appliancePool(), poolExtra: Self.templates, networks: Self.networks)
        #expect(try s.apply().status == 0)
        let list = try s.haven(["appliances", "list", "-f", s.config, "--output", "json"])
        let obj = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [String: Any]
        let pin = try #require(((obj?["appliances"] as? [[String: Any]])?.first?["pin"] as? String)?.replacingOccurrences(of: "sha256:", with: ""))
        // TLS to the mover (its certificate is the one haven pinned), then HELLO with no token, a forged one, and one signed by another key.
        let script = """
            import socket, ssl, struct, sys, hashlib, base64, hmac, time
            ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
            def exactly(s, n):
                out = b""
                while len(out) < n:
                    got = s.recv(n - len(out))
                    if not got: break
                    out += got
                return out
            def hello(token):
                s = ctx.wrap_socket(socket.create_connection(("\(s.prefix).50", 2811), timeout=10))
                der = s.getpeercert(binary_form=True)
                if hashlib.sha256(der).hexdigest() != "\(pin)".replace(":", "").lower(): print("pin mismatch"); sys.exit(5)
                t = token.encode()
                payload = b"HVNMOVER" + struct.pack(">HHH", 1, 1, len(t)) + t
                s.sendall(struct.pack(">IB", len(payload) + 1, 1) + payload)
                head = exactly(s, 5)
                n, kind = struct.unpack(">IB", head)
                body = exactly(s, n - 1)
                code = struct.unpack(">H", body[:2])[0] if kind == 3 else -1
                closed = s.recv(1) == b""
                return kind, code, closed
            b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
            exp = str(int(time.time()) + 600)
            job = b64(b"stolen")
            mac = hmac.new(b"k" * 32, ("haven-mover-token-v1\\n" + job + "\\nread\\n" + exp).encode(), hashlib.sha256).digest()
            for token in ["", "hvt1.x.read.1.x", "hvt1." + job + ".read." + exp + "." + b64(mac)]:
                print(hello(token))
            """
        let out = try runTool("python3", ["-c", script])
        #expect(out.status == 0, "\(out.output)")
        let lines = out.output.split(separator: "\n").map(String.init)
        #expect(lines == ["(3, 3, True)", "(3, 3, True)", "(3, 3, True)"], "ERROR unauthorized and the connection closed, each time: \(out.output)")
    }

    // MARK: replication through appliances

    /// A second pool, the DR site, with its own appliance template and network (DHCP range disjoint from lab's).
    static let drPool = """
          - name: dr
            port: 4443
            credentials: {username: root, password: scenario-pw}
            templates: [{name: haven-abd, appliance: true, memory: 128Mi, disks: [{size: 4Mi}]}]
            hosts:
              - {name: d1, address: "{P}.11"}
            srs: [{name: Local storage, type: ext, size: 64Gi, default: true}]
            networks: [{name: net0, dhcp: "{P}.230-{P}.249"}]
            vms: []
        """

    static func replication(direction: String) -> String {
        """
        apiVersion: haven/v1
        kind: Pool
        metadata: {name: dr}
        spec:
          url: https://{P}.11:4443
          credentials: {username: root, passwordEnv: SCENARIO_PASSWORD}
          tls: {caFile: {SIM}/pools/dr/pki/pool-bundle.pem}
        ---
        \(appliancePool(name: "src", addresses: "[{P}.50]"))
        ---
        \(appliancePool(name: "dst", pool: "dr", addresses: "[{P}.70]"))
        ---
        apiVersion: haven/v1
        kind: ReplicationPolicy
        metadata: {name: dr}
        spec:
          source: lab
          vms: {names: [app]}
          target: {pool: dr, sr: Local storage}
          schedule: {every: 1h}
          keep: 2
          method: abd
          direction: \(direction)
          appliances: {source: src, target: dst}
        """
    }

    func setDirection(_ s: Scenario, _ direction: String) throws {
        let path = s.config + "/haven.yaml"
        let text = try String(contentsOfFile: path, encoding: .utf8)
        try text.replacingOccurrences(of: "direction: push", with: "direction: \(direction)").replacingOccurrences(of: "direction: pull", with: "direction: \(direction)")
            .write(toFile: path, atomically: true, encoding: .utf8)
    }

    func drClient(_ s: Scenario) -> XenAPIClient {
        XenAPIClient(url: "https://\(s.prefix).11:4443", credentials: .init(username: "root", password: s.password),
                     tls: .caFile(s.simState.path + "/pools/dr/pki/pool-bundle.pem"))
    }

    /// A disk's bytes as `/export_raw_vdi` serves them.
    func exported(_ c: XenAPIClient, _ vdi: VDIRef) async throws -> Data {
        final class Collector: @unchecked Sendable {
            // @unchecked: the sink is called by one transfer, sequentially.
            var data = Data()
        }
        let collector = Collector()
        try await c.exportRawVDI(vdi) { collector.data.append(contentsOf: $0) }
        return collector.data
    }

    /// The replica's disk equals the source's (which equals the snapshot just synced: nothing wrote in between).
    func expectReplicaEqualsSource(_ lab: XenAPIClient, _ dr: XenAPIClient, _ note: String) async throws {
        let (app, _) = try await lab.vmNamed("app")
        let source = try await exported(lab, try await lab.diskVDIs(app)[0])
        let (replica, record) = try await dr.vmNamed("replica-app")
        #expect(record.powerState == .halted, "\(note): the replica is not started")
        let copy = try await exported(dr, try await dr.diskVDIs(replica)[0])
        #expect(source.count == 6 << 20 && copy.count == source.count, "\(note)")
        #expect(copy == source, "\(note): the replica's bytes equal the source snapshot's")
    }

    @Test func pushAndPullGiveReplicasEqualToTheSourceAndPushFailsWhenTheTargetDeniesInbound() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.replication(direction: "push"), poolExtra: Self.templates,
                             networks: "[{name: net0, dhcp: \"{P}.200-{P}.229\"}]", otherPools: Self.drPool)
        let lab = s.client()
        let dr = drClient(s)
        let userBefore = try await fingerprint(lab, "user-app")

        // Push: the initial sync goes from haven-src-1 to haven-dst-1.
        let plan = try s.planActions()
        let sync = try #require(plan.first { $0["kind"] as? String == "replicate" })
        #expect((sync["headline"] as? String)?.contains("through appliances (push: src → dst)") == true, "\(sync)")
        var run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect((run.stdout + run.stderr).contains("push: haven-src-1 (\(s.prefix).50, xvdb) → haven-dst-1 (\(s.prefix).70, xvdb)"), "\(run.stdout)\(run.stderr)")
        try await expectReplicaEqualsSource(lab, dr, "initial push")
        #expect(try await transferVBDs(lab).count + transferVBDs(dr).count == 0)

        // Pull: the next sync's changed blocks fetched by haven-dst-1 from haven-src-1.
        let written = try s.simControl(["write", "--vm", "app", "--percent", "5", "--seed", "8", "--output", "json"])
        let blocks = try #require((try JSONSerialization.jsonObject(with: Data(written.stdout.utf8)) as? [String: Any])?["blocks"] as? [Int])
        try setDirection(s, "pull")
        s.now = s.now.addingTimeInterval(3_700)
        let pulled = try #require(try s.planActions().first { $0["kind"] as? String == "replicate" })
        #expect((pulled["headline"] as? String)?.contains("sync replica replica-app on dr: changed blocks") == true, "\(pulled)")
        #expect((pulled["headline"] as? String)?.contains("through appliances (pull: dst ← src)") == true, "\(pulled)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect((run.stdout + run.stderr).contains("disk 0: \(Set(blocks).count) of 96 blocks of 64 KiB, pull:"), "only the changed blocks: \(run.stdout)\(run.stderr)")
        #expect((run.stdout + run.stderr).contains("pull: haven-dst-1 (\(s.prefix).70, xvdb) ← haven-src-1 (\(s.prefix).50, xvdb)"), "\(run.stdout)\(run.stderr)")
        try await expectReplicaEqualsSource(lab, dr, "incremental pull")

        // The DR site accepts no inbound connection: push fails, saying why and what to do; pull works.
        #expect(try s.simControl(["fault", "--pool", "dr", "--rule", "deny-inbound"]).status == 0)
        #expect(try s.simControl(["write", "--vm", "app", "--percent", "5", "--seed", "9"]).status == 0)
        try setDirection(s, "push")
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 2, "\(run.stdout)\(run.stderr)")
        let said = run.stdout + run.stderr
        #expect(said.contains("push of disk 0 failed: \(s.prefix).70:2811 refused the connection from haven-src-1 (\(s.prefix).50)"), "\(said)")
        #expect(said.contains("replicate with direction: pull"), "\(said)")
        #expect(try await transferVBDs(lab).count + transferVBDs(dr).count == 0, "a failed sync takes its disks out too")
        try setDirection(s, "pull")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await expectReplicaEqualsSource(lab, dr, "pull under deny-inbound")
        #expect(try await transferVBDs(lab).count + transferVBDs(dr).count == 0)

        // The source's CBT anchor lost: no record of what changed, so both movers hash their disk and only the runs that differ travel.
        for (ref, vdi) in try await lab.records(VDIRecord.self) where vdi.otherConfig["haven.role"] == "cbt-anchor" { try await lab.destroy(ref) }
        let clustered = try s.simControl(["write", "--vm", "app", "--percent", "2", "--pattern", "clustered", "--seed", "10", "--output", "json"])
        let touched = try #require((try JSONSerialization.jsonObject(with: Data(clustered.stdout.utf8)) as? [String: Any])?["blocks"] as? [Int])
        let runs = Set(touched.map { $0 / 16 }).count
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect((run.stdout + run.stderr).contains("resync by comparison: \(runs) of 6 runs of 16 blocks differ"), "\(run.stdout)\(run.stderr)")
        #expect(runs < 6)
        try await expectReplicaEqualsSource(lab, dr, "resync by comparison")
        let settled = try s.diff()
        #expect(settled.status == 0, "\(settled.stdout)")
        #expect(try await fingerprint(lab, "user-app") == userBefore, "the user's VM is untouched")
        await lab.logout()
        await dr.logout()
    }
}

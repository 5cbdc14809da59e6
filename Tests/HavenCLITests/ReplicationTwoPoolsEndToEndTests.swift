import Foundation
import Testing
import XenAPI

/// ReplicationPolicy end to end across two simulated pools, through the binary: the source VM on
/// pool `lab`, its replica on pool `dr` (other hosts, other credentials, other SRs, networks named
/// differently and mapped by `networkMap`). Disks are compared through each pool's own
/// `/export_raw_vdi`.
@Suite struct ReplicationTwoPoolsEndToEndTests {
    static let labNetworks = "[{name: net0, purpose: [nbd]}, {name: lab-storage}]"
    static let labSRs = "[{name: Local storage, type: ext, size: 64Gi, default: true}]"
    static let vms = """
              - name: web
                power: Running
                networks: [net0, lab-storage]
                disks: [{name: web-root, size: 6Mi, fill: {seed: 121}}, {name: web-data, size: 4Mi, fill: {seed: 122, unallocated: 0.5}}]
              - name: db
                power: Running
                networks: [net0]
                disks: [{name: db-root, size: 4Mi, fill: {seed: 123}}]
        """
    /// The DR pool: its own hosts (prefix.3-4), user `admin`, two SRs (the replica goes on the
    /// one that is not the default), networks that share no name with lab's, a VM of the user's.
    static let drPool = """
          - name: dr
            port: 4443
            credentials: {username: admin, password: "{PW}"}
            hosts:
              - {name: dr1, address: "{P}.3"}
              - {name: dr2, address: "{P}.4"}
            srs: [{name: DR storage, type: ext, size: 64Gi, default: true}, {name: DR fast, type: ext, size: 64Gi}]
            networks: [{name: dr-lan}, {name: dr-storage}]
            vms:
              - name: dr-app
                power: Running
                networks: [dr-lan]
                disks: [{name: dr-app-root, size: 4Mi, fill: {seed: 124}}]
        """

    static func config(keep: Int = 2, networkMap: String = "{net0: dr-lan, lab-storage: dr-storage}", extra: String = "") -> String {
        """
        apiVersion: haven/v1
        kind: Pool
        metadata: {name: dr}
        spec:
          url: https://{P}.4:4443
          credentials: {username: admin, passwordEnv: SCENARIO_PASSWORD}
          tls: {caFile: {SIM}/pools/dr/pki/pool-bundle.pem}
        ---
        apiVersion: haven/v1
        kind: ReplicationPolicy
        metadata: {name: offsite}
        spec:
          source: lab
          vms: {names: [web]}
          target: {pool: dr, sr: DR fast, networkMap: \(networkMap)}
          schedule: {every: 1h}
          keep: \(keep)
        \(extra)
        """
    }

    static func scenario(keep: Int = 2, networkMap: String = "{net0: dr-lan, lab-storage: dr-storage}", extra: String = "") throws -> Scenario {
        try Scenario(vms: vms, policy: config(keep: keep, networkMap: networkMap, extra: extra), networks: labNetworks, srs: labSRs, otherPools: drPool)
    }

    /// SHA-256 of a disk as its pool's `/export_raw_vdi` streams it.
    static func exported(_ s: Scenario, _ c: XenAPIClient, _ vdi: VDIRef) async throws -> String {
        let file = s.dir.appendingPathComponent("export-\(UUID().uuidString).raw")
        FileManager.default.createFile(atPath: file.path, contents: nil)
        let out = try FileHandle(forWritingTo: file)
        try await c.exportRawVDI(vdi) { buf in out.write(Data(buf)) }
        try out.close()
        defer { try? FileManager.default.removeItem(at: file) }
        return try sha256(of: file.path)
    }

    static func replicas(_ dr: XenAPIClient) async throws -> [(VMRef, VMRecord)] {
        try await dr.records(VMRecord.self).filter { $0.value.isRealVM && $0.value.nameLabel == "replica-web" }.map { ($0.key, $0.value) }
    }

    /// Every replica disk equals the source VM's disk of the same position (lab's export against dr's export).
    static func expectEqual(_ s: Scenario, lab: XenAPIClient, dr: XenAPIClient, _ note: String) async throws {
        let (web, _) = try await lab.vmNamed("web")
        let (rep, _) = try #require(try await replicas(dr).first, "\(note): a replica on dr")
        let a = try await lab.diskVDIs(web)
        let b = try await dr.diskVDIs(rep)
        #expect(a.count == b.count && a.count == 2, "\(note)")
        for (i, (x, y)) in zip(a, b).enumerated() {
            let sx = try await exported(s, lab, x), sy = try await exported(s, dr, y)
            #expect(sx == sy, "\(note): disk \(i)")
        }
    }

    /// Disks, power state and haven marks of every VM and snapshot of the user's on one pool.
    static func userState(_ s: Scenario, _ c: XenAPIClient, pool: String) async throws -> [String: String] {
        var out: [String: String] = [:]
        for (ref, vm) in try await c.records(VMRecord.self) where vm.otherConfig["haven.owner"] == nil && !vm.nameLabel.hasPrefix("replica-")
            && (vm.isRealVM || vm.isASnapshot) {
            for vdi in try await c.diskVDIs(ref) {
                let uuid = try await c.record(vdi).uuid
                out["\(vm.uuid)/\(uuid)"] = try s.sha(s.diskFile(uuid, pool: pool))
            }
            out[vm.uuid] = "\(vm.nameLabel) \(vm.powerState.rawValue) \(vm.otherConfig.filter { $0.key.hasPrefix("haven.") }) \(vm.blockedOperations)"
        }
        return out
    }

    @Test func initialSyncIncrementalsGuardFailoverAndFailbackAcrossPools() async throws {
        let s = try Self.scenario()
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        // The user's own snapshots on both pools: never touched.
        _ = try await lab.snapshot(try await lab.vmNamed("db").0, name: "db before upgrade")
        _ = try await dr.snapshot(try await dr.vmNamed("dr-app").0, name: "dr-app nightly")
        let labUsers = try await Self.userState(s, lab, pool: "lab")
        let drUsers = try await Self.userState(s, dr, pool: "dr")

        var run = try s.diff()
        #expect(run.status == 1, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("create replica replica-web on dr"), "\(run.stdout)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try await lab.records(VMRecord.self).values.allSatisfy { $0.nameLabel != "replica-web" }, "nothing replicated onto the source pool")
        let (rep, rec) = try #require(try await Self.replicas(dr).first)
        #expect(rec.otherConfig["haven.role"] == "replica" && !rec.isATemplate && rec.powerState == .halted)
        #expect(rec.blockedOperations["start"]?.contains("haven failover offsite web") == true)
        // Disks on the named SR of the target pool, VIFs on the mapped networks.
        let srs = try await dr.records(SRRecord.self)
        for vdi in try await dr.diskVDIs(rep) { #expect(srs[try await dr.record(vdi).sr]?.nameLabel == "DR fast") }
        let nets = try await dr.records(NetworkRecord.self)
        var mapped: [String] = []
        for vif in rec.vifs { mapped.append(nets[try await dr.record(vif).network]?.nameLabel ?? "?") }
        #expect(mapped.sorted() == ["dr-lan", "dr-storage"], "\(mapped)")
        try await Self.expectEqual(s, lab: lab, dr: dr, "initial sync")
        #expect(try s.diff().status == 0, "in sync right after")

        // Three incrementals after guest writes.
        for i in 1...3 {
            #expect(try s.simControl(["write", "--vm", "web", "--percent", "4", "--seed", String(140 + i)]).status == 0)
            s.now = s.now.addingTimeInterval(3_700)
            let actions = try s.planActions().filter { $0["kind"] as? String == "replicate" }
            #expect(actions.count == 1)
            #expect((actions.first?["headline"] as? String)?.contains("sync replica replica-web on dr: changed blocks") == true, "\(actions)")
            run = try s.apply()
            #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
            try await Self.expectEqual(s, lab: lab, dr: dr, "incremental \(i)")
        }
        let points = try await dr.records(VMRecord.self).values.filter { $0.isASnapshot && $0.snapshotOf == rep }
        #expect(points.count == 2, "keep: 2 restore points on dr")
        let status = try s.haven(["status", "-f", s.config])
        #expect(status.stdout.contains("replica-web"), "\(status.stdout)")

        // Started by hand through XenAPI on dr, written, stopped: detected and rewritten.
        try await dr.unblock(rep, operation: "start")
        try await dr.start(rep)
        #expect(try s.simControl(["write", "--vm", "replica-web", "--percent", "6", "--seed", "177"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.diff()
        #expect(run.stdout.contains("replica replica-web of web is running"), "\(run.stdout)")
        try await dr.hardShutdown(rep)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("resync: the replica's disk 0 was written since the last sync"), "\(run.stdout)")
        try await Self.expectEqual(s, lab: lab, dr: dr, "after the resync")
        #expect(try await dr.record(rep).blockedOperations["start"] != nil, "blocked again")

        // Failover on dr, guest writes there, fail-back onto the halted original on lab.
        run = try s.haven(["failover", "-f", s.config, "offsite", "web"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try await dr.record(rep).powerState == .running)
        let w0 = try s.simControl(["write", "--vm", "replica-web", "--disk", "0", "--percent", "5", "--seed", "191", "--output", "json"])
        let w1 = try s.simControl(["write", "--vm", "replica-web", "--disk", "1", "--percent", "7", "--seed", "192", "--output", "json"])
        let changed = Self.writtenBlocks(w0) + Self.writtenBlocks(w1)
        #expect(Self.writtenBlocks(w0) > 0 && Self.writtenBlocks(w1) > 0, "\(w0.stdout)\(w0.stderr)")
        #expect(try s.simControl(["power", "--vm", "web", "shutdown"]).status == 0)
        // dr serves no NBD: the fail-back (which reads the replica over NBD) is a plan error
        // before anything is written; with purpose nbd on one of dr's networks it runs.
        let originalBefore = try await lab.diskVDIs(try await lab.vmNamed("web").0).asyncMap { try await Self.exported(s, lab, $0) }
        run = try s.haven(["failback", "-f", s.config, "offsite", "web", "--auto-approve"])
        #expect(run.status == 2, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("pool dr has no network with purpose nbd"), "\(run.stdout)")
        let originalAfter = try await lab.diskVDIs(try await lab.vmNamed("web").0).asyncMap { try await Self.exported(s, lab, $0) }
        #expect(originalAfter == originalBefore, "the original was not written")
        try await dr.addPurpose(try #require(try await dr.records(NetworkRecord.self).first { $0.value.nameLabel == "dr-lan" }?.key), "nbd")
        run = try s.haven(["failback", "-f", s.config, "offsite", "web", "--auto-approve"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("fail back from replica replica-web on dr"), "\(run.stdout)")
        try await Self.expectEqual(s, lab: lab, dr: dr, "after the fail-back")
        let done = try #require(Self.finished(run, kind: "failback"), "\(run.stderr)")
        #expect((done["bytesStored"] as? Int) == changed * 65_536, "only the blocks the replica changed crossed: \(done)")

        // Back to the normal direction: the replica is shut down, the original runs and is written,
        // the next sync is a plain incremental.
        try await dr.hardShutdown(rep)
        #expect(try s.simControl(["power", "--vm", "web", "start"]).status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "3", "--seed", "195"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(!run.stdout.contains("resync"), "\(run.stdout)")
        try await Self.expectEqual(s, lab: lab, dr: dr, "first sync after the fail-back")
        #expect(try s.diff().status == 0)

        // The user's VMs and snapshots on both pools are as they were (web aside: it was written and failed back).
        let webUUID = try await lab.vmNamed("web").1.uuid
        let labAfter = try await Self.userState(s, lab, pool: "lab")
        for (k, v) in labUsers where !k.hasPrefix(webUUID) { #expect(labAfter[k] == v, "lab \(k)") }
        #expect(try await Self.userState(s, dr, pool: "dr") == drUsers, "dr")
        #expect(drUsers.count >= 4, "dr-app and its snapshot were compared: \(drUsers)")
    }

    @Test func methodXVAAcrossPools() async throws {
        let s = try Self.scenario(extra: "  method: xva")
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        // web is HA-protected on lab: its replica must never be (HA would start it).
        try await lab.setHARestartPriority(try await lab.vmNamed("web").0, "restart")
        #expect(try await lab.vmNamed("web").1.haAlwaysRun)
        let drUsers = try await Self.userState(s, dr, pool: "dr")
        var run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let first = try await Self.replicas(dr)
        #expect(first.count == 1)
        let (rep, rec) = try #require(first.first)
        #expect(rec.otherConfig["haven.role"] == "replica" && !rec.isATemplate)
        #expect(rec.haRestartPriority == "" && !rec.haAlwaysRun, "\(rec.haRestartPriority) \(rec.haAlwaysRun)")
        #expect(rec.blockedOperations["start"]?.contains("haven failover") == true)
        let srs = try await dr.records(SRRecord.self)
        for vdi in try await dr.diskVDIs(rep) { #expect(srs[try await dr.record(vdi).sr]?.nameLabel == "DR fast") }
        try await Self.expectEqual(s, lab: lab, dr: dr, "xva initial")
        #expect(try await dr.records(VMRecord.self).values.filter { $0.isASnapshot && $0.snapshotOf == rep }.count == 1)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "131"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let second = try await Self.replicas(dr)
        #expect(second.count == 1 && second.first?.1.uuid != rec.uuid, "a new replica replaced the old one")
        try await Self.expectEqual(s, lab: lab, dr: dr, "xva second run")
        #expect(try s.diff().status == 0)

        // Killed right after the import, before the imported VM (a template carrying the source
        // snapshot's marks) was made a replica: the next run finds it by its marks and the
        // intent, removes it, and the replica of record is untouched until replaced.
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "5", "--seed", "132"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.haven(["apply", "-f", s.config, "--auto-approve"], env: ["HAVEN_CRASH_STEP": "xva-import-returned"])
        #expect(run.status == 99, "\(run.stdout)\(run.stderr)")
        let imported = try await dr.records(VMRecord.self).values.filter { $0.isATemplate && !$0.isASnapshot && $0.otherConfig["haven.owner"] != nil }
        #expect(imported.count == 1, "the killed run left its imported template: \(imported.map(\.nameLabel))")
        run = try s.diff()
        #expect(run.stdout.contains("an xva import of web left by a sync that stopped before making it the replica"), "\(run.stdout)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(try await dr.records(VMRecord.self).values.filter { $0.isATemplate && !$0.isASnapshot && $0.otherConfig["haven.owner"] != nil }.isEmpty)
        #expect(try await Self.replicas(dr).count == 1)
        try await Self.expectEqual(s, lab: lab, dr: dr, "the run after the killed import")
        let leftDisks = try await dr.records(VDIRecord.self).values.filter { $0.otherConfig["haven.role"] == "replication-snapshot-disk" }
        #expect(leftDisks.isEmpty, "the imported template's disks went with it: \(leftDisks.map(\.nameLabel))")
        #expect(try s.diff().status == 0)
        #expect(try await lab.records(VMRecord.self).values.allSatisfy { !$0.nameLabel.hasPrefix("replica-") })
        #expect(try await Self.userState(s, dr, pool: "dr") == drUsers)
    }

    @Test func singlePassVersionRestoresEqualToTheReplicaOnTheOtherPool() async throws {
        let s = try Self.scenario(extra: "  singlePass: {repository: local}")
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "4", "--seed", "161"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await Self.expectEqual(s, lab: lab, dr: dr, "singlePass incremental")
        let backups = try s.backups()
        #expect(backups.count == 2 && backups.allSatisfy { $0["policy"] as? String == "offsite" }, "\(backups)")
        let (rep, _) = try #require(try await Self.replicas(dr).first)
        for (i, vdi) in try await dr.diskVDIs(rep).enumerated() {
            let file = s.dir.appendingPathComponent("restored-\(i).raw").path
            let r = try s.haven(["restore", "-f", s.config, "--backup", "latest", "--vm", "web", "--disk", String(i), "--to-file", file])
            #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
            let replicaSum = try await Self.exported(s, dr, vdi)
            #expect(try s.sha(file) == replicaSum, "disk \(i) restores equal to the replica on dr")
        }

        // The policy removed, the replica on dr is kept until deleted by name; deleting it takes
        // its restore points and disks on dr and the replication's anchors on lab.
        let yaml = s.config + "/haven.yaml"
        var text = try String(contentsOfFile: yaml, encoding: .utf8)
        text = String(text[..<text.range(of: "---\napiVersion: haven/v1\nkind: ReplicationPolicy")!.lowerBound])
        try text.write(toFile: yaml, atomically: true, encoding: .utf8)
        #expect(try s.diff().stdout.contains("haven replicas delete offsite web"))
        let del = try s.haven(["replicas", "delete", "-f", s.config, "offsite", "web", "--yes"])
        #expect(del.status == 0, "\(del.stdout)\(del.stderr)")
        #expect(try await Self.replicas(dr).isEmpty)
        for (name, c) in [("dr", dr), ("lab", lab)] {
            let vms = try await c.records(VMRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }.map(\.nameLabel)
            let vdis = try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }.map(\.nameLabel)
            #expect(vms.isEmpty && vdis.isEmpty, "\(name): \(vms) \(vdis)")
        }
    }

    @Test func aSourceNetworkWithoutMappingOrSameNamedTargetNetworkIsAPlanError() async throws {
        let s = try Self.scenario(networkMap: "{net0: dr-lan}")
        let run = try s.diff()
        #expect(run.status == 2, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("lab-storage"), "the error names the network: \(run.stdout)")
        #expect(try s.apply().status == 2)
        #expect(try await Self.replicas(try s.client(pool: "dr")).isEmpty, "nothing created")
    }

    static func writtenBlocks(_ run: Scenario.Run) -> Int {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any] else { return -1 }
        return (obj["blocks"] as? [Any])?.count ?? -1
    }

    static func finished(_ run: Scenario.Run, kind: String) -> [String: Any]? {
        for line in run.stderr.split(separator: "\n") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
            if obj["event"] as? String == "finished", obj["action"] as? String == kind { return obj }
        }
        return nil
    }
}

extension Array {
    func asyncMap<T>(_ f: (Element) async throws -> T) async rethrows -> [T] {
        var out: [T] = []
        for e in self { out.append(try await f(e)) }
        return out
    }
}

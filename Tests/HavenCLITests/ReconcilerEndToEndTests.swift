import Foundation
import Testing
import XenAPI

/// `haven diff` / `apply` / `restore` against `haven sim` (real nbdkit), checked on the pool and
/// on the restored bytes.
@Suite struct ReconcilerEndToEndTests {
    static let threeVMs = """
              - name: web
                power: Running
                disks: [{name: web-root, size: 8Mi, fill: {seed: 1}}, {name: web-data, size: 4Mi, fill: {seed: 2}}]
              - name: db
                power: Running
                disks: [{name: db-root, size: 8Mi, fill: {seed: 3}}]
              - name: build
                disks: [{name: build-root, size: 4Mi, fill: {seed: 4}}, {name: scratch, size: 4Mi, fill: {seed: 5}}]
        """

    static func policy(cbt: Bool = true, retention: String = "{keepLast: 7}", extra: String = "") -> String {
        """
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: daily}
        spec:
          pool: lab
          vms: {names: [web, db, build]}
          schedule: {every: 24h}
          cbt: \(cbt)
          repository: local
          excludeDisks: [scratch]
          retention: \(retention)
        \(extra)
        """
    }

    func uuids(_ c: XenAPIClient, vm name: String) async throws -> [String] {
        let (ref, _) = try await c.vmNamed(name)
        var out: [String] = []
        for vdi in try await c.diskVDIs(ref) { out.append(try await c.record(vdi).uuid) }
        return out
    }

    @Test func theMainJob() async throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy())
        let c = s.client()
        // A user's own snapshot, taken before haven ever ran.
        let (web, _) = try await c.vmNamed("web")
        let userSnap = try await c.snapshot(web, name: "before upgrade")
        try await c.setOtherConfig(userSnap, key: "owner", value: "alice")
        let userSnapUUID = try await c.record(userSnap).uuid
        let userSnapDisks = try await c.diskVDIs(userSnap)
        let webDisks = try await uuids(c, vm: "web")

        var run = try s.diff()
        #expect(run.status == 1, "changes pending: \(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("Plan: 3 to add, 4 to change, 0 to destroy, 0 warnings."))
        let actions = try s.planActions()
        #expect(actions.filter { $0["kind"] as? String == "enable-cbt" }.count == 4, "scratch is excluded: no CBT for it")
        let buildBackup = try #require(actions.first { $0["kind"] as? String == "backup" && $0["vm"] as? String == "build" })
        #expect((buildBackup["skippedDisks"] as? [String]) == ["scratch (disk 1)"])

        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        run = try s.diff()
        #expect(run.status == 0, "a second diff right after apply is in sync: \(run.stdout)")

        // The user's snapshot is untouched.
        let after = try await c.record(userSnap)
        #expect(after.uuid == userSnapUUID)
        #expect(after.otherConfig["owner"] == "alice")
        #expect(after.otherConfig.keys.allSatisfy { !$0.hasPrefix("haven.") })
        for d in userSnapDisks { #expect(try await c.record(d).type == "user", "the user's snapshot disks keep their data") }

        // Three versions; build's without its scratch disk.
        var list = try s.backups()
        #expect(list.count == 3)
        let build = try #require(list.first { ($0["vm"] as? [String: Any])?["name"] as? String == "build" })
        #expect((build["disks"] as? [[String: Any]])?.map { $0["key"] as? String } == ["0"])
        // haven's snapshots are gone; only CBT metadata anchors remain.
        let vms = try await c.records(VMRecord.self)
        #expect(vms.values.filter { $0.isASnapshot && $0.otherConfig["haven.owner"] != nil }.isEmpty)
        let anchors = try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }
        #expect(anchors.count == 4)
        #expect(anchors.allSatisfy { $0.type == "cbt_metadata" })

        // The first backup of web equals what the user's snapshot holds (nothing was written in between).
        let webV1 = try #require(list.first { ($0["vm"] as? [String: Any])?["name"] as? String == "web" }?["id"] as? String)
        for (i, d) in userSnapDisks.enumerated() {
            let out = s.dir.appendingPathComponent("v1-\(i).raw").path
            #expect(try s.haven(["restore", "-f", s.config, "--backup", webV1, "--disk", String(i), "--to-file", out]).status == 0)
            #expect(try s.sha(out) == s.sha(s.diskFile(try await c.record(d).uuid)))
        }

        // A day later, after guest writes: an incremental of changed blocks.
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "6", "--seed", "3"]).status == 0)
        s.now = s.now.addingTimeInterval(25 * 3_600)
        let next = try s.planActions()
        let webBackup = try #require(next.first { $0["kind"] as? String == "backup" && $0["vm"] as? String == "web" })
        #expect(webBackup["method"] as? String == "cbt-incremental")
        #expect((webBackup["reason"] as? String)?.hasPrefix("due: last backup 25h ago, schedule every 24h") == true)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        list = try s.backups()
        let webV2 = try #require(list.last { ($0["vm"] as? [String: Any])?["name"] as? String == "web" })
        #expect(webV2["kind"] as? String == "incremental")
        for (i, uuid) in webDisks.enumerated() {
            let out = s.dir.appendingPathComponent("v2-\(i).raw").path
            #expect(try s.haven(["restore", "-f", s.config, "--backup", webV2["id"] as! String, "--disk", String(i), "--to-file", out]).status == 0)
            #expect(try s.sha(out) == s.sha(s.diskFile(uuid)), "restored disk \(i) is the disk as the snapshot saw it")
        }
        #expect(try s.diff().status == 0)
        #expect(try s.haven(["repo", "verify", "-f", s.config]).status == 0)
    }

    @Test func aPreCBTPoolFallsBackAndSaysSo() async throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy(), poolExtra: "    apiVersion: \"2.7\"")
        let run = try s.diff()
        #expect(run.status == 1)
        #expect(run.stdout.contains("! pool lab speaks XenAPI 2.7, before CBT (2.8): backups read VHD deltas against the previous backup's snapshot"))
        let backups = try s.planActions().filter { $0["kind"] as? String == "backup" }
        #expect(backups.count == 3)
        for b in backups {
            #expect(b["method"] as? String == "full-export")
            #expect((b["reason"] as? String)?.contains("full, because the pool predates CBT (API 2.7)") == true)
        }
        #expect(try s.apply().status == 0)
        let web = try #require(try s.backups().first { ($0["vm"] as? [String: Any])?["name"] as? String == "web" })
        let c = s.client()
        for (i, uuid) in try await uuids(c, vm: "web").enumerated() {
            let out = s.dir.appendingPathComponent("w\(i).raw").path
            #expect(try s.haven(["restore", "-f", s.config, "--backup", web["id"] as! String, "--disk", String(i), "--to-file", out]).status == 0)
            #expect(try s.sha(out) == s.sha(s.diskFile(uuid)))
        }
    }

    @Test func aPoolWithoutAnNBDNetworkWarnsAndUsesHTTPExport() async throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy(), networks: "[{name: net0}]")
        let run = try s.diff()
        #expect(run.stdout.contains("! no network of pool lab has an NBD purpose"))
        #expect(try s.planActions().filter { $0["kind"] as? String == "backup" }.allSatisfy { $0["method"] as? String == "full-export" })
        let applied = try s.apply()
        #expect(applied.status == 0, "\(applied.stderr)")
        #expect(try s.backups().count == 3)
    }

    @Test func cbtOffKeepsDeltaBasesAndNoCBT() async throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy(cbt: false))
        let actions = try s.planActions()
        #expect(!actions.contains { $0["kind"] as? String == "enable-cbt" })
        #expect(actions.filter { $0["kind"] as? String == "backup" }.allSatisfy {
            $0["method"] as? String == "full-nbd" && ($0["reason"] as? String)?.contains("full, because cbt: false and this is the first backup with VHD deltas") == true
        })
        #expect(try s.apply().status == 0)
        let c = s.client()
        #expect(try await c.records(VMRecord.self).values.filter { $0.isASnapshot }.isEmpty)
        // Without CBT, `method: auto` keeps each snapshot disk whole as the next VHD delta's base.
        let kept = try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }
        #expect(kept.count == 4 && kept.allSatisfy { $0.otherConfig["haven.role"] == "delta-base" && $0.type == "user" })
        #expect(try await c.records(VDIRecord.self).values.allSatisfy { !$0.cbtEnabled })
    }

    @Test func snapshotRetentionZeroReadsWholeDisksAndLeavesNothing() async throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy(cbt: false, extra: "  snapshotRetention: 0"))
        #expect(try s.planActions().filter { $0["kind"] as? String == "backup" }.allSatisfy {
            ($0["reason"] as? String)?.contains("snapshotRetention is 0") == true
        })
        #expect(try s.apply().status == 0)
        let c = s.client()
        #expect(try await c.records(VMRecord.self).values.filter { $0.isASnapshot }.isEmpty)
        #expect(try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }.isEmpty)
        #expect(try await c.records(VDIRecord.self).values.allSatisfy { !$0.cbtEnabled })
    }

    @Test func dataDestroyInUseIsSurvivedByRetrying() async throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy())
        #expect(try s.simControl(["fault", "--rule", "error:VDI.data_destroy:VDI_IN_USE:OpaqueRef:x,data_destroy@count=2"]).status == 0)
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stderr.contains("VDI_IN_USE"))
        #expect(run.stderr.contains("retrying"))
        let anchors = try await s.client().records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }
        #expect(anchors.count == 4 && anchors.allSatisfy { $0.type == "cbt_metadata" })
    }

    @Test func savedPlansAreRefusedWhenStale() throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy())
        let planFile = s.dir.appendingPathComponent("plan.json").path
        #expect(try s.haven(["diff", "-f", s.config, "--out", planFile]).status == 1)
        #expect(try s.apply().status == 0)
        let stale = try s.haven(["apply", "-f", s.config, "--auto-approve", planFile])
        #expect(stale.status == 2)
        #expect(stale.stderr.contains("is stale"))
        // A fresh saved plan applies.
        s.now = s.now.addingTimeInterval(25 * 3_600)
        #expect(try s.haven(["diff", "-f", s.config, "--out", planFile]).status == 1)
        #expect(try s.haven(["apply", "-f", s.config, "--auto-approve", planFile]).status == 0)
    }

    @Test func aSecondApplyOnTheSamePoolFailsClearly() throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy())
        #expect(try s.diff().status == 1)
        let lock = s.dir.appendingPathComponent("state/locks/lab.lock").path
        FileManager.default.createFile(atPath: lock, contents: nil)
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = ["-x", lock, "sleep", "5"]
        try holder.run()
        usleep(300_000)
        let run = try s.haven(["apply", "-f", s.config, "--auto-approve", "--lock-timeout", "0.5"])
        holder.terminate()
        holder.waitUntilExit()
        #expect(run.status == 2)
        #expect(run.stderr.contains("another haven"))
    }

    @Test func theCatalogCanBeRebuiltFromRepositoryAndPool() throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy())
        #expect(try s.apply().status == 0)
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: s.dir.appendingPathComponent("state/catalog.sqlite\(suffix)").path) }
        #expect(try s.diff().status == 1, "without a catalog haven believes nothing was backed up")
        let rebuilt = try s.haven(["catalog", "rebuild", "-f", s.config])
        #expect(rebuilt.status == 0, "\(rebuilt.stderr)")
        #expect(rebuilt.stdout.contains("3 backups, 4 CBT anchors"))
        #expect(try s.diff().status == 0, "after a rebuild the pools match again")
        s.now = s.now.addingTimeInterval(25 * 3_600)
        #expect(try s.planActions().filter { $0["kind"] as? String == "backup" }.allSatisfy { $0["method"] as? String == "cbt-incremental" })
    }

    @Test func aVMIsRestoredToThePool() async throws {
        let s = try Scenario(vms: Self.threeVMs, policy: Self.policy())
        #expect(try s.apply().status == 0)
        let db = try #require(try s.backups().first { ($0["vm"] as? [String: Any])?["name"] as? String == "db" })
        let run = try s.haven(["restore", "-f", s.config, "--backup", db["id"] as! String, "--to-pool", "lab", "--sr", "Local storage"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("new name and MACs"))
        let c = s.client()
        let restored = try #require(try await c.records(VMRecord.self).first { $0.value.nameLabel.hasPrefix("db (restored") })
        let restoredDisks = try await c.diskVDIs(restored.key)
        #expect(restoredDisks.count == 1)
        let original = try await uuids(c, vm: "db")
        #expect(try s.sha(s.diskFile(try await c.record(restoredDisks[0]).uuid)) == s.sha(s.diskFile(original[0])))
        #expect(restored.value.otherConfig["haven.restored-from"] == db["id"] as? String)
    }

    /// A month (31 days) of daily backups with keepLast 2, daily 5, weekly 2, starting on a
    /// Monday: what is left is exactly what the rules keep.
    @Test func retentionPrunesExactlyWhatTheRulesSay() throws {
        let oneVM = """
                  - name: app
                    disks: [{name: app-root, size: 1Mi, fill: {seed: 9}}]
            """
        let policy = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec:
              pool: lab
              vms: {names: [app]}
              schedule: {every: 24h}
              repository: local
              retention: {keepLast: 2, daily: 5, weekly: 2}
            """
        let s = try Scenario(vms: oneVM, policy: policy)
        let f = ISO8601DateFormatter()
        let start = f.date(from: "2026-03-02T12:00:00Z")!  // a Monday
        for day in 0..<31 {
            s.now = start.addingTimeInterval(Double(day) * 86_400)
            let run = try s.apply()
            #expect(run.status == 0, "day \(day): \(run.stderr)")
        }
        let kept = try s.backups().compactMap { $0["time"] as? String }.map { String($0.dropFirst(5).prefix(5)) }.sorted()
        // keepLast: Apr 1, Mar 31; daily: Mar 30 … 26; weekly 2: weeks 14 and 13 are covered by those,
        // so the newest of weeks 12 and 11 (Mar 22 and Mar 15).
        #expect(kept == ["03-15", "03-22", "03-26", "03-27", "03-28", "03-29", "03-30", "03-31", "04-01"])
        #expect(try s.haven(["repo", "verify", "-f", s.config]).status == 0)
    }
}

extension XenAPIClient {
    func vmNamed(_ name: String) async throws -> (VMRef, VMRecord) {
        guard let hit = try await records(VMRecord.self).first(where: { $0.value.nameLabel == name && $0.value.isRealVM }) else {
            throw XenAPIError(code: "TEST_NO_VM", parameters: [name])
        }
        return (hit.key, hit.value)
    }

    func diskVDIs(_ vm: VMRef) async throws -> [VDIRef] {
        var out: [(Int, VDIRef)] = []
        for vbd in try await record(vm).vbds {
            let r = try await record(vbd)
            if r.type == "Disk", !r.vdi.isNull { out.append((Int(r.userdevice) ?? 0, r.vdi)) }
        }
        return out.sorted { $0.0 < $1.0 }.map(\.1)
    }
}

@Suite struct ReconcilerFaultTests {
    @Test func droppedNBDConnectionsAreReopenedAndNothingIsSkipped() async throws {
        let vms = """
                  - name: big
                    disks: [{name: big-root, size: 16Mi, fill: {seed: 11, unallocated: 0, random: 1}}]
            """
        let policy = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [big]}, repository: local, cbt: false}
            """
        let s = try Scenario(vms: vms, policy: policy)
        #expect(try s.simControl(["fault", "--rule", "nbd-drop:3000000"]).status == 0)
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stderr)")
        let id = try #require(try s.backups().first?["id"] as? String)
        let out = s.dir.appendingPathComponent("big.raw").path
        #expect(try s.haven(["restore", "-f", s.config, "--backup", id, "--to-file", out]).status == 0)
        let c = s.client()
        let (vm, _) = try await c.vmNamed("big")
        let disk = try await c.record(try await c.diskVDIs(vm)[0]).uuid
        #expect(try s.sha(out) == s.sha(s.diskFile(disk)), "every byte read despite connections cut every ~3 MB")
    }

    @Test func hooksRunWithoutAShellAndAFailingOneStopsTheBackup() async throws {
        let vms = """
                  - name: app
                    disks: [{name: app-root, size: 1Mi, fill: {seed: 2}}]
            """
        let marker = FileManager.default.temporaryDirectory.appendingPathComponent("haven-hook-\(UUID().uuidString)").path
        let good = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec:
              pool: lab
              vms: {names: [app]}
              repository: local
              hooks:
                preSnapshot: {command: [/usr/bin/touch, "\(marker)"], timeout: 10s}
                postSnapshot: {command: [/bin/echo, "thawed $HOME"], timeout: 10s}
            """
        let s = try Scenario(vms: vms, policy: good)
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stderr)")
        #expect(FileManager.default.fileExists(atPath: marker))
        #expect(run.stderr.contains("postSnapshot: thawed $HOME"), "arguments reach the program as written, no shell expansion")
        try? FileManager.default.removeItem(atPath: marker)

        let failing = good.replacingOccurrences(of: "[/usr/bin/touch, \"\(marker)\"], timeout: 10s", with: "[/bin/false], timeout: 10s, onError: fail")
        try failing.write(toFile: s.config + "/policy-override.yaml", atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: s.config + "/haven.yaml")
        try """
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: lab}
            spec:
              url: https://\(s.prefix).1:4443
              credentials: {username: root, passwordEnv: SCENARIO_PASSWORD}
              tls: {caFile: \(s.simState.path)/pools/lab/pki/pool-bundle.pem}
            ---
            apiVersion: haven/v1
            kind: Repository
            metadata: {name: local}
            spec: {path: \(s.repository)}
            """.write(toFile: s.config + "/base.yaml", atomically: true, encoding: .utf8)
        s.now = s.now.addingTimeInterval(25 * 3_600)
        let failed = try s.apply()
        #expect(failed.status == 2)
        #expect(failed.stdout.contains("preSnapshot hook /bin/false failed"))
        #expect(try s.backups().count == 1, "no version for the failed run")
        let snapshots = try await s.client().records(VMRecord.self).values.filter { $0.isASnapshot }
        #expect(snapshots.isEmpty, "no snapshot was taken")
    }
}

@Suite struct XVAMethodTests {
    @Test func methodXVAStoresTheWholeVMAsAnXVA() throws {
        let vms = """
                  - name: app
                    power: Running
                    disks: [{name: app-root, size: 2Mi, fill: {seed: 5}}, {name: app-data, size: 1Mi, fill: {seed: 6}}]
            """
        let policy = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [app]}, repository: local, method: xva}
            """
        let s = try Scenario(vms: vms, policy: policy)
        let actions = try s.planActions()
        #expect(actions.first { $0["kind"] as? String == "backup" }?["method"] as? String == "xva")
        #expect(!actions.contains { $0["kind"] as? String == "enable-cbt" }, "cbt defaults to false with method xva")
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stderr)")
        let b = try #require(try s.backups().first)
        #expect(b["kind"] as? String == "xva")
        let out = s.dir.appendingPathComponent("app.xva").path
        #expect(try s.haven(["restore", "-f", s.config, "--backup", b["id"] as! String, "--disk", "xva", "--to-file", out]).status == 0)
        let (tarStatus, listing) = try runTool("tar", ["-tf", out])
        #expect(tarStatus == 0)
        #expect(listing.hasPrefix("ova.xml\n"))
        #expect(try s.diff().status == 0)
    }
}

@Suite struct FailedBackupTests {
    @Test func aFailedBackupLeavesNoSnapshotAndTheNextRunSucceeds() async throws {
        let vms = """
                  - name: app
                    disks: [{name: app-root, size: 2Mi, fill: {seed: 3}}]
            """
        let policy = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: daily}
            spec: {pool: lab, vms: {names: [app]}, repository: local}
            """
        let s = try Scenario(vms: vms, policy: policy)
        // Every NBD connection is cut before its TLS handshake completes: the transfer cannot succeed.
        #expect(try s.simControl(["fault", "--rule", "nbd-drop:200"]).status == 0)
        let failed = try s.apply()
        #expect(failed.status == 2)
        #expect(failed.stderr.contains("removed the snapshot of the failed backup"))
        let c = s.client()
        #expect(try await c.records(VMRecord.self).values.filter { $0.isASnapshot }.isEmpty)
        #expect(try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }.isEmpty)
        #expect(try s.backups().isEmpty, "no version for the failed run")
        #expect(try s.simControl(["fault", "--clear"]).status == 0)
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stderr)")
        #expect(try s.backups().count == 1)
    }
}

@Suite struct StatusAndTargetTests {
    @Test func statusReportsRPOAndTargetRestrictsThePlan() throws {
        let vms = """
                  - name: web
                    disks: [{name: web-root, size: 1Mi, fill: {seed: 1}}]
                  - name: db
                    disks: [{name: db-root, size: 1Mi, fill: {seed: 2}}]
            """
        let policies = """
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: web-daily}
            spec: {pool: lab, vms: {names: [web]}, repository: local}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: db-hourly}
            spec: {pool: lab, vms: {names: [db]}, repository: local, schedule: {every: 1h}}
            """
        let s = try Scenario(vms: vms, policy: policies)
        // Only one policy's work is planned and applied.
        let targeted = try s.haven(["diff", "-f", s.config, "--target", "BackupPolicy/db-hourly", "--output", "json"])
        #expect(targeted.status == 1)
        #expect(!targeted.stdout.contains("\"web\""))
        #expect(try s.haven(["apply", "-f", s.config, "--auto-approve", "--target", "BackupPolicy/db-hourly"]).status == 0)
        var status = try s.haven(["status", "-f", s.config, "--output", "json"])
        #expect(status.status == 0)
        var rows = try #require((try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])?["vms"] as? [[String: Any]])
        #expect(rows.first { $0["vm"] as? String == "db" }?["rpoMet"] as? Bool == true)
        #expect(rows.first { $0["vm"] as? String == "web" }?["rpoMet"] as? Bool == false)
        // Two hours later the hourly RPO is missed; the daily one is met after a full apply.
        #expect(try s.apply().status == 0)
        s.now = s.now.addingTimeInterval(2 * 3_600)
        status = try s.haven(["status", "-f", s.config, "--output", "json"])
        rows = try #require((try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])?["vms"] as? [[String: Any]])
        #expect(rows.first { $0["vm"] as? String == "db" }?["rpoMet"] as? Bool == false)
        #expect(rows.first { $0["vm"] as? String == "web" }?["rpoMet"] as? Bool == true)
        let text = try s.haven(["status", "-f", s.config]).stdout
        #expect(text.contains("MISSED"))
        #expect(try s.haven(["diff", "-f", s.config, "--target", "Pool/nope"]).status == 2)
    }
}

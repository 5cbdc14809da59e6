import Foundation
import Testing
import XenAPI

/// Incrementals without CBT (`method: auto` on a pool without a CBT licence): the previous
/// backup's snapshot disk is kept on the pool as the delta base, and the next backup reads only
/// the VHD blocks `/export_raw_vdi?format=vhd&base=…` says differ — through the binary, against
/// `haven sim`.
@Suite struct DeltaBackupEndToEndTests {
    static let vm = """
              - name: app
                power: Running
                disks: [{name: app-root, size: 64Mi, fill: {seed: 7}}]
        """

    static let policy = """
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: daily}
        spec:
          pool: lab
          vms: {names: [app]}
          schedule: {every: 24h}
          repository: local
        """

    func backupJSON(_ s: Scenario, _ id: String) throws -> [String: Any] {
        let run = try s.haven(["backups", "show", id, "-f", s.config, "--output", "json"])
        return try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any] ?? [:]
    }

    /// haven's VDIs on the pool.
    func havenVDIs(_ c: XenAPIClient) async throws -> [VDIRecord] {
        try await c.records(VDIRecord.self).values.filter { $0.otherConfig["haven.owner"] != nil }
    }

    @Test func anUnlicensedPoolGetsVHDDeltaIncrementals() async throws {
        let s = try Scenario(vms: Self.vm, policy: Self.policy, poolExtra: "    licence: {cbt: false}")
        let c = s.client()
        let (app, _) = try await c.vmNamed("app")
        let source = try await c.record(try await c.diskVDIs(app)[0]).uuid
        let size: Int64 = 64 << 20

        // First run: a full read that keeps the snapshot's disk as the delta base.
        let diff = try s.diff()
        #expect(diff.stdout.contains("! pool lab has no CBT licence (restrict_cbt): backups read VHD deltas against the previous backup's snapshot"),
                "\(diff.stdout)")
        var backup = try #require(try s.planActions().first { $0["kind"] as? String == "backup" })
        #expect(backup["method"] as? String == "full-nbd")
        #expect((backup["reason"] as? String)?.contains("full, because CBT is not licensed and this is the first backup with VHD deltas") == true)
        var run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let v1Hash = try s.sha(s.diskFile(source))
        var bases = try await havenVDIs(c)
        #expect(bases.count == 1)
        let base1 = try #require(bases.first)
        #expect(base1.otherConfig["haven.role"] == "delta-base" && base1.type == "user", "the base keeps its data")
        #expect(try await c.records(VMRecord.self).values.filter { $0.isASnapshot }.isEmpty, "no snapshot VM is left")
        #expect(try await c.records(VDIRecord.self).values.allSatisfy { !$0.cbtEnabled }, "no CBT without a licence")
        #expect(try s.diff().status == 0)

        // Guest writes, then a day later a VHD delta: only the 2 MiB blocks written are read.
        let written = try s.simControl(["write", "--vm", "app", "--percent", "2", "--pattern", "clustered", "--seed", "4", "--output", "json"])
        let blocks = try #require((try JSONSerialization.jsonObject(with: Data(written.stdout.utf8)) as? [String: Any])?["blocks"] as? [Int])
        let vhdBlocks = Set(blocks.map { $0 * 65_536 / (2 << 20) })
        s.now = s.now.addingTimeInterval(25 * 3_600)
        backup = try #require(try s.planActions().first { $0["kind"] as? String == "backup" })
        #expect(backup["method"] as? String == "delta-incremental")
        #expect((backup["reason"] as? String)?.contains("incremental (VHD delta, no CBT licence)") == true, "\(backup)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        var list = try s.backups()
        #expect(list.count == 2)
        let v2 = try #require(list.last?["id"] as? String)
        let shown = try backupJSON(s, v2)
        #expect(shown["kind"] as? String == "incremental")
        let read = try #require((shown["disks"] as? [[String: Any]])?.first?["readBytes"] as? Int)
        #expect(read == vhdBlocks.count * (2 << 20), "read exactly the VHD blocks holding the \(blocks.count) blocks written")
        #expect(Int64(read) < size / 4)
        let v2Hash = try s.sha(s.diskFile(source))
        let out2 = s.dir.appendingPathComponent("v2.raw").path
        #expect(try s.haven(["restore", "-f", s.config, "--backup", v2, "--to-file", out2]).status == 0)
        #expect(try s.sha(out2) == v2Hash, "the delta restores the disk as the snapshot saw it")
        let v1 = try #require(list.first?["id"] as? String)
        let out1 = s.dir.appendingPathComponent("v1.raw").path
        #expect(try s.haven(["restore", "-f", s.config, "--backup", v1, "--to-file", out1]).status == 0)
        #expect(try s.sha(out1) == v1Hash, "the full version is untouched")
        // The new snapshot's disk replaced the old base.
        bases = try await havenVDIs(c)
        #expect(bases.count == 1 && bases[0].uuid != base1.uuid && bases[0].otherConfig["haven.role"] == "delta-base")
        #expect(try s.diff().status == 0)

        // A base deleted by hand: the next backup reads the whole disk, and says why.
        try await c.destroy(try await c.vdi(uuid: bases[0].uuid))
        #expect(try s.simControl(["write", "--vm", "app", "--percent", "1", "--seed", "8"]).status == 0)
        s.now = s.now.addingTimeInterval(25 * 3_600)
        backup = try #require(try s.planActions().first { $0["kind"] as? String == "backup" })
        #expect(backup["method"] as? String == "full-nbd")
        #expect((backup["reason"] as? String)?.contains("full, because CBT is not licensed and the delta base of disk 0 was deleted") == true,
                "\(backup)")
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        list = try s.backups()
        let v3 = try #require(list.last?["id"] as? String)
        let full = try backupJSON(s, v3)
        #expect(full["kind"] as? String == "full")
        #expect((full["disks"] as? [[String: Any]])?.first?["readBytes"] as? Int == Int(size))
        let out3 = s.dir.appendingPathComponent("v3.raw").path
        #expect(try s.haven(["restore", "-f", s.config, "--backup", v3, "--to-file", out3]).status == 0)
        #expect(try s.sha(out3) == s.sha(s.diskFile(source)))
        #expect(try await havenVDIs(c).count == 1, "a new base is kept")
        #expect(try s.haven(["repo", "verify", "-f", s.config]).status == 0)

        // The catalog rebuilt from the repository and the pool's marks finds the base again.
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: s.dir.appendingPathComponent("state/catalog.sqlite\(suffix)").path) }
        #expect(try s.haven(["catalog", "rebuild", "-f", s.config]).status == 0)
        s.now = s.now.addingTimeInterval(25 * 3_600)
        backup = try #require(try s.planActions().first { $0["kind"] as? String == "backup" })
        #expect(backup["method"] as? String == "delta-incremental", "\(backup)")
    }
}

import Foundation
import Testing
import XenAPI

/// `method: xva` end to end, through the binary against `haven sim`: the stored archive goes back
/// to the pool as the VM it holds (xapi's `/import`), and one disk can be taken out of it; both
/// bit-identical to the source VM's disks.
@Suite struct XVARestoreEndToEndTests {
    /// Two disks of known content; the second is mostly holes and not a whole number of MiB, so
    /// the archive leaves out all-zero chunks and ends in a short one.
    static let vms = """
              - name: app
                power: Running
                disks: [{name: app-root, size: 3Mi, fill: {seed: 11}}, {name: app-data, size: 2560Ki, fill: {seed: 12, unallocated: 0.9}}]
        """
    static let policy = """
        apiVersion: haven/v1
        kind: BackupPolicy
        metadata: {name: daily}
        spec: {pool: lab, vms: {names: [app]}, repository: local, method: xva, cbt: false}
        """

    struct Disk {
        var userdevice: String
        var vdi: VDIRecord
    }

    /// A VM's disks in userdevice order.
    func disks(_ c: XenAPIClient, _ vm: VMRef) async throws -> [Disk] {
        var out: [Disk] = []
        for vbd in try await c.record(vm).vbds {
            let r = try await c.record(vbd)
            if r.type == "Disk", !r.vdi.isNull { out.append(Disk(userdevice: r.userdevice, vdi: try await c.record(r.vdi))) }
        }
        return out.sorted { (Int($0.userdevice) ?? 0) < (Int($1.userdevice) ?? 0) }
    }

    func macs(_ c: XenAPIClient, _ vm: VMRef) async throws -> [String: String] {
        var out: [String: String] = [:]
        for vif in try await c.record(vm).vifs {
            let r = try await c.record(vif)
            out[r.device] = r.mac.lowercased()
        }
        return out
    }

    /// Backs the VM up with method xva; returns the version id.
    func backUp(_ s: Scenario) throws -> String {
        let run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let b = try #require(try s.backups().first)
        #expect(b["kind"] as? String == "xva")
        return try #require(b["id"] as? String)
    }

    @Test func anXVAVersionRestoresToThePoolBesideTheOriginal() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy)
        let id = try backUp(s)
        let c = s.client()
        let (app, appBefore) = try await c.vmNamed("app")
        let source = try await disks(c, app)
        #expect(source.map(\.userdevice) == ["0", "1"])
        let sourceSHA = try source.map { try s.sha(s.diskFile($0.vdi.uuid)) }
        let sourceMACs = try await macs(c, app)

        let run = try s.haven(["restore", "-f", s.config, "--backup", id, "--to-pool", "lab", "--sr", "Local storage"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("new name and MACs"))
        #expect(!run.stdout.contains("disk xva"), "the archive is not a disk: \(run.stdout)")

        let (restoredRef, restored) = try #require(try await c.records(VMRecord.self).first { $0.value.nameLabel.hasPrefix("app (restored") })
        #expect(restored.isRealVM, "a VM, not a template or a snapshot (template \(restored.isATemplate), snapshot \(restored.isASnapshot))")
        #expect(restored.snapshotOf.isNull)
        #expect(restored.powerState == .halted)
        #expect(restored.otherConfig["haven.restored-from"] == id)
        #expect(restored.otherConfig.keys.filter { $0.hasPrefix("haven.") }.sorted() == ["haven.restored-from"],
                "none of the snapshot's ownership marks: \(restored.otherConfig)")

        // The VM's real disks, as userdevices 0 and 1, bit-identical to the source's.
        let back = try await disks(c, restoredRef)
        #expect(back.map(\.userdevice) == ["0", "1"])
        #expect(back.map(\.vdi.virtualSize) == source.map(\.vdi.virtualSize))
        for (i, d) in back.enumerated() where i < sourceSHA.count {
            #expect(try s.sha(s.diskFile(d.vdi.uuid)) == sourceSHA[i], "restored disk \(d.userdevice) equals the source's")
            #expect(!d.vdi.isASnapshot)
            #expect(d.vdi.otherConfig.keys.allSatisfy { !$0.hasPrefix("haven.") }, "\(d.vdi.otherConfig)")
            #expect(!source.map(\.vdi.uuid).contains(d.vdi.uuid))
        }
        // New MACs, since the original is still there.
        let restoredMACs = try await macs(c, restoredRef)
        #expect(restoredMACs.count == sourceMACs.count)
        #expect(Set(restoredMACs.values).isDisjoint(with: sourceMACs.values))

        // The original is untouched: name, MACs, disks and their bytes.
        let appAfter = try await c.record(app)
        #expect(appAfter.nameLabel == "app")
        #expect(appAfter.uuid == appBefore.uuid)
        #expect(appAfter.powerState == appBefore.powerState)
        #expect(try await macs(c, app) == sourceMACs)
        let after = try await disks(c, app)
        #expect(after.map(\.vdi.uuid) == source.map(\.vdi.uuid))
        #expect(try after.map { try s.sha(s.diskFile($0.vdi.uuid)) } == sourceSHA)

        // haven does not take the restored VM (or its disks) for a leftover of its own.
        let diff = try s.diff()
        #expect(diff.status == 0, "\(diff.stdout)\(diff.stderr)")
    }

    @Test func withTheOriginalGoneTheRestoreTakesBackItsNameAndMACs() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy)
        let id = try backUp(s)
        let c = s.client()
        let (app, _) = try await c.vmNamed("app")
        let sourceSHA = try await disks(c, app).map { try s.sha(s.diskFile($0.vdi.uuid)) }
        let sourceMACs = try await macs(c, app)
        try await c.hardShutdown(app)
        try await c.destroy(app)

        let run = try s.haven(["restore", "-f", s.config, "--backup", id, "--to-pool", "lab", "--sr", "Local storage"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        #expect(run.stdout.contains("original name and MACs"))
        let (restored, record) = try await c.vmNamed("app")
        #expect(record.isRealVM)
        #expect(try await macs(c, restored) == sourceMACs)
        let back = try await disks(c, restored)
        #expect(back.map(\.userdevice) == ["0", "1"])
        #expect(try back.map { try s.sha(s.diskFile($0.vdi.uuid)) } == sourceSHA)
    }

    @Test func aDiskIsTakenOutOfTheArchive() async throws {
        let s = try Scenario(vms: Self.vms, policy: Self.policy)
        let id = try backUp(s)
        let c = s.client()
        let (app, _) = try await c.vmNamed("app")
        let source = try await disks(c, app)

        // --disk N means the userdevice, as for every other version.
        for d in source {
            let out = s.dir.appendingPathComponent("disk\(d.userdevice).raw").path
            let run = try s.haven(["restore", "-f", s.config, "--backup", id, "--disk", d.userdevice, "--to-file", out])
            #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
            #expect(run.stdout.contains("from the XVA archive"))
            #expect(try s.sha(out) == s.sha(s.diskFile(d.vdi.uuid)), "disk \(d.userdevice) out of the XVA equals the source")
        }

        // As a VHD that qemu-img reads as the same disk.
        let vhd = s.dir.appendingPathComponent("disk1.vhd").path
        let run = try s.haven(["restore", "-f", s.config, "--backup", id, "--disk", "1", "--to-file", vhd, "--format", "vhd"])
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        let (same, output) = try runTool("qemu-img", ["compare", "-f", "raw", "-F", "vpc", s.diskFile(source[1].vdi.uuid), vhd])
        #expect(same == 0, "\(output)")
        #expect(!FileManager.default.fileExists(atPath: vhd + ".haven-xva-staging"))

        // A disk that is not there: a clear refusal, and no file.
        let missing = s.dir.appendingPathComponent("disk7.raw").path
        let refused = try s.haven(["restore", "-f", s.config, "--backup", id, "--disk", "7", "--to-file", missing])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("has no disk 7"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: missing))

        // The archive itself is still to be had, and is not passed off as a disk.
        let archive = s.dir.appendingPathComponent("app.xva").path
        let whole = try s.haven(["restore", "-f", s.config, "--backup", id, "--disk", "xva", "--to-file", archive])
        #expect(whole.status == 0)
        #expect(whole.stdout.contains("XVA archive"))
        #expect(try s.haven(["restore", "-f", s.config, "--backup", id, "--disk", "xva", "--to-file", archive, "--format", "vhd"]).status != 0)

        // The listing says what the stored stream is.
        let listed = try #require(try s.backups().first?["disks"] as? [[String: Any]])
        #expect(listed.map { $0["content"] as? String } == ["xva-archive"])
        #expect(try s.haven(["backups", "list", "-f", s.config]).stdout.contains("xva archive"))
    }
}

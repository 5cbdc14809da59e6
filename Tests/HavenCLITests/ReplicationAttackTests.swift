import Foundation
import Testing
import XenAPI

/// The streaming replication data path attacked as a user would meet it: uploads cut at 0 bytes
/// and inside the VHD's head, a disk whose size is no multiple of 2 MiB (nor of 64 KiB) read over
/// 16 NBD connections, an incremental with no changed block and one with every block changed.
/// After each, the replica equals the source, nothing is orphaned and the plan is clean.
@Suite struct ReplicationAttackTests {
    typealias T = ReplicationTwoPoolsEndToEndTests
    typealias F = ReplicationTwoPoolsFaultTests

    /// 5 MiB + 33 KiB: not a multiple of the VHD's 2 MiB blocks nor of CBT's 64 KiB.
    static let oddSize: Int64 = 5 * 1_048_576 + 33 * 1_024
    static let vms = """
              - name: web
                power: Running
                networks: [net0, lab-storage]
                disks: [{name: web-root, size: "\(oddSize)", fill: {seed: 301}}, {name: web-data, size: 4Mi, fill: {seed: 302, unallocated: 0.5}}]
        """

    static func scenario(poolSpec: String = "") throws -> Scenario {
        try Scenario(vms: vms, policy: T.config(), networks: T.labNetworks, srs: T.labSRs, poolSpec: poolSpec, otherPools: T.drPool)
    }

    static func expectClean(_ s: Scenario, _ lab: XenAPIClient, _ dr: XenAPIClient, _ note: String) async throws {
        try await T.expectEqual(s, lab: lab, dr: dr, note)
        #expect(try await T.replicas(dr).count == 1, "\(note)")
        try await F.expectNoStrays(dr, "\(note): dr")
        try await F.expectNoStrays(lab, "\(note): lab")
        let diff = try s.diff()
        #expect(diff.status == 0, "\(note): \(diff.stdout)\(diff.stderr)")
    }

    @Test func anOddSizedDiskOverSixteenConnectionsWithNoneAndAllBlocksChanged() async throws {
        let s = try Self.scenario(poolSpec: "nbd: {connections: 16}")
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        var run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await Self.expectClean(s, lab, dr, "initial sync")
        let (rep, _) = try #require(try await T.replicas(dr).first)
        let sizes = try await dr.diskVDIs(rep).asyncMap { try await dr.record($0).virtualSize }
        #expect(sizes.contains(Self.oddSize), "\(sizes)")
        // No block changed: the sync still runs on schedule and leaves the replica equal.
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await Self.expectClean(s, lab, dr, "no changed block")
        // Every block changed, the short last one included.
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "100", "--seed", "303"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await Self.expectClean(s, lab, dr, "every block changed")
        // A few scattered writes after that.
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "3", "--seed", "304"]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        run = try s.apply()
        #expect(run.status == 0, "\(run.stdout)\(run.stderr)")
        try await Self.expectClean(s, lab, dr, "3% changed")
    }

    /// Cut at 0 bytes, inside the footer copy, inside the dynamic header, inside the BAT, and
    /// just into the first data block: each fails the sync naming the import and the replica
    /// disk, and the next run repairs the replica.
    @Test(arguments: [0, 200, 700, 1_600, 4_000])
    func anUploadCutInsideTheVHDHeadFailsClearlyAndTheNextRunRepairs(cut: Int) async throws {
        let s = try Self.scenario()
        let lab = s.client()
        let dr = try s.client(pool: "dr")
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["write", "--vm", "web", "--percent", "20", "--seed", String(310 + cut % 97)]).status == 0)
        s.now = s.now.addingTimeInterval(3_700)
        #expect(try s.simControl(["fault", "--pool", "dr", "--rule", "upload-cut:\(cut)@count=1"]).status == 0)
        var run = try s.apply()
        #expect(run.status == 2, "cut \(cut): \(run.stdout)\(run.stderr)")
        let out = run.stdout + run.stderr
        #expect(out.contains("import_raw_vdi"), "cut \(cut): the error names the import: \(out)")
        // It names the disk and the pool it was going to, and does not call a pool that answered
        // and then dropped the upload unreachable.
        #expect(out.contains("the upload of disk 0 (web-root) onto replica replica-web on pool dr")
                || out.contains("the upload of disk 1 (web-data) onto replica replica-web on pool dr"), "cut \(cut): \(out)")
        #expect(!out.contains("could not be reached"), "cut \(cut): \(out)")
        #expect(try await T.replicas(dr).count == 1)
        try await F.expectNoStrays(lab, "cut \(cut): lab")
        try await F.expectNoStrays(dr, "cut \(cut): dr")
        run = try s.apply()
        #expect(run.status == 0, "cut \(cut): \(run.stdout)\(run.stderr)")
        try await Self.expectClean(s, lab, dr, "cut \(cut): the run after")
    }

    /// A target pool that cannot be read leaves nothing to plan: the plan says so, and does not
    /// claim that the pools match the configuration.
    @Test func aPlanWithErrorsAndNoActionsDoesNotSayThePoolsMatch() async throws {
        let s = try Self.scenario()
        #expect(try s.apply().status == 0)
        #expect(try s.simControl(["fault", "--pool", "dr", "--rule", "unreachable"]).status == 0)
        let diff = try s.diff()
        #expect(diff.status == 2, "\(diff.stdout)\(diff.stderr)")
        #expect(diff.stdout.contains("pool dr cannot be read"), "\(diff.stdout)")
        #expect(!diff.stdout.contains("The pools match the configuration"), "\(diff.stdout)")
        #expect(diff.stdout.contains("No changes planned, but what the errors above name could not be planned"), "\(diff.stdout)")
        #expect(try s.simControl(["fault", "--pool", "dr", "--clear"]).status == 0)
        #expect(try s.diff().stdout.contains("No changes. The pools match the configuration."))
    }
}

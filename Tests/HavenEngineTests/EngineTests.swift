import Foundation
import HavenCatalog
import HavenCore
import HavenEngine
import Testing
import XenAPI

/// The scheduler and the runners against an in-process `haven sim` with real nbdkit.
@Suite struct EngineTests {
    @Test func aReconcileBacksUpAndASecondOneIsANoOp() async throws {
        let h = try EngineHarness()
        let engine = try h.engine(try h.desired())
        let (report, events) = try await h.reconcile(engine)
        #expect(report.ok, "\(report.result.failed)")
        #expect(report.result.succeeded.filter { $0.0.kind == .backup }.count == 2)
        #expect(report.result.succeeded.allSatisfy { $0.0.kind != .backup || $0.1.backupID != nil })
        // Progress never goes backwards for a disk.
        var last: [String: Int64] = [:]
        for case .progress(let a, let disk, let done, _) in events {
            let key = "\(a.key)/\(disk)"
            #expect(done >= last[key, default: 0])
            last[key] = done
        }
        #expect(h.openSessions == 0, "every session is logged out")
        let (again, _) = try await h.reconcile(try h.engine(try h.desired()))
        #expect(again.plan.isEmpty)
    }

    @Test func aFailedBackupSkipsWhatRequiresItAndTheRestGoesOn() async throws {
        let h = try EngineHarness()
        let start = ISO8601DateFormatter().date(from: "2026-06-01T00:00:00Z")!
        var engine = try h.engine(try h.desired(policy: "  retention: {keepLast: 1}"))
        var report = try await engine.reconcile(ReconcileRequest(scope: TargetScope(pools: ["lab"], policies: nil), now: { start }),
                                                events: { _ in }, approve: { _ in true })
        #expect(report.ok)
        // A day later web's snapshot fails for good; db goes on.
        try h.fault("error:VM.snapshot:SR_BACKEND_FAILURE_44:,no space left,@count=50")
        engine = try h.engine(try h.desired(policy: "  retention: {keepLast: 1}"))
        let later = start.addingTimeInterval(25 * 3_600)
        report = try await engine.reconcile(ReconcileRequest(scope: TargetScope(pools: ["lab"], policies: nil), now: { later }),
                                            events: { _ in }, approve: { _ in true })
        #expect(!report.ok)
        let failed = report.result.failed.map(\.0)
        #expect(failed.map(\.kind) == [.backup, .backup], "both VMs' snapshots fail: \(failed.map(\.headline))")
        let skipped = report.result.skipped
        #expect(!skipped.isEmpty)
        #expect(skipped.allSatisfy { $0.1.contains("requires") && $0.1.contains("failed") }, "\(skipped.map(\.1))")
        #expect(skipped.contains { $0.0.kind == .prune }, "no version is pruned when its replacement failed")
        #expect(skipped.contains { $0.0.kind == .retireAnchor }, "the old anchor stays when the new backup failed")
        #expect(h.openSessions == 0)
    }

    @Test func anErrorIsNotGone() async throws {
        let h = try EngineHarness()
        let start = ISO8601DateFormatter().date(from: "2026-06-01T00:00:00Z")!
        var engine = try h.engine(try h.desired())
        let first = try await engine.reconcile(ReconcileRequest(scope: TargetScope(pools: ["lab"], policies: nil), now: { start }),
                                               events: { _ in }, approve: { _ in true })
        #expect(first.ok)
        let anchorsBefore = try engine.catalog.view().inventory.filter { $0.role == "cbt-anchor" }
        #expect(anchorsBefore.count == 2)
        // db leaves the policy: its anchor is to be retired, but the lookup times out.
        try h.fault("error:VDI.get_by_uuid:INTERNAL_ERROR:timeout talking to the storage manager@count=50")
        engine = try h.engine(try h.desired(vms: "[web]"))
        let report = try await engine.reconcile(ReconcileRequest(scope: TargetScope(pools: ["lab"], policies: nil), now: { start }),
                                                events: { _ in }, approve: { _ in true })
        let retire = report.result.failed.filter { $0.0.kind == .retireAnchor }
        #expect(retire.count == 1, "\(report.result.failed.map(\.1)) \(report.result.succeeded.map(\.1.summary))")
        #expect(retire.first?.1.contains("INTERNAL_ERROR") == true)
        let inventory = try engine.catalog.view().inventory
        #expect(inventory.contains { $0.uuid == retire.first?.0.key.subject }, "ownership is kept: a later run finds the anchor again")
        // Once the pool answers again, the next run retires it.
        try h.clearFaults()
        engine = try h.engine(try h.desired(vms: "[web]"))
        let (again, _) = try await h.reconcile(engine)
        #expect(again.result.succeeded.contains { $0.0.kind == .retireAnchor })
        #expect(try engine.catalog.view().inventory.filter { $0.role == "cbt-anchor" }.count == 1)
    }

    @Test func oneUnreachablePoolDoesNotStopTheOthers() async throws {
        let h = try EngineHarness()
        // A second pool on a loopback port nothing listens on.
        let branch = """
            ---
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: branch}
            spec:
              url: https://\(h.prefix).9:4443
              credentials: {username: root, passwordFile: \(h.dir.path)/password}
              tls: {caFile: \(h.endpoint.caFile)}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: branch-daily}
            spec: {pool: branch, vms: {names: [fileserver]}, repository: local}
            """
        let engine = try h.engine(try h.desired(extra: branch))
        let (report, _) = try await h.reconcile(engine)
        #expect(report.unreachable.keys.sorted() == ["branch"])
        #expect(!report.ok, "a pool that cannot be read makes the run fail")
        #expect(report.result.succeeded.filter { $0.0.kind == .backup }.count == 2, "lab is backed up all the same")
        #expect(report.plan.warnings.contains { $0.code == .poolUnreachable && $0.pool == "branch" })
    }

    @Test func cancellingStopsCleanly() async throws {
        let h = try EngineHarness()
        // Slow down the transfer so the cancel lands while it runs.
        try h.fault("latency:VDI.get_nbd_info:3s")
        let engine = try h.engine(try h.desired(vms: "[web]"))
        let started = EventBox()
        let task = Task {
            try await engine.reconcile(ReconcileRequest(scope: TargetScope(pools: ["lab"], policies: nil)), events: { started.add($0) },
                                       approve: { _ in true })
        }
        // Wait until the backup has started, then cancel.
        for _ in 0..<200 {
            if started.events.contains(where: { if case .started(let a) = $0 { return a.kind == .backup } else { return false } }) { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        try await Task.sleep(for: .milliseconds(800))
        task.cancel()
        let report = try await task.value
        #expect(!report.result.ok)
        let c = h.client()
        let snapshots = try await c.records(VMRecord.self).values.filter { $0.isASnapshot }
        #expect(snapshots.isEmpty, "no orphan snapshot: \(snapshots.map(\.nameLabel))")
        #expect(try engine.catalog.view().backups.isEmpty, "no half version")
        await c.logout()
        #expect(h.openSessions == 0, "the cancelled run logged out")
    }
}

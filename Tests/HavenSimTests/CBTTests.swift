import Foundation
import Testing
import XenAPI

@testable import HavenSim

@Suite struct CBTTests {
    @Test func fullCBTCycleReportsExactlyTheBlocksWritten() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let disks = try await c.disks(of: web)
        for d in disks { try await c.enableCBT(d) }
        let snap1 = try await c.snapshot(web, name: "backup-1")
        let snap1Disks = try await c.disks(of: snap1)
        #expect(try await c.record(snap1Disks[0]).cbtEnabled, "snapshot VDIs inherit cbt_enabled")

        let reply = try sim.control(["command": "write", "vm": "web", "disk": 0, "percent": 10, "seed": 42])
        let written = (reply["blocks"]?.arrayValue ?? []).compactMap(\.intValue).map(Int.init)
        #expect(!written.isEmpty)
        let snap2 = try await c.snapshot(web, name: "backup-2")
        let snap2Disks = try await c.disks(of: snap2)
        let changed = decodeBitmap(try await c.listChangedBlocks(from: snap1Disks[0], to: snap2Disks[0]))
        #expect(changed == written)
        #expect(decodeBitmap(try await c.listChangedBlocks(from: snap1Disks[1], to: snap2Disks[1])).isEmpty)

        // The bitmap covers the disk: 8 MiB / 64 KiB = 128 blocks = 16 bytes.
        let raw = Data(base64Encoded: try await c.listChangedBlocks(from: snap1Disks[0], to: snap2Disks[0]))
        #expect(raw?.count == 16)

        // data_destroy refuses while the snapshot VM still holds the VDI, then succeeds.
        await #expect(throws: XenAPIError(code: "VDI_IN_USE", parameters: [snap1Disks[0].raw, "data_destroy"])) {
            try await c.dataDestroy(snap1Disks[0])
        }
        try await c.destroy(snap1)
        try await c.dataDestroy(snap1Disks[0])
        let meta = try await c.record(snap1Disks[0])
        #expect(meta.type == "cbt_metadata")
        #expect(meta.cbtEnabled)
        // cbt_metadata still works as the older end of a comparison.
        _ = try sim.control(["command": "write", "vm": "web", "disk": 0, "percent": 3, "seed": 43])
        let snap3 = try await c.snapshot(web, name: "backup-3")
        let snap3Disks = try await c.disks(of: snap3)
        let across = Set(decodeBitmap(try await c.listChangedBlocks(from: snap1Disks[0], to: snap3Disks[0])))
        #expect(across.isSuperset(of: written))
        await #expect(throws: XenAPIError(code: "VDI_INCOMPATIBLE_TYPE", parameters: [snap1Disks[0].raw, "cbt_metadata"])) {
            _ = try await c.nbdInfo(snap1Disks[0])
        }
    }

    @Test func disablingCBTBreaksTheChain() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let disk = try await c.disks(of: web)[0]
        try await c.enableCBT(disk)
        let a = try await c.disks(of: try await c.snapshot(web, name: "a"))[0]
        try await c.disableCBT(disk)
        try await c.enableCBT(disk)
        let b = try await c.disks(of: try await c.snapshot(web, name: "b"))[0]
        do {
            _ = try await c.listChangedBlocks(from: a, to: b)
            Issue.record("unrelated VDIs must not compare")
        } catch let e as XenAPIError {
            #expect(e.code == "SR_BACKEND_FAILURE_460")
        }
        await #expect(throws: XenAPIError(code: "SR_BACKEND_FAILURE_460", parameters: ["", "CBTChangedBlocksError", "Source and target VDI are same"])) {
            _ = try await c.listChangedBlocks(from: b, to: b)
        }
    }

    @Test func cbtRulesOnSnapshotsAndLicences() async throws {
        let world = SimHarness.basicWorld.replacingOccurrences(of: "apiVersion: \"2.21\"", with: "apiVersion: \"2.15\"\n    licence: {cbt: false}")
        let sim = try SimHarness(world)
        let c = sim.client()
        let caps = try await c.login()
        #expect(!caps.canUseCBT)
        #expect(!caps.snapshotTakesIgnoreVDIs)
        let (web, _) = try await c.vm(named: "web")
        let disk = try await c.disks(of: web)[0]
        await #expect(throws: XenAPIError(code: "LICENCE_RESTRICTION", parameters: ["CBT"])) { try await c.enableCBT(disk) }
        // The 2.15 line has no ignore_vdis: the client sends two parameters, and three are refused.
        let snap = try await c.snapshot(web, name: "s")
        await #expect(throws: XenAPIError(code: "MESSAGE_PARAMETER_COUNT_MISMATCH", parameters: ["VM.snapshot", "2", "3"])) {
            _ = try await c.call(.vmSnapshot, [web.value, "x", []])
        }
        let snapDisk = try await c.disks(of: snap)[0]
        await #expect(throws: XenAPIError(code: "OPERATION_NOT_ALLOWED", parameters: ["VDI is a snapshot: \(snapDisk.raw)"])) {
            try await c.enableCBT(snapDisk)
        }
        await #expect(throws: XenAPIError(code: "VDI_NO_CBT_METADATA", parameters: [snapDisk.raw])) { try await c.dataDestroy(snapDisk) }
        await #expect(throws: XenAPIError(code: "OPERATION_NOT_ALLOWED", parameters: ["VDI is not a snapshot: \(disk.raw)"])) {
            try await c.dataDestroy(disk)
        }
    }

    @Test func preCBTPoolsDoNotKnowTheCalls() async throws {
        let world = SimHarness.basicWorld.replacingOccurrences(of: "apiVersion: \"2.21\"", with: "apiVersion: \"2.7\"")
        let sim = try SimHarness(world)
        let c = sim.client()
        let caps = try await c.login()
        #expect(!caps.hasCBTAPI)
        let (web, _) = try await c.vm(named: "web")
        let disk = try await c.disks(of: web)[0]
        await #expect(throws: XenAPIError(code: "MESSAGE_METHOD_UNKNOWN", parameters: ["VDI.enable_cbt"])) { try await c.enableCBT(disk) }
        await #expect(throws: XenAPIError(code: "MESSAGE_METHOD_UNKNOWN", parameters: ["VDI.get_nbd_info"])) { _ = try await c.nbdInfo(disk) }
    }

    @Test func ignoreVDIsLeavesDisksOutOfTheSnapshot() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let disks = try await c.disks(of: web)
        let snap = try await c.snapshot(web, name: "partial", ignoreVDIs: [disks[1]])
        let snapDisks = try await c.disks(of: snap)
        #expect(snapDisks.count == 1)
        #expect(try await c.record(snapDisks[0]).snapshotOf == disks[0])
    }
}

import DiskFormats
import Foundation
import Testing
import XenAPI

@testable import HavenSim

/// What the replication engine needs from a pool: a second pool to hold replicas, VMs made from
/// records, VHD deltas applied onto existing disks, revert, blocked operations, CBT on replicas.
@Suite struct ReplicationTests {
    static let twoPools = """
        pools:
          - name: prod
            port: 4443
            credentials: {username: root, password: prod-pw}
            hosts:
              - {name: prod-host1, address: "{A}.1"}
            srs:
              - {name: Prod SR, type: ext, size: 64Gi}
            networks:
              - {name: Prod network}
            vms:
              - name: app
                disks:
                  - {name: app-root, size: 8Mi, fill: {seed: 3}}
          - name: dr
            port: 4443
            credentials: {username: admin, password: dr-pw}
            hosts:
              - {name: dr-host1, address: "{A}.11"}
              - {name: dr-host2, address: "{A}.12"}
            srs:
              - {name: DR SR, type: ext, size: 64Gi}
            networks:
              - {name: DR network}
              - {name: DR backup network}
            vms:
              - name: app
                disks:
                  - {name: dr-app-root, size: 4Mi}
        """

    func client(_ sim: SimHarness, pool: String) throws -> XenAPIClient {
        let ep = try #require(sim.endpoints.first { $0.name == pool })
        return XenAPIClient(url: ep.masterURL, credentials: XenCredentials(username: ep.username, password: ep.password),
                            tls: ep.fingerprint.isEmpty ? .system : .caFile(ep.caFile), wire: .jsonrpc)
    }

    /// Makes a replica-like VM on `c`: VM from a record, one disk of `size`, a VIF on the first network.
    func makeReplica(_ c: XenAPIClient, name: String, size: Int64) async throws -> (VMRef, VDIRef) {
        var spec = NewVM(nameLabel: name, memory: 512 << 20)
        spec.vcpusMax = 2
        spec.vcpusAtStartup = 2
        spec.platform = ["vga": "std", "device-model": "qemu-upstream-compat"]
        spec.otherConfig = ["haven.replica-of": "source-uuid"]
        spec.haRestartPriority = "best-effort"
        let vm = try await c.createVM(spec)
        let sr = try #require(try await c.records(SRRecord.self).first { $0.value.contentType != "iso" }?.key)
        var disk = NewVDI(sr: sr, virtualSize: size, nameLabel: "\(name) disk 0")
        disk.otherConfig = ["haven.replica-disk": "0"]
        let vdi = try await c.createVDI(disk)
        _ = try await c.createVBD(NewVBD(vm: vm, vdi: vdi, userdevice: "0", bootable: true))
        let net = try #require(try await c.records(NetworkRecord.self).keys.sorted { $0.raw < $1.raw }.first)
        _ = try await c.createVIF(NewVIF(vm: vm, network: net, device: "0", mac: "0a:11:22:33:44:55"))
        return (vm, vdi)
    }

    func diskBytes(_ sim: SimHarness, pool: String, _ c: XenAPIClient, _ vdi: VDIRef) async throws -> [UInt8] {
        let p = try #require(sim.simulator.pool(named: pool))
        return try [UInt8](Data(contentsOf: URL(fileURLWithPath: p.disks.path(try await c.record(vdi).uuid))))
    }

    @Test func twoPoolsServeTheirOwnHostsCredentialsAndObjects() async throws {
        let sim = try SimHarness(Self.twoPools)
        #expect(sim.endpoints.map(\.name) == ["prod", "dr"])
        let written = try Simulator.endpoints(stateDirectory: sim.state.appendingPathComponent("state"))
        #expect(written.map(\.name) == ["prod", "dr"])
        #expect(written[1].hosts.count == 2 && written[1].username == "admin")
        let prod = try client(sim, pool: "prod")
        let dr = try client(sim, pool: "dr")
        #expect(try await prod.records(SRRecord.self).values.map(\.nameLabel).contains("Prod SR"))
        #expect(try await dr.records(SRRecord.self).values.map(\.nameLabel).contains("DR SR"))
        #expect(try await dr.records(NetworkRecord.self).count == 2)
        #expect(try await dr.records(HostRecord.self).count == 2)
        // Credentials are per pool.
        let wrong = XenAPIClient(url: written[1].masterURL, credentials: XenCredentials(username: "root", password: "prod-pw"),
                                 tls: .caFile(written[1].caFile), wire: .jsonrpc)
        await #expect(throws: XenAPIError.self) { _ = try await wrong.login() }

        // A VM named on both pools needs the pool; one named on one pool is found there.
        #expect(throws: (any Error).self) { _ = try sim.control(["command": "power", "vm": "app", "action": "start"]) }
        let (replica, _) = try await makeReplica(dr, name: "app-replica", size: 4 << 20)
        let reply = try sim.control(["command": "power", "vm": "app-replica", "action": "start"])
        #expect(reply["power_state"]?.stringValue == "Running")
        #expect(try await dr.record(replica).powerState == .running)
        let onProd = try Simulator.control(stateDirectory: sim.state.appendingPathComponent("state"), pool: "prod",
                                           ["command": "power", "vm": "app", "action": "start"])
        #expect(onProd["power_state"]?.stringValue == "Running")
    }

    @Test func vmCreateTakesAReplicaRecordAndRefusesMissingFieldsAsXapiDoes() async throws {
        let sim = try SimHarness(Self.twoPools)
        let dr = try client(sim, pool: "dr")
        var spec = NewVM(nameLabel: "replica", memory: 1 << 30)
        spec.hvmBootPolicy = "BIOS order"
        spec.hvmBootParams = ["order": "dc", "firmware": "uefi"]
        spec.platform = ["secureboot": "false"]
        spec.haRestartPriority = "restart"
        spec.extra = ["blocked_operations": .map(["start": "replica"])]
        let vm = try await dr.createVM(spec)
        let r = try await dr.record(vm)
        #expect(r.nameLabel == "replica" && r.powerState == .halted && !r.isATemplate)
        #expect(r.memoryStaticMax == 1 << 30 && r.vcpusMax == 1)
        #expect(r.hvmBootParams["firmware"] == "uefi" && r.platform["secureboot"] == "false")
        #expect(r.haRestartPriority == "restart" && r.domainType == "hvm")
        // xapi drops blocked_operations from the constructor record and adds a mac_seed.
        #expect(r.blockedOperations.isEmpty)
        #expect(r.otherConfig["mac_seed"] != nil)
        #expect(try await dr.metrics(of: vm).startDate == nil)

        var record = spec.record
        record["PV_legacy_args"] = nil
        await #expect(throws: XenAPIError(code: "INTERNAL_ERROR", parameters: ["Server_helpers.Dispatcher_FieldNotFound(\"PV_legacy_args\")"])) {
            _ = try await dr.createVM(record)
        }
        let sr = try #require(try await dr.records(SRRecord.self).keys.first)
        var vdi = NewVDI(sr: sr, virtualSize: 1 << 20).record
        vdi["read_only"] = nil
        await #expect(throws: XenAPIError(code: "INTERNAL_ERROR", parameters: ["Server_helpers.Dispatcher_FieldNotFound(\"read_only\")"])) {
            _ = try await dr.createVDI(vdi)
        }
        try await dr.setHARestartPriority(vm, "best-effort")
        #expect(try await dr.record(vm).haRestartPriority == "best-effort")
        await #expect(throws: XenAPIError(code: "INVALID_VALUE", parameters: ["ha_restart_priority", "always"])) {
            try await dr.setHARestartPriority(vm, "always")
        }
        // vCPU and memory settings are checked when the VM starts, not when it is made.
        var bad = NewVM(nameLabel: "bad", memory: 1 << 30)
        bad.vcpusAtStartup = 4
        bad.vcpusMax = 2
        let badVM = try await dr.createVM(bad)
        await #expect(throws: XenAPIError(code: "VALUE_NOT_SUPPORTED", parameters: ["VCPUs-at-startup", "4", "value greater than VCPUs-max"])) {
            try await dr.start(badVM)
        }
        // Destroying the VM leaves its disks; the VDI is destroyed on its own.
        let (replica, disk) = try await makeReplica(dr, name: "gone", size: 1 << 20)
        let vif = try #require(try await dr.record(replica).vifs.first)
        let vifRecord = try await dr.record(vif)
        #expect(vifRecord.mac == "0a:11:22:33:44:55" && vifRecord.mtu == 1500 && !vifRecord.macAutogenerated)
        try await dr.destroy(replica)
        #expect(try await dr.record(disk).vbds.isEmpty)
        try await dr.destroy(disk)
        await #expect(throws: XenAPIError.self) { _ = try await dr.record(disk) }
    }

    @Test func blockedOperationsComeFirstAndAStartStampsTheMetrics() async throws {
        let sim = try SimHarness(Self.twoPools)
        let dr = try client(sim, pool: "dr")
        let (vm, _) = try await makeReplica(dr, name: "blocked", size: 1 << 20)
        try await dr.setBlockedOperations(vm, ["start": "haven replica", "start_on": "haven replica", "resume": "haven replica"])
        #expect(try await dr.record(vm).blockedOperations["start"] == "haven replica")
        await #expect(throws: XenAPIError(code: "OPERATION_BLOCKED", parameters: [vm.raw, "haven replica"])) { try await dr.start(vm) }
        let host = try #require(try await dr.records(HostRecord.self).keys.first)
        await #expect(throws: XenAPIError(code: "OPERATION_BLOCKED", parameters: [vm.raw, "haven replica"])) { try await dr.start(vm, on: host) }
        // Blocked wins over a bad power state: block clean_shutdown of a halted VM.
        try await dr.block(vm, operation: "clean_shutdown", reason: "no")
        await #expect(throws: XenAPIError(code: "OPERATION_BLOCKED", parameters: [vm.raw, "no"])) { try await dr.cleanShutdown(vm) }
        #expect(try await dr.metrics(of: vm).startDate == nil)
        try await dr.setBlockedOperations(vm, [:])
        try await dr.start(vm)
        let metrics = try await dr.metrics(of: vm)
        #expect(metrics.startDate != nil && metrics.state == ["running"])
        try await dr.hardShutdown(vm)
        #expect(try await dr.metrics(of: vm).startDate == metrics.startDate, "start_time stays after the VM halts")
    }

    /// Someone starting a replica by hand with the official Python SDK (XML-RPC): refused while
    /// blocked, then running, with VM_metrics.start_time stamped, once unblocked.
    @Test func thePythonSDKStartsAnUnblockedReplica() async throws {
        let sim = try SimHarness(Self.twoPools)
        let dr = try client(sim, pool: "dr")
        let (vm, _) = try await makeReplica(dr, name: "by-hand", size: 1 << 20)
        try await dr.setBlockedOperations(vm, ["start": "haven replica"])
        let ep = try #require(sim.endpoints.first { $0.name == "dr" })
        let script = """
            import XenAPI
            s = XenAPI.Session("\(ep.masterURL)", ignore_ssl=True)
            s.xenapi.login_with_password("\(ep.username)", "\(ep.password)", "2.21", "by-hand")
            x = s.xenapi
            vm = x.VM.get_by_name_label("by-hand")[0]
            try:
                x.VM.start(vm, False, False)
                print("started while blocked")
            except XenAPI.Failure as f:
                print("refused", f.details[0], f.details[2])
            x.VM.remove_from_blocked_operations(vm, "start")
            x.VM.start(vm, False, False)
            print("power", x.VM.get_record(vm)["power_state"])
            print("start_time", str(x.VM_metrics.get_start_time(x.VM.get_metrics(vm))))
            s.xenapi.session.logout()
            """
        let (rc, out) = try run("python3", ["-c", script])
        #expect(rc == 0, "\(out)")
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.contains("refused OPERATION_BLOCKED haven replica"), "\(out)")
        #expect(lines.contains("power Running"), "\(out)")
        #expect(lines.contains { $0.hasPrefix("start_time ") && !$0.hasSuffix("19700101T00:00:00Z") }, "\(out)")
        #expect(try await dr.metrics(of: vm).startDate != nil)
    }

    /// Both XenServer's 2 MiB blocks and the small blocks replication sends (scattered 64 KiB
    /// changes without 2 MiB of padding each): vhd-tool takes the block size from the header.
    @Test(arguments: [2 << 20, 64 << 10])
    func aVHDDeltaOntoAnExistingVDIChangesOnlyItsSectorsAndCBTSeesThem(blockSize: Int) async throws {
        let sim = try SimHarness(Self.twoPools)
        let dr = try client(sim, pool: "dr")
        let size: Int64 = 6 << 20
        let (vm, vdi) = try await makeReplica(dr, name: "delta", size: size)
        // A full copy first, as the initial sync would write it.
        var base = [UInt8](repeating: 0, count: Int(size))
        var rng = SplitMix64(state: 42)
        for i in stride(from: 0, to: base.count, by: 8) {
            withUnsafeBytes(of: rng.next()) { for (j, b) in $0.enumerated() where i + j < base.count { base[i + j] = b } }
        }
        let full = base
        var offset = 0
        try await dr.importRawVDI(vdi, length: Int64(full.count)) { buf in
            let n = min(buf.count, full.count - offset)
            full.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + n)])) }
            offset += n
            return n
        }
        #expect(try await diskBytes(sim, pool: "dr", dr, vdi) == base)
        try await dr.enableCBT(vdi)
        let snap1 = try await dr.disks(of: try await dr.snapshot(vm, name: "sync 1"))[0]

        // Changes: one 64 KiB block, a few sectors in the middle of a 2 MiB block, the last sector.
        let writes: [(offset: UInt64, bytes: [UInt8])] = [
            (offset: 128 << 10, bytes: [UInt8](repeating: 0xA1, count: 64 << 10)),
            (offset: (3 << 20) + 4096, bytes: [UInt8](repeating: 0xB2, count: 1536)),
            (offset: UInt64(size) - 512, bytes: [UInt8](repeating: 0xC3, count: 512)),
        ]
        let delta = try VHDDelta(size: UInt64(size), writes: writes, blockSize: blockSize)
        #expect(delta.blockCount == 3)
        if blockSize < VHD.blockSize { #expect(delta.fileSize < 3 * Int64(blockSize + 512) + 8192, "no 2 MiB of padding per change") }
        let file = try VHDDelta.bytes(size: UInt64(size), writes: writes, blockSize: blockSize)
        #expect(Int64(file.count) == delta.fileSize)
        // Any VHD reader agrees on what the delta holds.
        var seen: [(UInt64, Int)] = []
        var at = 0
        _ = try VHD.read(from: { buf in
            let n = min(buf.count, file.count - at)
            file.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[at..<(at + n)])) }
            at += n
            return n
        }, write: { o, b in seen.append((o, b.count)) })
        #expect(seen.map(\.0) == writes.map(\.offset) && seen.map(\.1) == writes.map(\.bytes.count))

        let stream = VHDDeltaStream(delta) { o, buffer in
            for w in writes where w.offset <= o && o < w.offset + UInt64(w.bytes.count) {
                w.bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(o - w.offset)..<(Int(o - w.offset) + buffer.count)])) }
            }
        }
        try await dr.importRawVDI(vdi, format: .vhd, length: delta.fileSize) { try stream.read(into: $0) }
        var expected = base
        for w in writes { expected.replaceSubrange(Int(w.offset)..<(Int(w.offset) + w.bytes.count), with: w.bytes) }
        #expect(try await diskBytes(sim, pool: "dr", dr, vdi) == expected, "only the delta's sectors changed")

        let snap2 = try await dr.disks(of: try await dr.snapshot(vm, name: "sync 2"))[0]
        let changed = decodeBitmap(try await dr.listChangedBlocks(from: snap1, to: snap2))
        #expect(changed == [2, 48, 95], "64 KiB blocks 2, 48 (3 MiB + 4 KiB) and the last one")
    }

    /// An upload cut mid-stream (`upload-cut`): the import fails, the VHD's blocks that arrived
    /// before the cut are on the VDI and CBT logged them (tapdisk writes as data arrives), and
    /// nothing after the cut was written.
    @Test func aVHDImportCutMidStreamLeavesItsFirstBlocksWrittenAndLogged() async throws {
        let sim = try SimHarness(Self.twoPools)
        let dr = try client(sim, pool: "dr")
        let size: Int64 = 4 << 20
        let (vm, vdi) = try await makeReplica(dr, name: "cut", size: size)
        try await dr.enableCBT(vdi)
        let snap1 = try await dr.disks(of: try await dr.snapshot(vm, name: "sync 1"))[0]
        // Four 64 KiB blocks, far apart; the cut falls inside the second one's data.
        let writes: [(offset: UInt64, bytes: [UInt8])] = [0, 10, 20, 30].map { (offset: UInt64($0) << 16, bytes: [UInt8](repeating: UInt8(0x10 + $0), count: 64 << 10)) }
        let delta = try VHDDelta(size: UInt64(size), writes: writes, blockSize: 64 << 10)
        let file = try VHDDelta.bytes(size: UInt64(size), writes: writes, blockSize: 64 << 10)
        let head = Int(delta.fileSize) - 4 * (512 + (64 << 10)) - 512
        _ = try Simulator.control(stateDirectory: sim.state.appendingPathComponent("state"), pool: "dr",
                                  ["command": "fault", "rule": .string("upload-cut:\(head + (512 + (64 << 10)) + 512 + 1000)@count=1")])
        func upload() async throws {
            var at = 0
            try await dr.importRawVDI(vdi, format: .vhd, length: delta.fileSize) { buf in
                let n = min(buf.count, file.count - at)
                file.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[at..<(at + n)])) }
                at += n
                return n
            }
        }
        var failed = false
        do { try await upload() } catch { failed = true }
        #expect(failed, "the cut import fails")
        let bytes = try await diskBytes(sim, pool: "dr", dr, vdi)
        #expect(bytes[0..<(64 << 10)].allSatisfy { $0 == 0x10 }, "the first block arrived whole")
        #expect(bytes[(10 << 16)..<((10 << 16) + 1000)].allSatisfy { $0 == 0x1A }, "the second one up to the cut")
        #expect(bytes[((10 << 16) + 1000)..<(11 << 16)].allSatisfy { $0 == 0 }, "nothing after the cut")
        #expect(bytes[(20 << 16)...].allSatisfy { $0 == 0 }, "the blocks after the cut never came")
        let snap2 = try await dr.disks(of: try await dr.snapshot(vm, name: "after the cut"))[0]
        #expect(decodeBitmap(try await dr.listChangedBlocks(from: snap1, to: snap2)) == [0, 10], "CBT logged what was written")
        // The rule was used up: the same import goes through now.
        try await upload()
        #expect(try await diskBytes(sim, pool: "dr", dr, vdi)[(30 << 16)..<(31 << 16)].allSatisfy { $0 == 0x2E })
    }

    @Test func revertClonesTheSnapshotsDisksAndRestoresItsSettings() async throws {
        let sim = try SimHarness(Self.twoPools)
        let dr = try client(sim, pool: "dr")
        let (vm, vdi) = try await makeReplica(dr, name: "replica", size: 2 << 20)
        try await dr.enableCBT(vdi)
        try await dr.setBlockedOperations(vm, ["start": "replica"])
        let oldBytes = try await diskBytes(sim, pool: "dr", dr, vdi)
        let snap = try await dr.snapshot(vm, name: "restore point")
        let snapDisk = try await dr.disks(of: snap)[0]

        await #expect(throws: XenAPIError(code: "REVERT_ONLY_ALLOWED_ON_SNAPSHOT")) { try await dr.revert(to: vm) }

        // After the snapshot: the guest writes, someone unblocks it and renames it.
        _ = try sim.control(["command": "write", "vm": "replica", "percent": 50, "seed": 1])
        #expect(try await diskBytes(sim, pool: "dr", dr, vdi) != oldBytes)
        try await dr.setBlockedOperations(vm, [:])
        try await dr.setOtherConfig(vm, key: "haven.replica-of", value: "changed")

        try await dr.revert(to: snap)
        let r = try await dr.record(vm)
        #expect(r.powerState == .halted)
        #expect(r.parent == snap)
        #expect(r.blockedOperations == ["start": "replica"], "settings return to the snapshot's")
        #expect(r.otherConfig["haven.replica-of"] == "source-uuid")
        let disks = try await dr.disks(of: vm)
        #expect(disks.count == 1)
        let newDisk = try #require(disks.first)
        #expect(newDisk != vdi, "the VM's disk is a clone: a new VDI")
        await #expect(throws: XenAPIError.self) { _ = try await dr.record(vdi) }
        let newRecord = try await dr.record(newDisk)
        #expect(!newRecord.cbtEnabled, "SM does not carry CBT over to a clone")
        #expect(try await dr.record(snapDisk).snapshotOf == newDisk, "the snapshot's disk now hangs off the clone")
        #expect(try await diskBytes(sim, pool: "dr", dr, newDisk) == oldBytes)
        let vifs = try await dr.record(vm).vifs
        #expect(vifs.count == 1)
        #expect(try await dr.record(vifs[0]).mac == "0a:11:22:33:44:55")
        // The snapshot itself is untouched and can be reverted to again.
        #expect(try await dr.record(snap).isASnapshot)
    }

    @Test func cbtOnAReplicaSeesGuestWritesBetweenSnapshots() async throws {
        let sim = try SimHarness(Self.twoPools)
        let dr = try client(sim, pool: "dr")
        let (vm, vdi) = try await makeReplica(dr, name: "watched", size: 4 << 20)
        try await dr.enableCBT(vdi)
        let a = try await dr.disks(of: try await dr.snapshot(vm, name: "a"))[0]
        let b = try await dr.disks(of: try await dr.snapshot(vm, name: "b"))[0]
        #expect(decodeBitmap(try await dr.listChangedBlocks(from: a, to: b)).isEmpty, "nothing written between the syncs")
        let reply = try sim.control(["command": "write", "vm": "watched", "percent": 5, "seed": 9])
        let written = (reply["blocks"]?.arrayValue ?? []).compactMap(\.intValue).map(Int.init)
        #expect(!written.isEmpty)
        let c = try await dr.disks(of: try await dr.snapshot(vm, name: "c"))[0]
        #expect(decodeBitmap(try await dr.listChangedBlocks(from: b, to: c)) == written)
    }
}

import Foundation
import Testing
import XenAPI
import Synchronization

@testable import HavenSim

final class ByteBox: @unchecked Sendable {
    // @unchecked: appended to only by the one transfer thread, read after the transfer ends.
    var bytes: [UInt8] = []
}

@Suite struct DataPathTests {
    @Test func rawExportIsTheDiskAndRawImportWritesIt() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let disk = try await c.disks(of: web)[0]
        let uuid = try await c.record(disk).uuid
        let box = ByteBox()
        try await c.exportRawVDI(disk) { box.bytes.append(contentsOf: $0) }
        let onDisk = try [UInt8](Data(contentsOf: URL(fileURLWithPath: sim.pool.disks.path(uuid))))
        #expect(box.bytes == onDisk)

        // Import it into a new VDI and compare.
        let sr = try await c.record(disk).sr
        let target = try await c.createVDI(["SR": sr.value, "virtual_size": .int(Int64(onDisk.count)), "type": "user",
                                            "sharable": false, "read_only": false, "other_config": [:], "name_label": "copy"])
        var offset = 0
        let source = onDisk
        try await c.importRawVDI(target, length: Int64(source.count)) { buf in
            let n = min(buf.count, source.count - offset)
            source.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + n)])) }
            offset += n
            return n
        }
        let copyUUID = try await c.record(target).uuid
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: sim.pool.disks.path(copyUUID)))) == onDisk)
    }

    @Test func vhdExportIsAcceptedByQemuImgAndDeltasApply() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let base = try await c.disks(of: try await c.snapshot(web, name: "base"))[0]
        _ = try sim.control(["command": "write", "vm": "web", "disk": 0, "percent": 5, "seed": 5])
        let top = try await c.disks(of: try await c.snapshot(web, name: "top"))[0]
        let dir = sim.state.appendingPathComponent("vhd")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let full = ByteBox()
        try await c.exportRawVDI(top, format: .vhd) { full.bytes.append(contentsOf: $0) }
        let vhdPath = dir.appendingPathComponent("top.vhd").path
        try Data(full.bytes).write(to: URL(fileURLWithPath: vhdPath))
        let topUUID = try await c.record(top).uuid
        let (infoRC, info) = try run("qemu-img", ["info", "-f", "vpc", "--output", "json", vhdPath])
        #expect(infoRC == 0, "\(info)")
        #expect(info.contains("\"virtual-size\": \(8 << 20)"), "\(info)")
        let (cmp, cmpOut) = try run("qemu-img", ["compare", "-f", "vpc", "-F", "raw", vhdPath, sim.pool.disks.path(topUUID)])
        #expect(cmp == 0, "\(cmpOut)")

        // A delta against the base, imported onto a copy of the base, gives the top.
        let delta = ByteBox()
        try await c.exportRawVDI(top, format: .vhd, base: base) { delta.bytes.append(contentsOf: $0) }
        #expect(delta.bytes.count < full.bytes.count)
        let baseRecord = try await c.record(base)
        let restored = try await c.createVDI(["SR": baseRecord.sr.value, "virtual_size": .int(baseRecord.virtualSize), "type": "user",
                                              "sharable": false, "read_only": false, "other_config": [:]])
        let baseBox = ByteBox()
        try await c.exportRawVDI(base) { baseBox.bytes.append(contentsOf: $0) }
        for (bytes, format) in [(baseBox.bytes, DiskFormat.raw), (delta.bytes, DiskFormat.vhd)] {
            var offset = 0
            try await c.importRawVDI(restored, format: format, length: Int64(bytes.count)) { buf in
                let n = min(buf.count, bytes.count - offset)
                bytes.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + n)])) }
                offset += n
                return n
            }
        }
        let restoredUUID = try await c.record(restored).uuid
        let (same, sameOut) = try run("cmp", [sim.pool.disks.path(restoredUUID), sim.pool.disks.path(topUUID)])
        #expect(same == 0, "\(sameOut)")
    }

    @Test func xvaRoundTrip() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let snap = try await c.snapshot(web, name: "to-export")
        let box = ByteBox()
        try await c.exportXVA(snap) { box.bytes.append(contentsOf: $0) }
        // A real ustar stream whose first member is ova.xml.
        let path = sim.state.appendingPathComponent("export.xva").path
        try Data(box.bytes).write(to: URL(fileURLWithPath: path))
        let (rc, listing) = try run("tar", ["-tf", path])
        #expect(rc == 0)
        #expect(listing.split(separator: "\n").first == "ova.xml")
        #expect(listing.split(separator: "\n").contains { $0.hasPrefix("Ref:") && $0.hasSuffix("/00000000.xxhash") })

        let sr = try await c.record(try await c.disks(of: web)[0]).sr
        let bytes = box.bytes
        var offset = 0
        let vms = try await c.importXVA(sr: sr, length: Int64(bytes.count)) { buf in
            let n = min(buf.count, bytes.count - offset)
            bytes.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + n)])) }
            offset += n
            return n
        }
        #expect(vms.count == 1)
        let imported = try await c.disks(of: vms[0])
        let originals = try await c.disks(of: snap)
        #expect(imported.count == originals.count)
        for (a, b) in zip(imported, originals) {
            let (same, _) = try run("cmp", [sim.pool.disks.path(try await c.record(a).uuid), sim.pool.disks.path(try await c.record(b).uuid)])
            #expect(same == 0)
        }
    }
}

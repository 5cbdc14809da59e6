import DiskFormats
import Foundation
import Testing
import XenAPI

@testable import HavenSim

/// What xapi does with a snapshot's XVA, and reading one disk back out of an archive.
@Suite struct XVATests {
    func export(_ c: XenAPIClient, _ vm: VMRef) async throws -> [UInt8] {
        let box = ByteBox()
        try await c.exportXVA(vm) { box.bytes.append(contentsOf: $0) }
        return box.bytes
    }

    func ova(_ xva: [UInt8]) throws -> XenValue {
        let first = try #require(try Tar.parseHeader(Array(xva[0..<512])))
        #expect(first.name == "ova.xml")
        return try XMLRPC.parseValue(String(decoding: xva[512..<(512 + first.size)], as: UTF8.self))
    }

    @Test func aSnapshotExportsAsAVMAndImportsAsATemplateThatIsNoSnapshot() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let snap = try await c.snapshot(web, name: "nightly")
        try await c.setOtherConfig(snap, key: "marker", value: "kept")
        let bytes = try await export(c, snap)

        // The plain export writes the snapshot as a VM: no snapshot flag, no links to its source.
        let vm = try #require(try ova(bytes)["objects"]?.arrayValue?.first { $0["class"]?.stringValue == "VM" }?["snapshot"])
        #expect(vm["is_a_snapshot"]?.boolValue == false)
        #expect(vm["snapshot_of"]?.stringValue == "OpaqueRef:NULL")
        #expect(vm["is_a_template"]?.boolValue == true, "xapi's snapshots are templates and the export keeps that")

        let sr = try await c.record(try await c.disks(of: web)[0]).sr
        var offset = 0
        let imported = try await c.importXVA(sr: sr, length: Int64(bytes.count)) { buf in
            let n = min(buf.count, bytes.count - offset)
            bytes.withUnsafeBytes { buf.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + n)])) }
            offset += n
            return n
        }
        #expect(imported.count == 1)
        let r = try await c.record(try #require(imported.first))
        #expect(!r.isASnapshot)
        #expect(r.snapshotOf.isNull)
        #expect(r.isATemplate, "an imported snapshot export is a template until made a VM")
        #expect(r.otherConfig["marker"] == "kept", "other_config travels with the archive")
        #expect(try await c.record(web).snapshots.count == 1, "the source's snapshots are unchanged")
    }

    @Test func oneDiskComesOutOfAnArchiveFedInPiecesOfAnySize() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let snap = try await c.snapshot(web, name: "to-export")
        let bytes = try await export(c, snap)
        let snapDisks = try await c.disks(of: snap)
        for (n, vdi) in snapDisks.enumerated() {
            let record = try await c.record(vdi)
            let expected = try Data(contentsOf: URL(fileURLWithPath: sim.pool.disks.path(record.uuid)))
            var image = [UInt8](repeating: 0, count: Int(record.virtualSize))
            // The archive names disks Ref:<n>; find the one whose VBD has userdevice n.
            let objects = try ova(bytes)["objects"]?.arrayValue ?? []
            let vbd = try #require(objects.first { $0["class"]?.stringValue == "VBD" && $0["snapshot"]?["userdevice"]?.stringValue == String(n) })
            let id = try #require(vbd["snapshot"]?["VDI"]?.stringValue)
            let extractor = XVA.DiskExtractor(choose: { _ in XVA.Target(id: id, size: record.virtualSize) }, write: { offset, data in
                image.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[Int(offset)...]).copyMemory(from: data) }
            })
            // Odd piece sizes cross every header, padding and member boundary.
            var at = 0
            var piece = 1
            while at < bytes.count {
                let end = min(bytes.count, at + piece)
                try bytes[at..<end].withUnsafeBytes { try extractor.feed($0) }
                at = end
                piece = piece * 7 % 300_007 + 1
            }
            let summary = try extractor.finish()
            #expect(summary.chunks > 0)
            #expect(summary.verifiedChunks == summary.chunks, "every chunk's XXH64 was checked")
            #expect(Data(image) == expected, "disk \(n) out of the archive equals the disk")
        }
    }

    @Test func aDamagedChunkOrATruncatedArchiveIsRefused() async throws {
        let sim = try SimHarness(SimHarness.basicWorld)
        let c = sim.client()
        let (web, _) = try await c.vm(named: "web")
        let snap = try await c.snapshot(web, name: "to-export")
        let bytes = try await export(c, snap)
        let objects = try ova(bytes)["objects"]?.arrayValue ?? []
        let id = try #require(objects.first { $0["class"]?.stringValue == "VDI" }?["id"]?.stringValue)
        func run(_ archive: [UInt8]) throws {
            let extractor = XVA.DiskExtractor(choose: { _ in XVA.Target(id: id, size: 64 << 20) }, write: { _, _ in })
            try archive.withUnsafeBytes { try extractor.feed($0) }
            _ = try extractor.finish()
        }
        try run(bytes)
        // Flip a byte inside the first data member of that disk (its header is 512 bytes long).
        let first = try #require(findMember("\(id)/00000000", in: bytes))
        var damaged = bytes
        damaged[first + 512 + 100] ^= 0xff
        #expect(throws: XVA.FormatError.self) { try run(damaged) }
        #expect(throws: XVA.FormatError.self) { try run(Array(bytes[0..<(first + 512 + 1000)])) }
    }

    func findMember(_ name: String, in bytes: [UInt8]) -> Int? {
        var at = 0
        while at + 512 <= bytes.count, let m = try? Tar.parseHeader(Array(bytes[at..<(at + 512)])) {
            if m.name == name { return at }
            at += 512 + m.size + Tar.padding(for: m.size)
        }
        return nil
    }
}

import Foundation
import Testing

@testable import HavenData

/// Issue 13, defect 7: manifests restore cannot use, one damaged manifest hiding every version,
/// and restores that leave a partial image behind.
@Suite struct ManifestDefectTests {
    static func seeded(_ s: Scratch, versions count: Int = 2, keyFile: String? = nil) throws -> (BackupRepository, [BackupManifest]) {
        var maker = ImageMaker(state: 77)
        try maker.image(at: s.path("disk.img"), blocks: 48)
        let repo = try BackupRepository.initialize(at: s.path("repo"), keyFile: keyFile)
        var out: [BackupManifest] = []
        for i in 0..<count {
            if i > 0 { _ = try maker.change(s.path("disk.img"), blocks: 48, count: 6) }
            let d = try DiskBackup(repository: repo).run(.init(key: "0", name: "d", vdiUUID: "", sourceSnapshotVDI: "",
                                                               source: try FileDiskSource(path: s.path("disk.img"))))
            let m = BackupManifest(createdAt: Date().addingTimeInterval(Double(i)), kind: .full, vmUUID: "", vmName: "vm", pool: "", policy: "",
                                   vmRecord: [:], sourceSnapshotUUID: "", disks: [d])
            try repo.commit(m)
            out.append(m)
        }
        return (repo, out)
    }

    /// Writes a manifest file as it is, bypassing `commit`'s checks (what a bug, a bad disk or a
    /// hand edit could leave).
    static func writeRaw(_ m: BackupManifest, to repo: BackupRepository) throws {
        try repo.encodeManifest(m).write(to: repo.manifestURL(m.id))
    }

    @Test(arguments: ["size+3chunks", "size-3chunks", "negative", "2^62", "chunkSize0", "entries2^40", "depth"])
    func verifyAndRestoreRefuseInconsistentManifests(how: String) throws {
        let s = try Scratch()
        let (repo, versions) = try Self.seeded(s)
        var bad = versions[0]
        let chunk = Int64(bad.disks[0].chunkSize)
        switch how {
        case "size+3chunks": bad.disks[0].size += 3 * chunk
        case "size-3chunks": bad.disks[0].size -= 3 * chunk
        case "negative": bad.disks[0].size = -1
        case "2^62": bad.disks[0].size = 1 << 62
        case "chunkSize0": bad.disks[0].chunkSize = 0
        case "entries2^40": bad.disks[0].index.entries = 1 << 40
        default: bad.disks[0].index.depth = 3
        }
        try Self.writeRaw(bad, to: repo)

        let report = try repo.verify()
        #expect(!report.ok)
        let damaged = try #require(report.damagedVersions.first { $0.id == bad.id }, "\(report.damagedVersions)")
        #expect(damaged.error.code == .badManifest)
        #expect(!report.damagedVersions.contains { $0.id == versions[1].id })
        // Asked for by id, the same.
        #expect(try !repo.verify(versions: [bad.id]).ok)
        #expect(try repo.verify(versions: [versions[1].id]).ok)

        // The other version stays usable; the bad one is listed as damaged and cannot be restored.
        let list = try repo.manifests()
        #expect(list.map(\.id) == [versions[1].id])
        #expect(list.damaged.map(\.id) == [bad.id])
        #expect(throws: DataError.self) { try repo.manifest(bad.id) }

        // And commit never writes such a manifest in the first place.
        var again = bad
        again.id = BackupManifest.newID()
        let e = try #require(throws: DataError.self) { try repo.commit(again) }
        #expect(e.code == .badManifest)
        #expect(!FileManager.default.fileExists(atPath: repo.manifestURL(again.id).path))
    }

    @Test func aTruncatedManifestHidesOnlyItself() throws {
        let s = try Scratch()
        let (repo, versions) = try Self.seeded(s, versions: 3)
        let url = repo.manifestURL(versions[1].id)
        let bytes = try Data(contentsOf: url)
        try bytes.prefix(bytes.count / 2).write(to: url)

        let list = try repo.manifests()
        #expect(list.map(\.id) == [versions[0].id, versions[2].id])
        #expect(list.damaged.map(\.id) == [versions[1].id])
        let report = try repo.verify()
        #expect(report.damagedVersions.map(\.id) == [versions[1].id])
        #expect(report.problems.isEmpty)
        // GC cannot tell what the damaged version needs: it refuses, naming it, until it is forgotten.
        let e = try #require(throws: DataError.self) { try repo.collectGarbage(safetyWindow: 0) }
        #expect(e.code == .badManifest && e.subject == versions[1].id)
        try repo.prune(versions[1].id)
        _ = try repo.collectGarbage(safetyWindow: 0)
        #expect(try repo.verify().ok)
    }

    /// Flips a byte inside a data chunk of `disk` in the middle of the image, so that a restore
    /// fails part-way through (the index pages still read).
    static func damageMiddleChunk(of disk: DiskVersion, in repo: BackupRepository) throws {
        let entries = try DiskIndex.read(disk.index, from: repo)
        let data = entries.indices.filter { !entries[$0].isZero }
        let victim = entries[data[data.count / 2]]
        let loc = try #require(repo.location(of: victim))
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: loc.pack))
        defer { try? h.close() }
        try h.seek(toOffset: loc.offset + UInt64(loc.length / 2))
        let b = try #require(try h.read(upToCount: 1))
        try h.seek(toOffset: loc.offset + UInt64(loc.length / 2))
        try h.write(contentsOf: Data([b[0] ^ 0x40]))
    }

    @Test(arguments: ["raw", "vhd"])
    func aFailedRestoreLeavesNoImage(format: String) throws {
        let s = try Scratch()
        let (repo, versions) = try Self.seeded(s, versions: 1)
        let restore = DiskRestore(repository: repo, workers: 2)
        func write(_ path: String) throws {
            if format == "raw" { try restore.toRawFile(versions[0].disks[0], path: path) } else { try restore.toVHDFile(versions[0].disks[0], path: path) }
        }
        let out = s.url.appendingPathComponent("out")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)

        // A good restore: the image under its name, nothing else, private to its owner.
        try write(out.appendingPathComponent("good").path)
        #expect(try FileManager.default.contentsOfDirectory(atPath: out.path) == ["good"])
        var st = stat()
        #expect(stat(out.appendingPathComponent("good").path, &st) == 0 && st.st_mode & 0o777 == 0o600)

        try Self.damageMiddleChunk(of: versions[0].disks[0], in: repo)
        #expect(throws: DataError.self) { try write(out.appendingPathComponent("new").path) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: out.path) == ["good"], "no partial image, no temporary file")

        // Over an existing file (restore --force): on failure the old file is as it was.
        let old = out.appendingPathComponent("old").path
        try Data("the old image".utf8).write(to: URL(fileURLWithPath: old))
        #expect(throws: DataError.self) { try write(old) }
        #expect(try String(contentsOfFile: old, encoding: .utf8) == "the old image")
        #expect(try FileManager.default.contentsOfDirectory(atPath: out.path).sorted() == ["good", "old"])
    }

    static var havenBinary: String? { ProcessInfo.processInfo.environment["HAVEN_BIN"] }

    @Test(.enabled(if: havenBinary != nil, "HAVEN_BIN names the haven binary"))
    func listWarnsAndVerifyFailsOnADamagedManifest() throws {
        let s = try Scratch()
        let (repo, versions) = try Self.seeded(s)
        try Data("{\"id\": 3".utf8).write(to: repo.manifestURL(versions[0].id))
        let haven = try #require(Self.havenBinary)

        let list = try runCapturing(haven, ["backups", "list", "--repo", repo.root.path])
        #expect(list.status == 0, "\(list.stderr)")
        #expect(list.stdout.contains(versions[1].id))
        #expect(!list.stdout.contains(versions[0].id))
        #expect(list.stderr.contains("warning") && list.stderr.contains(versions[0].id), "\(list.stderr)")

        let json = try runCapturing(haven, ["backups", "list", "--repo", repo.root.path, "--output", "json"])
        #expect(json.status == 0)
        let obj = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect((obj?["damaged"] as? [[String: Any]])?.first?["id"] as? String == versions[0].id)

        let verify = try runCapturing(haven, ["repo", "verify", "--repo", repo.root.path])
        #expect(verify.status == 2)
        #expect(verify.stdout.contains("BAD version \(versions[0].id)"), "\(verify.stdout)")
    }
}

/// Runs a program; its exit status, standard output and standard error apart (standard error
/// through a file, so that neither pipe can fill while the other is read).
func runCapturing(_ program: String, _ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let errPath = FileManager.default.temporaryDirectory.appendingPathComponent("haven-stderr-\(UUID().uuidString)").path
    _ = FileManager.default.createFile(atPath: errPath, contents: nil)
    defer { unlink(errPath) }
    let errFile = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
    let p = Process()
    p.executableURL = URL(fileURLWithPath: program)
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = errFile
    try p.run()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    try errFile.close()
    let errText = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
    return (p.terminationStatus, String(decoding: outData, as: UTF8.self), errText)
}

import Foundation
import Testing

@testable import HavenData

/// Issue 13, defect 8: a repository readable by every local user, key files nobody checks, and
/// manifests of an encrypted repository in the clear.
@Suite struct PermissionTests {
    static func writeKey(_ path: String, hex: String, mode: mode_t) throws {
        try Data((hex + "\n").utf8).write(to: URL(fileURLWithPath: path))
        #expect(chmod(path, mode) == 0)
    }

    static func randomHex() -> String { (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined() }

    /// Every directory and file under `root`, with its permission bits.
    static func modes(under root: String) -> [(path: String, directory: Bool, mode: mode_t)] {
        var out: [(String, Bool, mode_t)] = []
        var st = stat()
        if stat(root, &st) == 0 { out.append((root, true, st.st_mode & 0o777)) }
        let e = FileManager.default.enumerator(atPath: root)
        while let p = e?.nextObject() as? String {
            let full = root + "/" + p
            guard lstat(full, &st) == 0 else { continue }
            out.append((full, (st.st_mode & S_IFMT) == S_IFDIR, st.st_mode & 0o777))
        }
        return out
    }

    @Test(arguments: [false, true])
    func repositoryIsPrivateToItsOwner(encrypted: Bool) throws {
        let s = try Scratch()
        let keyFile = encrypted ? s.path("key") : nil
        let (repo, versions) = try ManifestDefectTests.seeded(s, versions: 2, keyFile: keyFile)
        // A pack still being written, in tmp/.
        let bytes = [UInt8](repeating: 7, count: 70_000)
        _ = try bytes.withUnsafeBytes { try repo.putChunk(repo.chunkID(of: $0), $0) }
        _ = try repo.withLock(exclusive: false) { 1 }
        try DiskRestore(repository: repo).toRawFile(versions[0].disks[0], path: s.path("restored.raw"))

        let all = Self.modes(under: repo.root.path)
        #expect(all.contains { $0.path.contains("/packs/") && !$0.directory })
        #expect(all.contains { $0.path.contains("/tmp/") && !$0.directory })
        #expect(all.contains { $0.path.hasSuffix("/lock") })
        for f in all {
            #expect(f.mode == (f.directory ? 0o700 : 0o600), "\(f.path): \(String(f.mode, radix: 8))")
        }
        if let keyFile {
            var st = stat()
            #expect(stat(keyFile, &st) == 0 && st.st_mode & 0o777 == 0o600)
        }
        var st = stat()
        #expect(stat(s.path("restored.raw"), &st) == 0 && st.st_mode & 0o777 == 0o600)
    }

    @Test func aKeyFileOthersCanReadWarnsOnce() throws {
        let s = try Scratch()
        let key = s.path("open.key")
        try Self.writeKey(key, hex: Self.randomHex(), mode: 0o644)
        try BackupRepository.initialize(at: s.path("repo"), keyFile: key)
        _ = try BackupRepository.open(at: s.path("repo"), keyFile: key)
        let mine = DataWarnings.emitted.filter { $0.contains(key) }
        #expect(mine.count == 1, "\(mine)")
        #expect(mine.first?.contains("0644") == true)

        // A private key file says nothing.
        let quiet = s.path("quiet.key")
        try Self.writeKey(quiet, hex: Self.randomHex(), mode: 0o600)
        try BackupRepository.initialize(at: s.path("repo2"), keyFile: quiet)
        #expect(!DataWarnings.emitted.contains { $0.contains(quiet) })
        #expect(BackupRepository.keyFileWarning(path: quiet, mode: 0o100600) == nil)
        #expect(BackupRepository.keyFileWarning(path: quiet, mode: 0o100640) != nil)
    }

    @Test(.enabled(if: ManifestDefectTests.havenBinary != nil, "HAVEN_BIN names the haven binary"))
    func theWarningReachesStandardError() throws {
        let s = try Scratch()
        let key = s.path("open.key")
        try Self.writeKey(key, hex: Self.randomHex(), mode: 0o644)
        let run = try runCapturing(try #require(ManifestDefectTests.havenBinary), ["repo", "init", "--encrypt", "--key-file", key, s.path("repo")])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stderr.contains(key) && run.stderr.contains("0644"), "\(run.stderr)")
    }

    @Test func anAllZeroKeyIsRefused() throws {
        let s = try Scratch()
        let zero = s.path("zero.key")
        try Self.writeKey(zero, hex: String(repeating: "0", count: 64), mode: 0o600)
        let e = try #require(throws: DataError.self) { try BackupRepository.initialize(at: s.path("repo"), keyFile: zero) }
        #expect(e.code == .weakKey)
        #expect(!FileManager.default.fileExists(atPath: s.path("repo/config.json")))

        // Opening an encrypted repository with it is refused the same way.
        try BackupRepository.initialize(at: s.path("good"), keyFile: s.path("good.key"))
        let o = try #require(throws: DataError.self) { try BackupRepository.open(at: s.path("good"), keyFile: zero) }
        #expect(o.code == .weakKey)
    }

    @Test func anEncryptedRepositoryNamesNoVM() throws {
        let s = try Scratch()
        let secret = "zebracorn-payroll-7731"
        var maker = ImageMaker(state: 5)
        try maker.image(at: s.path("disk.img"), blocks: 32)
        let repo = try BackupRepository.initialize(at: s.path("repo"), keyFile: s.path("key"))
        let d = try DiskBackup(repository: repo).run(.init(key: "0", name: "\(secret)-root", vdiUUID: "", sourceSnapshotVDI: "",
                                                           source: try FileDiskSource(path: s.path("disk.img"))))
        let m = BackupManifest(kind: .full, vmUUID: "6f1c0e0a-0000-4000-8000-000000007731", vmName: secret, pool: "\(secret)-pool",
                               policy: "daily", vmRecord: [:], sourceSnapshotUUID: "", disks: [d], notes: ["why": "\(secret) nightly"])
        try repo.commit(m)

        // What `strings` over the repository would see: no file holds the name.
        let needle = Data(secret.utf8)
        var files = 0
        for f in Self.modes(under: repo.root.path) where !f.directory {
            files += 1
            let data = try Data(contentsOf: URL(fileURLWithPath: f.path))
            #expect(data.range(of: needle) == nil, "\(f.path) holds the VM name")
            #expect(data.range(of: Data(m.vmUUID.utf8)) == nil, "\(f.path) holds the VM uuid")
        }
        #expect(files >= 4)
        // And it reads back, through a fresh open too.
        let again = try BackupRepository.open(at: s.path("repo"), keyFile: s.path("key"))
        #expect(try again.manifests().map(\.vmName) == [secret])
        #expect(try again.verify().ok)

        // A sealed manifest renamed to another version does not open (the id is authenticated).
        let other = BackupManifest.newID()
        try FileManager.default.copyItem(at: repo.manifestURL(m.id), to: repo.manifestURL(other))
        let e = try #require(throws: DataError.self) { try again.manifest(other) }
        #expect(e.code == .badManifest)
    }

    @Test func plaintextManifestsOfEncryptedRepositoriesStillRead() throws {
        let s = try Scratch()
        let (repo, versions) = try ManifestDefectTests.seeded(s, versions: 1, keyFile: s.path("key"))
        // As haven wrote them before manifests were sealed.
        try BackupRepository.encoder.encode(versions[0]).write(to: repo.manifestURL(versions[0].id))
        let again = try BackupRepository.open(at: s.path("repo"), keyFile: s.path("key"))
        #expect(try again.manifest(versions[0].id).id == versions[0].id)
        #expect(try again.verify().ok)
    }
}

import Foundation
import Testing

@testable import HavenSpec

@Suite struct LoaderTests {
    static let pool = """
        apiVersion: haven/v1
        kind: Pool
        metadata: {name: lab}
        spec:
          url: https://xcp.example.com
          credentials: {username: root, passwordFile: secrets/pw}
        """

    func tempDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-spec-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir
    }

    func write(_ text: String, to url: URL) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: true, encoding: .utf8)
    }

    @Test func readsNestedDirectoriesAndSkipsHiddenAndIgnoredPaths() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        try write(Self.pool, to: dir.appendingPathComponent("pools/lab.yml"))
        try write("apiVersion: haven/v1\nkind: Repository\nmetadata: {name: r}\nspec: {path: repo}\n", to: dir.appendingPathComponent("repo.yaml"))
        try write("this is: [not valid", to: dir.appendingPathComponent(".git/config.yaml"))
        try write("this is: [not valid", to: dir.appendingPathComponent("sim/world.yaml"))
        try write("not yaml at all {", to: dir.appendingPathComponent("notes.txt"))
        try write("# simulator files\nsim/\n", to: dir.appendingPathComponent(".havenignore"))
        let result = SpecLoader.load(path: dir.path)
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        #expect(result.files.map { URL(fileURLWithPath: $0).lastPathComponent } == ["lab.yml", "repo.yaml"])
        let state = try #require(result.state)
        #expect(state.pools.first?.spec.credentials.passwordFile == dir.appendingPathComponent("pools/secrets/pw").path,
                "relative paths resolve against the file's directory")
        #expect(state.repositories.first?.spec.path == dir.appendingPathComponent("repo").path)
    }

    @Test func severalDocumentsPerFileAndEmptyDocuments() throws {
        let text = "---\n" + Self.pool + "\n---\n---\napiVersion: haven/v1\nkind: Repository\nmetadata: {name: r}\nspec: {path: /r}\n...\n"
        let result = SpecLoader.load(sources: [.init(path: "all.yaml", text: text)])
        let state = try #require(result.state)
        #expect(state.pools.count == 1)
        #expect(state.repositories.count == 1)
    }

    @Test func missingDirectoryAndEmptyDirectoryAreErrors() throws {
        #expect(SpecLoader.load(path: "/nonexistent/haven-config").errors.first?.code == .noFiles)
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let empty = SpecLoader.load(path: dir.path)
        #expect(empty.errors.map(\.code) == [.noFiles])
        #expect(!empty.isValid)
    }

    @Test func diagnosticsUseThePathAsTheUserGaveIt() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        try write("apiVersion: haven/v1\nkind: Pol\n", to: dir.appendingPathComponent("a.yaml"))
        let cwd = FileManager.default.currentDirectoryPath
        FileManager.default.changeCurrentDirectoryPath(dir.deletingLastPathComponent().path)
        defer { FileManager.default.changeCurrentDirectoryPath(cwd) }
        let given = dir.lastPathComponent
        let result = SpecLoader.load(path: given)
        #expect(result.errors.map(\.description) == ["\(given)/a.yaml:2:7: error: unknown kind 'Pol'; did you mean 'Pool'?"])
    }

    @Test func defaultsAreFilledIn() throws {
        let text = Self.pool + """

            ---
            apiVersion: haven/v1
            kind: Repository
            metadata: {name: local}
            spec: {path: /srv/haven}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: p}
            spec: {pool: lab, vms: {names: [a]}, repository: local}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: x}
            spec: {pool: lab, vms: {names: [b]}, repository: local, method: xva}
            """
        let state = try #require(SpecLoader.load(sources: [.init(path: "d.yaml", text: text)]).state)
        let p = state.backupPolicies[0].spec
        #expect(p.schedule.every == SpecDuration(seconds: 86_400))
        #expect(p.cbt)
        #expect(p.method == .auto)
        #expect(p.quiesce == .off)
        #expect(p.retention == .default)
        #expect(p.purgeSnapshotData)
        #expect(p.snapshotRetention == 1)
        #expect(!state.backupPolicies[1].spec.cbt, "method xva turns the CBT default off")
        let pool = state.pools[0].spec
        #expect(pool.limits == .init(snapshots: 2, transfers: 4))
        #expect(pool.nbd.connections == 4)
        #expect(state.repositories[0].spec.compression == .zstd(level: 3))
        #expect(state.repositories[0].spec.chunkSize == RepositorySpec.defaultChunkSize)
    }

    @Test func warningsDoNotMakeAConfigurationInvalid() throws {
        let text = """
            apiVersion: haven/v1
            kind: Pool
            metadata: {name: lab}
            spec:
              url: http://xcp.example.com
              insecure: true
              credentials: {username: root, passwordEnv: PW}
              tls: {insecureSkipVerify: true}
            """
        let result = SpecLoader.load(sources: [.init(path: "w.yaml", text: text)])
        #expect(result.isValid)
        #expect(result.warnings.map(\.location.line) == [5, 8])
        #expect(result.state?.pools[0].spec.insecure == true)
        #expect(result.warnings.allSatisfy { $0.code == .insecure })
    }

    @Test func fingerprintIsNormalized() throws {
        let hex = String(repeating: "ab", count: 32)
        let text = Self.pool + "\n  tls: {fingerprint: \(hex)}\n"
        let state = try #require(SpecLoader.load(sources: [.init(path: "f.yaml", text: text)]).state)
        #expect(state.pools[0].spec.tls.fingerprint == Array(repeating: "AB", count: 32).joined(separator: ":"))
    }

    @Test func selectorMatching() throws {
        let text = Self.pool + """

            ---
            apiVersion: haven/v1
            kind: Repository
            metadata: {name: local}
            spec: {path: /srv/haven}
            ---
            apiVersion: haven/v1
            kind: BackupPolicy
            metadata: {name: p}
            spec:
              pool: lab
              vms: {tags: [prod], names: [web], exclude: [db, 0a1b2c3d-0000-0000-0000-000000000001]}
              repository: local
            """
        let state = try #require(SpecLoader.load(sources: [.init(path: "s.yaml", text: text)]).state)
        let vms = state.backupPolicies[0].spec.vms
        #expect(vms.matches(name: "web", uuid: "u1", tags: []))
        #expect(vms.matches(name: "app", uuid: "u2", tags: ["prod"]))
        #expect(!vms.matches(name: "db", uuid: "u3", tags: ["prod"]))
        #expect(!vms.matches(name: "x", uuid: "0A1B2C3D-0000-0000-0000-000000000001", tags: ["prod"]))
        #expect(!vms.matches(name: "other", uuid: "u4", tags: ["dev"]))
    }

    @Test func normalizedStateEncodesToJSON() throws {
        let state = try #require(SpecLoader.load(sources: [.init(path: "j.yaml", text: Self.pool)]).state)
        let data = try JSONEncoder().encode(state)
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(object["apiVersion"] as? String == "haven/v1")
        let pools = try #require(object["pools"] as? [[String: Any]])
        let spec = try #require(pools.first?["spec"] as? [String: Any])
        #expect((spec["limits"] as? [String: Any])?["snapshots"] as? Int == 2)
        #expect(pools.first?["source"] as? String == "j.yaml:1:1")
    }
}

import DiskFormats
import Foundation
import Testing

/// Kills `haven repo import-image` at chosen points of a backup (the process dies with `_exit`,
/// no clean-up runs) and checks that every earlier version still restores bit-identically, that
/// the repository verifies, and that the next backup succeeds.
@Suite(.serialized) struct CrashTests {
    final class Workspace {
        let dir: URL
        init() throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-crash-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        }
        deinit { try? FileManager.default.removeItem(at: dir) }
        func path(_ n: String) -> String { dir.appendingPathComponent(n).path }
    }

    struct Rng {
        var s: UInt64
        mutating func next() -> UInt64 {
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let blocks = 96

    /// Writes random 64 KiB blocks (some left as holes) and returns the changed-block bitmap.
    func scribble(_ path: String, _ rng: inout SplitMix64, share: Int) throws -> String {
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? h.close() }
        try h.truncate(atOffset: UInt64(Self.blocks) * 65_536)
        var bitmap = [UInt8](repeating: 0, count: Self.blocks / 8)
        for b in 0..<Self.blocks where rng.next() % 100 < share {
            try h.seek(toOffset: UInt64(b) * 65_536)
            try h.write(contentsOf: Data((0..<8192).flatMap { _ in withUnsafeBytes(of: rng.next()) { Array($0) } }))
            bitmap[b / 8] |= 0x80 >> UInt8(b % 8)
        }
        return Data(bitmap).base64EncodedString()
    }

    func haven(_ args: [String], crashAt: Int? = nil) throws -> (Int32, String) {
        let r = try HavenBinary.run(args, environment: ["HAVEN_CRASH_AT": crashAt.map(String.init)])
        return (r.status, r.stdout + r.stderr)
    }

    func sha(_ path: String) throws -> String { try sha256(of: path) }

    /// Eight crash points in each of two incrementals and a full backup: 24 kills in all.
    @Test(arguments: [("incremental", 1), ("incremental", 2), ("full", 3)])
    func aKilledBackupLosesNothingAndTheNextOneSucceeds(kind: String, seed: UInt64) throws {
        let w = try Workspace()
        var rng = SplitMix64(state: seed)
        let image = w.path("disk.img")
        FileManager.default.createFile(atPath: image, contents: nil)
        _ = try scribble(image, &rng, share: 60)
        let repo = w.path("repo")
        #expect(try haven(["repo", "init", repo, "--chunk-size", "256Ki"]).0 == 0)
        // Two committed versions to protect.
        var committed: [(String, String)] = []
        var (rc, out) = try haven(["repo", "import-image", "--repo", repo, "--file", image])
        #expect(rc == 0, "\(out)")
        committed.append((out.trimmingCharacters(in: .whitespacesAndNewlines), try sha(image)))
        var bitmap = try scribble(image, &rng, share: 20)
        try bitmap.write(toFile: w.path("changed"), atomically: true, encoding: .utf8)
        (rc, out) = try haven(["repo", "import-image", "--repo", repo, "--file", image, "--base", committed[0].0, "--changed-blocks", w.path("changed")])
        #expect(rc == 0, "\(out)")
        committed.append((out.trimmingCharacters(in: .whitespacesAndNewlines), try sha(image)))

        // The backup that will be killed: an incremental on top, or a full of another image.
        bitmap = try scribble(image, &rng, share: 25)
        try bitmap.write(toFile: w.path("changed"), atomically: true, encoding: .utf8)
        let other = w.path("other.img")
        FileManager.default.createFile(atPath: other, contents: nil)
        _ = try scribble(other, &rng, share: 70)
        let args = kind == "full"
            ? ["repo", "import-image", "--repo", repo, "--file", other]
            : ["repo", "import-image", "--repo", repo, "--file", image, "--base", committed[1].0, "--changed-blocks", w.path("changed")]
        // Count its durable steps with a dry copy of the repository.
        let probe = w.path("probe")
        try FileManager.default.copyItem(atPath: repo, toPath: probe)
        var steps = 0
        for k in 1...400 {
            let (code, _) = try haven(args.map { $0 == repo ? probe : $0 }, crashAt: k)
            if code != 99 {
                steps = k - 1
                break
            }
            try FileManager.default.removeItem(atPath: probe)
            try FileManager.default.copyItem(atPath: repo, toPath: probe)
        }
        #expect(steps >= 8, "the backup has \(steps) durable steps")
        // Eight spread points (always including the last steps: sync, manifest write, rename).
        var points = Set([1, steps - 2, steps - 1, steps].filter { $0 >= 1 })
        while points.count < 8 { points.insert(1 + Int(rng.next() % UInt64(steps))) }
        for point in points.sorted() {
            let victim = w.path("victim-\(point)")
            try FileManager.default.copyItem(atPath: repo, toPath: victim)
            let (code, text) = try haven(args.map { $0 == repo ? victim : $0 }, crashAt: point)
            #expect(code == 99, "crash point \(point) did not kill: \(text)")
            // Every earlier version restores bit-identically.
            for (id, hash) in committed {
                let restored = w.path("restored-\(point)-\(id).raw")
                let (r, t) = try haven(["restore", "--repo", victim, "--backup", id, "--to-file", restored])
                #expect(r == 0, "\(t)")
                #expect(try sha(restored) == hash, "version \(id) after a crash at \(point)")
                try? FileManager.default.removeItem(atPath: restored)
            }
            #expect(try haven(["repo", "verify", "--repo", victim]).0 == 0)
            let listed = try haven(["backups", "list", "--repo", victim, "--output", "json"]).1
            let count = listed.components(separatedBy: "\"kind\"").count - 1
            #expect(count == 2 || (count == 3 && point == steps), "a version exists only once its manifest is in place")
            // The next backup succeeds and restores.
            let (again, againText) = try haven(args.map { $0 == repo ? victim : $0 })
            #expect(again == 0, "\(againText)")
            let id = againText.trimmingCharacters(in: .whitespacesAndNewlines)
            let restored = w.path("next-\(point).raw")
            #expect(try haven(["restore", "--repo", victim, "--backup", id, "--to-file", restored]).0 == 0)
            #expect(try sha(restored) == sha(kind == "full" ? other : image))
            try FileManager.default.removeItem(atPath: victim)
        }
    }
}

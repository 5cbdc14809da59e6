import Foundation
import DiskFormats
import HavenData

#if canImport(Glibc)
    import Glibc
#endif

/// The data-plane benchmark (issues 4 and 14): haven against nbdcopy, restic and borg, side by
/// side in one run, on a generated disk image (4 GiB; `HAVEN_BENCH_GIB`). Two tracks for full
/// backups — every tool reads the nbdkit export over TLS (borg and restic through `nbdcopy` on
/// their standard input), or every tool reads the same sparse file — with the same settings
/// (zstd level 3, fixed 64 KiB chunks for borg; haven encrypted beside restic), the same
/// durability (`sync -f` inside every timed region), CPU seconds beside wall time, nbdkit's CPU
/// apart, and `HAVEN_BENCH_ROUNDS` (3) interleaved rounds reported as median and range.
struct DataBench {
    let dir = URL(fileURLWithPath: ".bench/data")
    let size: Int64
    let haven: String
    var results: [String: Double] = [:]

    let chunkSize: String

    init(sizeGiB: Int, chunkSize: String) {
        size = Int64(sizeGiB) << 30
        self.chunkSize = chunkSize
        haven = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("haven").path
    }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

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

    static let words = Array("backup restore pool snapshot the of and a to in is data server log entry error warning info request user session time value index table row column page ".split(separator: " ").map(String.init))

    /// About a third never written, a third random, a fifth compressible text, the rest copies of
    /// a few recurring blocks: roughly what a used VM disk looks like.
    func generate(_ file: String) throws {
        if FileManager.default.fileExists(atPath: file) { return }
        let tmp = file + ".tmp"
        let fd = open(tmp, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        ftruncate(fd, off_t(size))
        var rng = SplitMix64(state: 20_261_121)
        let block = 65_536
        var buf = [UInt8](repeating: 0, count: block)
        var library: [[UInt8]] = []
        for i in 0..<16 {
            fill(&buf, &rng, text: i % 2 == 1)
            library.append(buf)
        }
        for b in 0..<Int(size / Int64(block)) {
            let roll = rng.next() % 100
            if roll < 34 { continue }
            if roll < 67 { fill(&buf, &rng, text: false) } else if roll < 87 { fill(&buf, &rng, text: true) } else {
                buf = library[Int(rng.next() % 16)]
            }
            _ = buf.withUnsafeBytes { pwrite(fd, $0.baseAddress, block, off_t(b) * off_t(block)) }
        }
        close(fd)
        rename(tmp, file)
    }

    func fill(_ buf: inout [UInt8], _ rng: inout SplitMix64, text: Bool) {
        if !text {
            buf.withUnsafeMutableBytes { p in
                for i in stride(from: 0, to: p.count, by: 8) { p.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self) }
            }
            return
        }
        var i = 0
        while i < buf.count {
            for c in Self.words[Int(rng.next() % UInt64(Self.words.count))].utf8 where i < buf.count {
                buf[i] = c
                i += 1
            }
            if i < buf.count {
                buf[i] = rng.next() % 9 == 0 ? 10 : 32
                i += 1
            }
        }
    }

    /// Copies `base` and rewrites 2% of its 64 KiB blocks; returns the base64 bitmap.
    func changedCopy(_ base: String, _ file: String, clustered: Bool) throws -> String {
        try run("cp", ["--sparse=always", base, file])
        let blocks = Int(size / 65_536)
        let want = blocks / 50
        var rng = SplitMix64(state: clustered ? 77 : 55)
        var chosen = Set<Int>()
        while chosen.count < want {
            let start = Int(rng.next() % UInt64(blocks))
            let run = clustered ? 8 + Int(rng.next() % 56) : 1
            for b in start..<min(blocks, start + run) where chosen.count < want { chosen.insert(b) }
        }
        let fd = open(file, O_WRONLY)
        var buf = [UInt8](repeating: 0, count: 65_536)
        for b in chosen {
            fill(&buf, &rng, text: rng.next() % 2 == 0)
            _ = buf.withUnsafeBytes { pwrite(fd, $0.baseAddress, 65_536, off_t(b) * 65_536) }
        }
        close(fd)
        return ChangedBlocks(diskSize: size, blocks: Array(chosen)).base64
    }

    /// Runs a tool to completion: status, output, wall seconds, and the peak RSS of that process
    /// alone, as GNU time reports it (the benchmark's own large heap must not leak into the figure:
    /// a process spawned straight from here inherits its high-water mark until exec).
    @discardableResult
    func run(_ tool: String, _ args: [String], env: [String: String] = [:]) throws -> (Int32, String, Double, Double) {
        let rssFile = dir.appendingPathComponent("rss-\(UUID().uuidString)").path
        defer { unlink(rssFile) }
        let result = try spawn("/usr/bin/time", ["-f", "%M", "-o", rssFile, "/usr/bin/env", tool] + args, env: env)
        let kib = Double((try? String(contentsOfFile: rssFile, encoding: .utf8))?.split(separator: "\n").last.map(String.init) ?? "") ?? 0
        return (result.0, result.1, result.2, kib / 1024)
    }

    func spawn(_ tool: String, _ args: [String], env: [String: String]) throws -> (Int32, String, Double) {
        let log = dir.appendingPathComponent("run-\(UUID().uuidString).log").path
        let (code, seconds, _) = try spawnMeasured(tool, args, env: env, log: log)
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        unlink(log)
        guard code == 0 else { throw DataError(.io, args.dropFirst(5).first ?? tool, "exit \(code): \(text.suffix(600))") }
        return (code, text, seconds)
    }

    /// Same starting state for every write-heavy run: dirty pages flushed, a short pause.
    func settle() throws {
        try run("sync", [])
        Thread.sleep(forTimeInterval: 1)
    }

    func du(_ path: String) throws -> Double {
        let out = try run("du", ["-sb", path]).1
        return Double(out.split(separator: "\t").first ?? "0") ?? 0
    }

    /// One timed command: wall seconds, CPU seconds (user + system, of everything it ran), peak
    /// RSS (MiB), its standard output, and the CPU nbdkit spent meanwhile.
    struct Timed {
        var wall: Double
        var cpu: Double
        var rss: Double
        var output: String
        var serverCPU: Double
    }

    /// Runs `command` through `sh -c`, then `sync -f target` inside the timed region (every tool
    /// pays for its data being on disk, whatever its own fsync policy), under GNU time.
    func timed(_ command: String, sync target: String?, env: [String: String] = [:], server: pid_t = 0) throws -> Timed {
        let stats = dir.appendingPathComponent("time-\(UUID().uuidString)").path
        defer { unlink(stats) }
        let full = target.map { "\(command) && sync -f \(Self.quote($0))" } ?? command
        let before = Self.cpuSeconds(of: server)
        let result = try spawn("/usr/bin/time", ["-f", "%M %U %S", "-o", stats, "/bin/sh", "-c", full], env: env)
        let after = Self.cpuSeconds(of: server)
        let fields = ((try? String(contentsOfFile: stats, encoding: .utf8)) ?? "").split(separator: "\n").last?.split(separator: " ").compactMap { Double($0) } ?? []
        return Timed(wall: result.2, cpu: fields.count == 3 ? fields[1] + fields[2] : 0, rss: (fields.first ?? 0) / 1024,
                     output: result.1, serverCPU: after - before)
    }

    static func quote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

    /// User + system CPU seconds of a running process (0 for pid 0).
    static func cpuSeconds(of pid: pid_t) -> Double {
        guard pid > 0, let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command: state is field 3, utime 14 and stime 15 (1-based, counting pid and comm).
        guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Median and range of several rounds.
    struct Spread {
        var values: [Double]
        var median: Double {
            let v = values.sorted()
            guard !v.isEmpty else { return 0 }
            return v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2
        }
        var low: Double { values.min() ?? 0 }
        var high: Double { values.max() ?? 0 }
    }

    /// The rounds of one tool on one track.
    struct Series {
        var wall: [Double] = []
        var cpu: [Double] = []
        var server: [Double] = []
        var rss: [Double] = []
        mutating func add(_ t: Timed) {
            wall.append(t.wall)
            cpu.append(t.cpu)
            server.append(t.serverCPU)
            rss.append(t.rss)
        }
        var w: Spread { Spread(values: wall) }
        var c: Spread { Spread(values: cpu) }
        var s: Spread { Spread(values: server) }
    }

    mutating func measure() throws {
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let gib = Double(size) / Double(1 << 30)
        let rounds = max(1, Int(ProcessInfo.processInfo.environment["HAVEN_BENCH_ROUNDS"] ?? "") ?? 3)
        let base = path("base-\(size >> 30)g.img")
        print("\ngenerating a \(size >> 30) GiB image (cached in .bench/data) …")
        try generate(base)
        let uniformBitmap = try changedCopy(base, path("uniform.img"), clustered: false)
        let clusteredBitmap = try changedCopy(base, path("clustered.img"), clustered: true)
        try uniformBitmap.write(toFile: path("uniform.cbt"), atomically: true, encoding: .utf8)
        try clusteredBitmap.write(toFile: path("clustered.cbt"), atomically: true, encoding: .utf8)
        try ChangedBlocks(diskSize: size, blocks: []).base64.write(toFile: path("none.cbt"), atomically: true, encoding: .utf8)

        let pki = path("pki")
        try? FileManager.default.createDirectory(atPath: pki, withIntermediateDirectories: true)
        let address = "127.33.33.1"
        if !FileManager.default.fileExists(atPath: pki + "/ca-cert.pem") {
            try run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", pki + "/server-key.pem",
                                "-out", pki + "/ca-cert.pem", "-days", "30", "-subj", "/CN=bench", "-addext", "subjectAltName=IP:\(address)",
                                "-addext", "basicConstraints=critical,CA:TRUE"])
            try run("cp", [pki + "/ca-cert.pem", pki + "/server-cert.pem"])
        }
        // One nbdkit, three read-only exports by name (the way xapi serves several VDIs).
        let nbdkit = Process()
        nbdkit.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        try? FileManager.default.removeItem(atPath: path("exports"))
        try FileManager.default.createDirectory(atPath: path("exports"), withIntermediateDirectories: true)
        for n in ["base", "uniform", "clustered"] {
            try FileManager.default.createSymbolicLink(atPath: path("exports/\(n)"), withDestinationPath: path(n == "base" ? "base-\(size >> 30)g.img" : "\(n).img"))
        }
        nbdkit.arguments = ["nbdkit", "--foreground", "--exit-with-parent", "-i", address, "-p", "10809", "--tls=require",
                            "--tls-certificates=\(pki)", "-r", "--no-sr", "--threads", "16", "file", "dir=\(path("exports"))"]
        nbdkit.standardError = FileHandle.nullDevice
        try nbdkit.run()
        defer {
            kill(nbdkit.processIdentifier, SIGKILL)
            nbdkit.waitUntilExit()
        }
        let server = nbdkit.processIdentifier
        Thread.sleep(forTimeInterval: 1)
        func uri(_ export: String) -> String { "nbds://\(address)/\(export)?tls-certificates=\(pki)" }
        let q = Self.quote
        let keyFile = path("haven.key")
        if !FileManager.default.fileExists(atPath: keyFile) {
            try (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined().appending("\n").write(toFile: keyFile, atomically: true, encoding: .utf8)
            chmod(keyFile, 0o600)
        }
        let resticEnv = ["RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": path("restic-cache")]
        let borgEnv = ["BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
                       "BORG_BASE_DIR": path("borg-home")]
        let borgOptions = "--compression zstd,3 --chunker-params fixed,65536"
        let nbdArgs = "--nbd \(address):10809/base --nbd-ca \(q(pki + "/ca-cert.pem"))"

        // Full backups: two tracks (every tool reads the NBD export, or every tool reads the
        // file), haven without encryption beside borg (none) and encrypted beside restic (which
        // always encrypts), interleaved rounds.
        enum Tool: String, CaseIterable { case haven, havenEncrypted = "haven-encrypted", borg, restic }
        var nbd: [Tool: Series] = [:]
        var file: [Tool: Series] = [:]
        var nbdcopyNull = Series()
        let plainRepo = path("haven-repo")
        let encryptedRepo = path("haven-enc-repo")
        let borgRepo = path("borg-repo")
        let resticRepo = path("restic-repo")
        func fresh(_ tool: Tool) throws -> String {
            switch tool {
            case .haven:
                try? FileManager.default.removeItem(atPath: plainRepo)
                try run(haven, ["repo", "init", plainRepo, "--chunk-size", chunkSize])
                return plainRepo
            case .havenEncrypted:
                try? FileManager.default.removeItem(atPath: encryptedRepo)
                try run(haven, ["repo", "init", encryptedRepo, "--chunk-size", chunkSize, "--encrypt", "--key-file", keyFile])
                return encryptedRepo
            case .borg:
                try? FileManager.default.removeItem(atPath: borgRepo)
                try run("borg", ["init", "--encryption=none", borgRepo], env: borgEnv)
                return borgRepo
            case .restic:
                try? FileManager.default.removeItem(atPath: resticRepo)
                try run("restic", ["init", "--repo", resticRepo], env: resticEnv)
                return resticRepo
            }
        }
        func command(_ tool: Tool, track: String, repo: String) -> (String, [String: String]) {
            let input = track == "nbd" ? "nbdcopy --no-extents \(q(uri("base"))) - | " : ""
            switch tool {
            case .haven:
                return ("\(q(haven)) repo import-image --repo \(q(repo)) " + (track == "nbd" ? nbdArgs : "--file \(q(base))"), [:])
            case .havenEncrypted:
                return ("\(q(haven)) repo import-image --repo \(q(repo)) --key-file \(q(keyFile)) " + (track == "nbd" ? nbdArgs : "--file \(q(base))"), [:])
            case .borg:
                return (input + "borg create \(borgOptions) \(q(repo))::full " + (track == "nbd" ? "-" : q(base)), borgEnv)
            case .restic:
                return (input + "restic backup --quiet --repo \(q(repo)) " + (track == "nbd" ? "--stdin --stdin-filename disk.img" : q(base)), resticEnv)
            }
        }
        var fullIDs: [Tool: String] = [:]
        for round in 1...rounds {
            print("round \(round) of \(rounds): full backups …")
            try settle()
            nbdcopyNull.add(try timed("nbdcopy --no-extents \(q(uri("base"))) null:", sync: nil, server: server))
            for track in ["nbd", "file"] {
                for tool in Tool.allCases {
                    let repo = try fresh(tool)
                    try settle()
                    let (cmd, env) = command(tool, track: track, repo: repo)
                    let t = try timed(cmd, sync: repo, env: env, server: server)
                    if track == "nbd" { nbd[tool, default: Series()].add(t) } else { file[tool, default: Series()].add(t) }
                    if tool == .haven || tool == .havenEncrypted { fullIDs[tool] = t.output.trimmingCharacters(in: .whitespacesAndNewlines) }
                }
            }
        }
        // The file track ran last: each repository holds its full backup of the base image.
        let fullID = fullIDs[.haven] ?? ""
        var peak = (nbd[.haven]?.rss ?? []).max() ?? 0

        // Incrementals (haven over NBD with the CBT bitmap), and their fixed cost: the same run
        // with nothing changed, three times.
        let certArgs = "--nbd-ca \(q(pki + "/ca-cert.pem"))"
        func incremental(_ export: String, _ bitmap: String) throws -> Timed {
            try settle()
            let t = try timed("\(q(haven)) repo import-image --repo \(q(plainRepo)) --nbd \(address):10809/\(export) \(certArgs) --base \(fullID) --changed-blocks \(q(path(bitmap)))",
                              sync: plainRepo, server: server)
            peak = max(peak, t.rss)
            return t
        }
        var fixed = Series()
        for _ in 0..<3 { fixed.add(try incremental("base", "none.cbt")) }
        let inc = try incremental("uniform", "uniform.cbt")
        let incID = inc.output.trimmingCharacters(in: .whitespacesAndNewlines)
        let havenRepoBytes = try du(plainRepo)
        let incClustered = try incremental("clustered", "clustered.cbt")
        let changedRead = try readChanged(address: address, pki: pki, export: "uniform", bitmap: uniformBitmap)
        let changedReadClustered = try readChanged(address: address, pki: pki, export: "clustered", bitmap: clusteredBitmap)

        // restic's and borg's second run: the changed image at the same path.
        _ = try fresh(.restic)
        try run("cp", ["--sparse=always", base, path("restic-src.img")])
        _ = try timed("restic backup --quiet --repo \(q(resticRepo)) \(q(path("restic-src.img")))", sync: resticRepo, env: resticEnv)
        try run("cp", ["--sparse=always", path("uniform.img"), path("restic-src.img")])
        try settle()
        let resticInc = try timed("restic backup --quiet --repo \(q(resticRepo)) \(q(path("restic-src.img")))", sync: resticRepo, env: resticEnv)
        let resticBytes = try du(resticRepo)
        _ = try fresh(.borg)
        try run("cp", ["--sparse=always", base, path("restic-src.img")])
        _ = try timed("borg create \(borgOptions) \(q(borgRepo))::full \(q(path("restic-src.img")))", sync: borgRepo, env: borgEnv)
        try run("cp", ["--sparse=always", path("uniform.img"), path("restic-src.img")])
        try settle()
        let borgInc = try timed("borg create \(borgOptions) \(q(borgRepo))::inc \(q(path("restic-src.img")))", sync: borgRepo, env: borgEnv)
        let borgBytes = try du(borgRepo)

        // Restores, same durability (each timed region ends with the image on disk): haven to a
        // raw file, restic restore, nbdcopy copying the same image from the export; interleaved.
        var havenRestore = Series()
        var resticRestore = Series()
        var nbdcopyToFile = Series()
        let restored = path("restore.raw")
        let resticTarget = path("restic-restore")
        for round in 1...rounds {
            print("round \(round) of \(rounds): restores …")
            try? FileManager.default.removeItem(atPath: restored)
            try settle()
            let h = try timed("\(q(haven)) restore --repo \(q(plainRepo)) --backup \(incID) --to-file \(q(restored))", sync: dir.path)
            havenRestore.add(h)
            peak = max(peak, h.rss)
            if round == 1 { try run("cmp", [restored, path("uniform.img")]) }
            try? FileManager.default.removeItem(atPath: restored)
            try settle()
            nbdcopyToFile.add(try timed("nbdcopy --no-extents --flush \(q(uri("uniform"))) \(q(restored))", sync: dir.path, server: server))
            try? FileManager.default.removeItem(atPath: restored)
            try? FileManager.default.removeItem(atPath: resticTarget)
            try settle()
            resticRestore.add(try timed("restic restore --quiet --repo \(q(resticRepo)) latest --target \(q(resticTarget))", sync: dir.path, env: resticEnv))
            try? FileManager.default.removeItem(atPath: resticTarget)
        }
        let restoreNBD = try restoreToNBD(repo: plainRepo, version: incID, address: address, pki: pki)
        let index = try indexBench()

        func med(_ s: Series?) -> Double { s?.w.median ?? 0 }
        let hNBD = med(nbd[.haven]), hNBDEnc = med(nbd[.havenEncrypted]), bNBD = med(nbd[.borg]), rNBD = med(nbd[.restic])
        let hFile = med(file[.haven]), hFileEnc = med(file[.havenEncrypted]), bFile = med(file[.borg]), rFile = med(file[.restic])
        let havenCPU = nbd[.haven]?.c.median ?? 0
        results = [
            "full_seconds": hNBD, "nbdcopy_seconds": nbdcopyNull.w.median, "restic_full_seconds": rNBD, "borg_full_seconds": bNBD,
            "full_speedup_vs_restic": rNBD / hNBDEnc, "full_speedup_vs_borg": bNBD / hNBD,
            "full_throughput_vs_nbdcopy": nbdcopyNull.w.median / hNBD,
            "nbd_full_speedup_vs_restic": rNBD / hNBDEnc, "nbd_full_speedup_vs_borg": bNBD / hNBD,
            "file_full_speedup_vs_restic": rFile / hFileEnc, "file_full_speedup_vs_borg": bFile / hFile,
            "full_encrypted_seconds": hNBDEnc, "file_full_seconds": hFile, "file_full_encrypted_seconds": hFileEnc,
            "file_restic_full_seconds": rFile, "file_borg_full_seconds": bFile,
            "full_cpu_seconds_per_gib": havenCPU / gib, "full_encrypted_cpu_seconds_per_gib": (nbd[.havenEncrypted]?.c.median ?? 0) / gib,
            "file_full_cpu_seconds_per_gib": (file[.haven]?.c.median ?? 0) / gib,
            "borg_cpu_seconds_per_gib": (nbd[.borg]?.c.median ?? 0) / gib, "restic_cpu_seconds_per_gib": (nbd[.restic]?.c.median ?? 0) / gib,
            "nbdkit_cpu_seconds_per_gib": (nbd[.haven]?.s.median ?? 0) / gib,
            "incremental_seconds": inc.wall, "incremental_clustered_seconds": incClustered.wall, "restic_incremental_seconds": resticInc.wall,
            "borg_incremental_seconds": borgInc.wall, "changed_read_seconds": changedRead, "changed_read_clustered_seconds": changedReadClustered,
            "incremental_speedup_vs_restic": resticInc.wall / inc.wall, "incremental_vs_changed_read": inc.wall / changedRead,
            "incremental_vs_changed_read_clustered": incClustered.wall / changedReadClustered,
            "incremental_fixed_ms": fixed.w.median * 1000,
            "restore_seconds": havenRestore.w.median, "nbdcopy_to_file_seconds": nbdcopyToFile.w.median, "restic_restore_seconds": resticRestore.w.median,
            "restore_throughput_vs_nbdcopy": nbdcopyToFile.w.median / havenRestore.w.median,
            "restore_speedup_vs_restic": resticRestore.w.median / havenRestore.w.median,
            "restore_cpu_seconds_per_gib": havenRestore.c.median / gib,
            "restore_nbd_seconds": restoreNBD.haven, "nbdcopy_to_nbd_seconds": restoreNBD.nbdcopy, "restore_nbd_throughput_vs_nbdcopy": restoreNBD.nbdcopy / restoreNBD.haven,
            "peak_rss_mib": peak, "repo_bytes_after_incremental": havenRepoBytes, "restic_repo_bytes_after_incremental": resticBytes,
            "borg_repo_bytes_after_incremental": borgBytes,
            "index_bytes_per_chunk": index.bytesPerChunk, "index_open_ms_per_million_chunks": index.openMsPerMillion,
            "bench_rounds": Double(rounds),
        ]
        func f(_ x: Double) -> String { String(format: "%.2f", x) }
        func r(_ s: Series?) -> String {
            guard let s else { return "" }
            return "\(f(s.w.median)) s (\(f(s.w.low))–\(f(s.w.high))), \(f(s.c.median)) CPU s"
        }
        func mib(_ x: Double) -> String { String(format: "%.0f MiB", x / 1_048_576) }
        print("""

            \(size >> 30) GiB disk, \(ProcessInfo.processInfo.activeProcessorCount) cores, chunks \(chunkSize), \(rounds) rounds: median (range), CPU seconds of the tool (nbdkit's apart)

            | track | haven | haven encrypted | borg zstd,3 fixed 64 KiB | restic | haven vs borg / vs restic (target ≥ 2× / ≥ 3.5×) |
            |---|---|---|---|---|---|
            | NBD (borg, restic: nbdcopy → stdin) | \(r(nbd[.haven])) | \(r(nbd[.havenEncrypted])) | \(r(nbd[.borg])) | \(r(nbd[.restic])) | \(f(bNBD / hNBD))× / \(f(rNBD / hNBDEnc))× |
            | file (same sparse file) | \(r(file[.haven])) | \(r(file[.havenEncrypted])) | \(r(file[.borg])) | \(r(file[.restic])) | \(f(bFile / hFile))× / \(f(rFile / hFileEnc))× |

            | measure | haven | peer | ratio | target |
            |---|---|---|---|---|
            | haven's CPU per GiB of full backup (NBD, plain) | \(f(havenCPU / gib)) s | nbdkit \(f((nbd[.haven]?.s.median ?? 0) / gib)) s | | ≤ 2.0 s |
            | full backup vs nbdcopy --no-extents → null | \(f(hNBD)) s | \(f(nbdcopyNull.w.median)) s | \(f(nbdcopyNull.w.median / hNBD)) of its throughput | |
            | 2% incremental (uniform) vs restic 2nd run | \(f(inc.wall)) s | \(f(resticInc.wall)) s | \(f(resticInc.wall / inc.wall))× faster | ≥ 20× |
            | 2% incremental (uniform) vs reading the changed blocks | \(f(inc.wall)) s | \(f(changedRead)) s | \(f(inc.wall / changedRead))× the time | ≤ 2.5× |
            | 2% incremental (clustered) vs reading the changed blocks | \(f(incClustered.wall)) s | \(f(changedReadClustered)) s | \(f(incClustered.wall / changedReadClustered))× the time | ≤ 2.5× |
            | fixed cost of an incremental (nothing changed) | \(f(fixed.w.median * 1000)) ms (\(f(fixed.w.low * 1000))–\(f(fixed.w.high * 1000))) | | | ≤ 60 ms |
            | repository after full + incremental vs restic / borg | \(mib(havenRepoBytes)) | \(mib(resticBytes)) / \(mib(borgBytes)) | \(f(havenRepoBytes / resticBytes)) of restic | ≤ 1 |
            | restore to raw file vs nbdcopy NBD → file (both synced) | \(r(havenRestore)) | \(r(nbdcopyToFile)) | \(f(nbdcopyToFile.w.median / havenRestore.w.median)) of its throughput | ≥ 1.0 |
            | restore vs restic restore (both synced) | \(f(havenRestore.w.median)) s | \(r(resticRestore)) | \(f(resticRestore.w.median / havenRestore.w.median))× faster | ≥ 3× |
            | restore to NBD export (flush) vs nbdcopy file → NBD | \(f(restoreNBD.haven)) s | \(f(restoreNBD.nbdcopy)) s | \(f(restoreNBD.nbdcopy / restoreNBD.haven)) of its throughput | ≥ 0.5 |
            | chunk index: resident bytes per chunk / open time per million chunks (\(index.chunks / 1_000_000)M chunks) | \(f(index.bytesPerChunk)) B / \(f(index.openMsPerMillion)) ms | | | 1 TiB (16M chunks) ≤ 256 MiB, < 1 s |
            | peak RSS of haven (any step) | \(f(peak)) MiB | | | ≤ 256 MiB |
            """)
    }

    /// The chunk index at scale, without the data: a repository whose pack indexes name
    /// `HAVEN_BENCH_INDEX_CHUNKS` random chunks (default 4 million, a 256 GiB repository of 64 KiB
    /// chunks). The first opening writes the runs; then opening is timed, and the memory it keeps
    /// after looking up 200,000 ids is divided by the chunks.
    func indexBench() throws -> (bytesPerChunk: Double, openMsPerMillion: Double, chunks: Int) {
        let chunks = Int(ProcessInfo.processInfo.environment["HAVEN_BENCH_INDEX_CHUNKS"] ?? "") ?? 4_000_000
        let repoPath = path("index-repo")
        print("chunk index of \(chunks) chunks …")
        var samples: [ChunkID] = []
        if !FileManager.default.fileExists(atPath: repoPath + "/config.json") {
            try? FileManager.default.removeItem(atPath: repoPath)
            try BackupRepository.initialize(at: repoPath)
            var rng = SplitMix64(state: 4_242)
            let perPack = 4_096
            var written = 0
            while written < chunks {
                let n = min(perPack, chunks - written)
                var idx = [UInt8](repeating: 0, count: n * 44)
                idx.withUnsafeMutableBytes { out in
                    for i in 0..<n {
                        for w in 0..<4 { out.storeBytes(of: rng.next(), toByteOffset: i * 44 + w * 8, as: UInt64.self) }
                        out.storeBytes(of: UInt64(i * 70_000).littleEndian, toByteOffset: i * 44 + 32, as: UInt64.self)
                        out.storeBytes(of: UInt32(65_000).littleEndian, toByteOffset: i * 44 + 40, as: UInt32.self)
                    }
                }
                let name = (0..<4).map { _ in String(format: "%08x", UInt32(truncatingIfNeeded: rng.next())) }.joined()
                try Data(idx).write(to: URL(fileURLWithPath: repoPath + "/index/" + name + ".idx"))
                written += n
            }
            // The first opening turns the pack indexes into runs (once).
            let start = DispatchTime.now().uptimeNanoseconds
            _ = try BackupRepository.open(at: repoPath)
            print(String(format: "  runs written in %.1f s", Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9))
        }
        var opens: [Double] = []
        for _ in 0..<3 {
            let start = DispatchTime.now().uptimeNanoseconds
            _ = try BackupRepository.open(at: repoPath)
            opens.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6)
        }
        // Ids that are there: the first of a few pack indexes.
        let names = (try FileManager.default.contentsOfDirectory(atPath: repoPath + "/index")).filter { $0.hasSuffix(".idx") }.prefix(64)
        for n in names {
            if let d = FileManager.default.contents(atPath: repoPath + "/index/" + n) {
                d.withUnsafeBytes { samples.append(ChunkID(raw: UnsafeRawBufferPointer(rebasing: $0[0..<32]))) }
            }
        }
        let before = currentRSSMiB()
        let repo = try BackupRepository.open(at: repoPath)
        var rng = SplitMix64(state: 99)
        var found = 0
        for i in 0..<200_000 {
            if i % 100 == 0, !samples.isEmpty {
                if repo.hasChunk(samples[i / 100 % samples.count]) { found += 1 }
            } else {
                var raw = [UInt8](repeating: 0, count: 32)
                raw.withUnsafeMutableBytes { for w in 0..<4 { $0.storeBytes(of: rng.next(), toByteOffset: w * 8, as: UInt64.self) } }
                _ = repo.hasChunk(ChunkID(bytes: raw))
            }
        }
        let after = currentRSSMiB()
        guard found == 2_000 || samples.isEmpty else { throw DataError(.io, repoPath, "the index lost chunks: \(found) of 2000 found") }
        let resident = max(0, after - before) * 1_048_576
        _ = repo
        return (resident / Double(chunks), Spread(values: opens).median / (Double(chunks) / 1e6), chunks)
    }

    /// Reads only the changed blocks over NBD with the same connections haven uses.
    func readChanged(address: String, pki: String, export: String, bitmap: String) throws -> Double {
        // Timed from connecting (TLS handshakes included), as haven's own run is.
        let start = DispatchTime.now().uptimeNanoseconds
        let source = try NBDDiskSource(NBDEndpoint(address: address, port: 10809, exportName: export, tls: .certificateDirectory(pki)), connections: 4)
        let changed = try ChangedBlocks(base64: bitmap, diskSize: source.size)
        var byChunk: [Int: [ByteRange]] = [:]
        for r in changed.ranges(within: 1 << 20) { byChunk[Int(r.offset >> 20), default: []].append(r) }
        let jobs = byChunk.keys.sorted().map { ReadJob(chunk: $0, ranges: byChunk[$0]!) }
        let pool = BufferPool(size: 1 << 20, limit: 64)
        try source.read(jobs, buffers: pool) { _, b in pool.release(b) }
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }

    /// haven's restore into a writable NBD export against nbdcopy writing the same image there.
    func restoreToNBD(repo: String, version: String, address: String, pki: String) throws -> (haven: Double, nbdcopy: Double) {
        let target = path("nbd-target.img")
        func serve() throws -> Process {
            try? FileManager.default.removeItem(atPath: target)
            try run("truncate", ["-s", String(size), target])
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["nbdkit", "--foreground", "--exit-with-parent", "-i", address, "-p", "10810", "--tls=require",
                           "--tls-certificates=\(pki)", "--threads", "16", "file", target]
            p.standardError = FileHandle.nullDevice
            try p.run()
            Thread.sleep(forTimeInterval: 0.5)
            return p
        }
        let repository = try BackupRepository.open(at: repo)
        let disk = try repository.manifest(version).disks[0]
        var p = try serve()
        try settle()
        var start = DispatchTime.now().uptimeNanoseconds
        try DiskRestore(repository: repository).toNBD(disk, endpoint: NBDEndpoint(address: address, port: 10810, exportName: "", tls: .certificateDirectory(pki)),
                                                      targetIsZero: true, connections: 4)
        let havenTime = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        try run("cmp", [target, path("uniform.img")])
        p = try serve()
        try settle()
        start = DispatchTime.now().uptimeNanoseconds
        try run("nbdcopy", ["--no-extents", "--flush", path("uniform.img"), "nbds://\(address):10810/?tls-certificates=\(pki)"])
        let copyTime = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        try? FileManager.default.removeItem(atPath: target)
        return (havenTime, copyTime)
    }
}

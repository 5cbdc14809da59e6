import Foundation
import DiskFormats
import HavenData

#if canImport(Glibc)
    import Glibc
#endif

/// The data-plane benchmark of issue 4: haven against nbdcopy, restic and borg, side by side in
/// one run, on a generated 4 GiB disk image served by nbdkit over TLS on loopback.
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
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var environment = ProcessInfo.processInfo.environment
        environment.merge(env) { _, b in b }
        let argv = ([tool] + args).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var pid: pid_t = 0
        let start = DispatchTime.now().uptimeNanoseconds
        guard posix_spawn(&pid, tool, &actions, nil, argv, envp) == 0 else { throw DataError(.io, tool, "cannot start") }
        var status: Int32 = 0
        var usage = rusage()
        while wait4(pid, &status, 0, &usage) < 0 && errno == EINTR {}
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        unlink(log)
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
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

    mutating func measure() throws {
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let base = path("base-\(size >> 30)g.img")
        print("\ngenerating a \(size >> 30) GiB image (cached in .bench/data) …")
        try generate(base)
        let uniformBitmap = try changedCopy(base, path("uniform.img"), clustered: false)
        let clusteredBitmap = try changedCopy(base, path("clustered.img"), clustered: true)
        try uniformBitmap.write(toFile: path("uniform.cbt"), atomically: true, encoding: .utf8)
        try clusteredBitmap.write(toFile: path("clustered.cbt"), atomically: true, encoding: .utf8)

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
        Thread.sleep(forTimeInterval: 1)
        func uri(_ export: String) -> String { "nbds://\(address)/\(export)?tls-certificates=\(pki)" }
        let tlsEnv: [String: String] = [:]

        // nbdcopy: the ceiling for reading the export.
        let nbdcopy = try run("nbdcopy", ["--no-extents", uri("base"), "null:"], env: tlsEnv).2
        // Only the changed blocks, same connections: the floor for an incremental.
        let changedRead = try readChanged(address: address, pki: pki, export: "uniform", bitmap: uniformBitmap)
        let changedReadClustered = try readChanged(address: address, pki: pki, export: "clustered", bitmap: clusteredBitmap)

        // haven full and incrementals over NBD/TLS.
        let repo = path("haven-repo")
        try? FileManager.default.removeItem(atPath: repo)
        try run(haven, ["repo", "init", repo, "--chunk-size", chunkSize])
        try settle()
        let full = try run(haven, ["repo", "import-image", "--repo", repo, "--nbd", "\(address):10809/base", "--nbd-ca", pki + "/ca-cert.pem"])
        let fullID = full.1.trimmingCharacters(in: .whitespacesAndNewlines)
        var peak = full.3
        try settle()
        let inc = try run(haven, ["repo", "import-image", "--repo", repo, "--nbd", "\(address):10809/uniform", "--nbd-ca", pki + "/ca-cert.pem",
                                  "--base", fullID, "--changed-blocks", path("uniform.cbt")])
        let incID = inc.1.trimmingCharacters(in: .whitespacesAndNewlines)
        peak = max(peak, inc.3)
        let havenRepoBytes = try du(repo)
        try settle()
        let incClustered = try run(haven, ["repo", "import-image", "--repo", repo, "--nbd", "\(address):10809/clustered", "--nbd-ca", pki + "/ca-cert.pem",
                                           "--base", fullID, "--changed-blocks", path("clustered.cbt")])
        peak = max(peak, incClustered.3)

        // restic: full, then the changed image (same path), then restore.
        let resticRepo = path("restic-repo")
        try? FileManager.default.removeItem(atPath: resticRepo)
        let resticEnv = ["RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": path("restic-cache")]
        try run("restic", ["init", "--repo", resticRepo], env: resticEnv)
        try run("cp", ["--sparse=always", base, path("restic-src.img")])
        try settle()
        let resticFull = try run("restic", ["backup", "--repo", resticRepo, path("restic-src.img")], env: resticEnv).2
        try run("cp", ["--sparse=always", path("uniform.img"), path("restic-src.img")])
        try settle()
        let resticInc = try run("restic", ["backup", "--repo", resticRepo, path("restic-src.img")], env: resticEnv).2
        let resticBytes = try du(resticRepo)

        // borg with fixed 64 KiB chunks.
        let borgRepo = path("borg-repo")
        try? FileManager.default.removeItem(atPath: borgRepo)
        let borgEnv = ["BORG_PASSPHRASE": "", "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
                       "BORG_BASE_DIR": path("borg-home")]
        try run("borg", ["init", "--encryption=none", borgRepo], env: borgEnv)
        try run("cp", ["--sparse=always", base, path("restic-src.img")])
        try settle()
        let borgFull = try run("borg", ["create", "--chunker-params", "fixed,65536", "\(borgRepo)::full", path("restic-src.img")], env: borgEnv).2
        try run("cp", ["--sparse=always", path("uniform.img"), path("restic-src.img")])
        try settle()
        let borgInc = try run("borg", ["create", "--chunker-params", "fixed,65536", "\(borgRepo)::inc", path("restic-src.img")], env: borgEnv).2
        let borgBytes = try du(borgRepo)

        // Restores: haven to a raw file and to an NBD export, nbdcopy copying the same image, restic restore.
        try? FileManager.default.removeItem(atPath: path("restore.raw"))
        try settle()
        let havenRestore = try run(haven, ["restore", "--repo", repo, "--backup", incID, "--to-file", path("restore.raw")])
        peak = max(peak, havenRestore.3)
        try run("cmp", [path("restore.raw"), path("uniform.img")])
        try? FileManager.default.removeItem(atPath: path("restore.raw"))
        try settle()
        let nbdcopyToFile = try run("nbdcopy", ["--no-extents", "--flush", uri("uniform"), path("restore.raw")]).2
        try? FileManager.default.removeItem(atPath: path("restore.raw"))
        let restore = try restoreToNBD(repo: repo, version: incID, address: address, pki: pki)
        try? FileManager.default.removeItem(atPath: path("restic-restore"))
        try settle()
        let resticRestore = try run("restic", ["restore", "--repo", resticRepo, "latest", "--target", path("restic-restore")], env: resticEnv).2
        try? FileManager.default.removeItem(atPath: path("restic-restore"))

        let fullTime = full.2
        results = [
            "full_seconds": fullTime, "nbdcopy_seconds": nbdcopy, "restic_full_seconds": resticFull, "borg_full_seconds": borgFull,
            "full_speedup_vs_restic": resticFull / fullTime, "full_speedup_vs_borg": borgFull / fullTime,
            "full_throughput_vs_nbdcopy": nbdcopy / fullTime,
            "incremental_seconds": inc.2, "incremental_clustered_seconds": incClustered.2, "restic_incremental_seconds": resticInc,
            "borg_incremental_seconds": borgInc, "changed_read_seconds": changedRead, "changed_read_clustered_seconds": changedReadClustered,
            "incremental_speedup_vs_restic": resticInc / inc.2, "incremental_vs_changed_read": inc.2 / changedRead,
            "incremental_vs_changed_read_clustered": incClustered.2 / changedReadClustered,
            "restore_seconds": havenRestore.2, "nbdcopy_to_file_seconds": nbdcopyToFile, "restic_restore_seconds": resticRestore,
            "restore_throughput_vs_nbdcopy": nbdcopyToFile / havenRestore.2, "restore_speedup_vs_restic": resticRestore / havenRestore.2,
            "restore_nbd_seconds": restore.haven, "nbdcopy_to_nbd_seconds": restore.nbdcopy, "restore_nbd_throughput_vs_nbdcopy": restore.nbdcopy / restore.haven,
            "peak_rss_mib": peak, "repo_bytes_after_incremental": havenRepoBytes, "restic_repo_bytes_after_incremental": resticBytes,
            "borg_repo_bytes_after_incremental": borgBytes,
        ]
        func f(_ x: Double) -> String { String(format: "%.2f", x) }
        func mib(_ x: Double) -> String { String(format: "%.0f MiB", x / 1_048_576) }
        print("""

            | \(size >> 30) GiB disk, \(ProcessInfo.processInfo.activeProcessorCount) cores, chunks \(chunkSize) | haven | peer | ratio | target |
            |---|---|---|---|---|
            | full backup vs restic | \(f(fullTime)) s | \(f(resticFull)) s | \(f(resticFull / fullTime))× faster | ≥ 3× |
            | full backup vs borg (fixed 64 KiB) | \(f(fullTime)) s | \(f(borgFull)) s | \(f(borgFull / fullTime))× faster | ≥ 1.5× |
            | full backup vs nbdcopy --no-extents → null | \(f(fullTime)) s | \(f(nbdcopy)) s | \(f(nbdcopy / fullTime)) of its throughput | ≥ 0.4 |
            | 2% incremental (uniform) vs restic 2nd run | \(f(inc.2)) s | \(f(resticInc)) s | \(f(resticInc / inc.2))× faster | ≥ 20× |
            | 2% incremental (uniform) vs reading the changed blocks | \(f(inc.2)) s | \(f(changedRead)) s | \(f(inc.2 / changedRead))× the time | ≤ 2.5× |
            | 2% incremental (clustered) vs reading the changed blocks | \(f(incClustered.2)) s | \(f(changedReadClustered)) s | \(f(incClustered.2 / changedReadClustered))× the time | ≤ 2.5× |
            | repository after full + incremental vs restic / borg | \(mib(havenRepoBytes)) | \(mib(resticBytes)) / \(mib(borgBytes)) | \(f(havenRepoBytes / resticBytes)) of restic | ≤ 1 |
            | restore to raw file (fsync) vs nbdcopy --flush NBD → file | \(f(havenRestore.2)) s | \(f(nbdcopyToFile)) s | \(f(nbdcopyToFile / havenRestore.2)) of its throughput | ≥ 0.5 |
            | restore to NBD export (flush) vs nbdcopy --flush file → NBD | \(f(restore.haven)) s | \(f(restore.nbdcopy)) s | \(f(restore.nbdcopy / restore.haven)) of its throughput | ≥ 0.5 |
            | restore vs restic restore | \(f(havenRestore.2)) s | \(f(resticRestore)) s | \(f(resticRestore / havenRestore.2))× faster | ≥ 3× |
            | peak RSS of haven (any step) | \(f(peak)) MiB | | | ≤ 256 MiB |
            """)
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

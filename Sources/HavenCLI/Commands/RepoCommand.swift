import ArgumentParser
import Foundation
import HavenData
import HavenCore
import HavenEngine
import HavenSpec

/// Which repository a command works on: a path, or a Repository of the configuration.
struct RepositoryOptions: ParsableArguments {
    @Option(name: .customLong("repo"), help: "Repository directory (instead of reading the configuration).")
    var path: String?

    @Option(name: .customLong("key-file"), help: "Key file of an encrypted repository given with --repo.")
    var keyFile: String?

    @Option(name: [.customShort("f"), .customLong("config")], help: "Configuration directory.")
    var config: String = "."

    @Option(help: "Repository resource to use when the configuration declares several.")
    var repository: String?

    func open() throws -> BackupRepository {
        do {
            if let path { return try BackupRepository.open(at: path, keyFile: keyFile) }
            let (p, k) = try fromConfig()
            return try BackupRepository.open(at: p, keyFile: k)
        } catch let e as DataError {
            throw CLIError(data: e)
        }
    }

    func fromConfig() throws -> (String, String?) {
        let result = SpecLoader.load(path: config)
        guard let state = result.state else {
            for d in result.errors { FileHandle.standardError.write(Data("\(d)\n".utf8)) }
            throw CLIError("\(config): the configuration is not valid; give --repo PATH or fix it")
        }
        let candidates = state.repositories.filter { repository == nil || $0.name == repository }
        guard candidates.count == 1, let r = candidates.first else {
            let names = state.repositories.map(\.name).joined(separator: ", ")
            throw CLIError(candidates.isEmpty ? "no Repository \(repository.map { "'\($0)' " } ?? "")in \(config) (declared: \(names))"
                 : "\(config) declares several repositories (\(names)); choose one with --repository")
        }
        return (r.spec.path, r.spec.encryption?.keyFile)
    }
}


func humanBytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var u = 0
    while v >= 1024, u < units.count - 1 {
        v /= 1024
        u += 1
    }
    return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
}

struct RepoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repo", abstract: "Create, check and clean a backup repository.",
        subcommands: [RepoInitCommand.self, RepoVerifyCommand.self, RepoGCCommand.self, RepoImportImageCommand.self])
}

struct RepoInitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init", abstract: "Create a repository.",
        discussion: "With --encrypt, chunks are sealed with AES-256-GCM; the key file is created (mode 0600) when it does not exist. Keep it safe: without it nothing can be restored.")

    @Argument(help: "Directory of the new repository.")
    var path: String

    @Flag(help: "Encrypt chunks and index pages.")
    var encrypt = false

    @Option(name: .customLong("key-file"), help: "Key file (required with --encrypt).")
    var keyFile: String?

    @Option(help: "Chunk size (a power of two from 64Ki to 64Mi).")
    var chunkSize: String = RepositorySpec.defaultChunkSize.description

    @Option(help: "none, zstd or zstd:N.")
    var compression: String = "zstd:3"

    func validate() throws {
        if encrypt && keyFile == nil { throw ValidationError("--encrypt needs --key-file") }
        if !encrypt && keyFile != nil { throw ValidationError("--key-file goes with --encrypt") }
    }

    func run() throws {
        guard case .success(let size) = ByteSize.parse(chunkSize) else { throw ValidationError("--chunk-size: '\(chunkSize)' is not a size") }
        guard case .success(let comp) = Compression.parse(compression) else { throw ValidationError("--compression: '\(compression)' is not none, zstd or zstd:N") }
        do {
            let repo = try BackupRepository.initialize(at: path, chunkSize: Int(size.bytes), compression: comp.description, keyFile: keyFile)
            print("created repository \(path) (id \(repo.config.id), chunks \(size), \(comp)\(encrypt ? ", encrypted with \(keyFile!)" : ""))")
        } catch let e as DataError {
            throw CLIError(data: e)
        }
    }
}

struct RepoVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Check every manifest, re-read and re-hash chunks; report every bad one with the versions that need it.",
        discussion: "Exit status 0 when everything checks out, 2 when any manifest is damaged or inconsistent, or any chunk is missing or damaged.")

    @OptionGroup var target: RepositoryOptions

    @Option(name: .customLong("version"), help: "Only these versions (repeatable); all when omitted.")
    var versions: [String] = []

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() throws {
        let repo = try target.open()
        let report: VerifyReport
        do {
            report = try repo.verify(versions: versions)
        } catch let e as DataError {
            throw CLIError(data: e)
        }
        if output == .json {
            let problems: [[String: Any]] = report.problems.map { ["chunk": $0.chunk, "code": $0.error.code.rawValue, "message": $0.error.message, "versions": $0.versions] }
            let damaged: [[String: Any]] = report.damagedVersions.map { ["id": $0.id, "code": $0.error.code.rawValue, "message": $0.error.message] }
            let obj: [String: Any] = ["ok": report.ok, "checkedChunks": report.checkedChunks, "checkedVersions": report.checkedVersions, "problems": problems,
                                      "damagedVersions": damaged]
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self))
        } else {
            for d in report.damagedVersions { print("BAD \(d)") }
            for p in report.problems { print("BAD \(p)") }
            print("\(report.ok ? "ok" : "FAILED"): \(report.checkedChunks) chunks of \(report.checkedVersions) versions checked, \(report.problems.count) bad"
                  + (report.damagedVersions.isEmpty ? "" : ", \(report.damagedVersions.count) damaged manifest\(report.damagedVersions.count == 1 ? "" : "s")"))
        }
        if !report.ok { throw HavenExit.failure }
    }
}

struct RepoGCCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc", abstract: "Delete chunks no version needs (older than the safety window).")

    @OptionGroup var target: RepositoryOptions

    @Option(help: "Keep unreferenced chunks younger than this (a backup may still be writing them).")
    var safetyWindow: String = "1h"

    @Option(help: "How long to wait for running backups to finish (seconds); forever when omitted.")
    var lockTimeout: Double?

    func run() throws {
        guard case .success(let window) = SpecDuration.parse(safetyWindow) else { throw ValidationError("--safety-window: not a duration") }
        let repo = try target.open()
        do {
            let r = try repo.collectGarbage(safetyWindow: TimeInterval(window.seconds), lockTimeout: lockTimeout)
            print("gc: \(r.liveChunks) chunks in use, \(r.deletedChunks) deleted (\(humanBytes(r.deletedBytes))), \(r.keptYoungChunks) unreferenced but younger than \(window) kept, \(r.removedTemporaryFiles) temporary files removed")
        } catch let e as DataError {
            throw CLIError(data: e)
        }
    }
}

/// Stores a disk image (a file, or an NBD export) as a backup version: seeds a repository,
/// and is how the data plane is exercised without a pool.
struct RepoImportImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-image", abstract: "Store a disk image file or NBD export as a backup version.")

    @OptionGroup var target: RepositoryOptions

    @Option(help: "Image file to read.")
    var file: String?

    @Option(help: "NBD address:port/export to read (plain, or TLS with --nbd-ca).")
    var nbd: String?

    @Option(help: "CA certificate (PEM) the NBD server's certificate must chain to.")
    var nbdCA: String?

    @Option(help: "Name recorded as the VM name.")
    var name: String = "image"

    @Option(help: "Version to patch (incremental).")
    var base: String?

    @Option(help: "File holding the base64 changed-block bitmap since --base.")
    var changedBlocks: String?

    @Option(help: "NBD connections.")
    var connections: Int = 4

    func run() throws {
        let repo = try target.open()
        do {
            let source: any DiskSource
            if let file {
                source = try FileDiskSource(path: file)
            } else if let nbd {
                let hostPort = nbd.split(separator: "/", maxSplits: 1).map(String.init)
                let hp = hostPort[0].split(separator: ":").map(String.init)
                let endpoint = NBDEndpoint(
                    address: hp[0], port: hp.count > 1 ? Int(hp[1]) ?? 10809 : 10809, exportName: hostPort.count > 1 ? hostPort[1] : "",
                    tls: nbdCA.map { .certificate((try? String(contentsOfFile: $0, encoding: .utf8)) ?? "") } ?? .off)
                source = try NBDDiskSource(endpoint, connections: connections)
            } else {
                throw ValidationError("give --file or --nbd")
            }
            var previous: DiskVersion?
            var changed: ChangedBlocks?
            if let base {
                guard let changedBlocks else { throw ValidationError("--base needs --changed-blocks") }
                previous = try repo.manifest(base).disks.first
                changed = try ChangedBlocks(base64: try String(contentsOfFile: changedBlocks, encoding: .utf8), diskSize: source.size)
            }
            let disk = try repo.withLock(exclusive: false) {
                try DiskBackup(repository: repo).run(.init(key: "0", name: name, vdiUUID: "", sourceSnapshotVDI: "", source: source,
                                                           previous: previous, changed: changed))
            }
            let manifest = BackupManifest(kind: previous == nil ? .full : .incremental, vmUUID: "", vmName: name, pool: "", policy: "",
                                          vmRecord: [:], sourceSnapshotUUID: "", disks: [disk])
            try repo.commit(manifest)
            print(manifest.id)
        } catch let e as DataError {
            throw CLIError(data: e)
        }
    }
}

struct BackupsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backups", abstract: "List, show or forget backup versions.",
        subcommands: [BackupsListCommand.self, BackupsShowCommand.self, BackupsForgetCommand.self])
}

extension BackupManifest {
    func matches(vm: String?) -> Bool { vm == nil || vmName == vm || vmUUID.lowercased() == vm?.lowercased() }
    var kindLabel: String { kind == .xva ? "xva archive" : kind.rawValue }
}

struct BackupsListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the versions in a repository, oldest first.",
        discussion: """
            A version whose manifest is damaged is not listed: a warning on standard error names it (with --output json, \
            `damaged` lists it too), and the others are listed as usual. Exit status 0 all the same: `haven repo verify` \
            is the check that fails (2) on a damaged repository; `haven backups forget ID` removes a damaged version.
            """)

    @OptionGroup var target: RepositoryOptions

    @Option(help: "Only this VM's versions (name or uuid).")
    var vm: String?

    @Option(help: "Only versions made for this BackupPolicy.")
    var policy: String?

    @Option(help: "Only versions of this pool.")
    var pool: String?

    @Option(help: "Only versions made since: a time (2026-05-01T12:00:00Z, 2026-05-01) or an age (24h, 7d).")
    var since: String?

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() throws {
        let from = try since.map { try parseTimeArgument($0, option: "--since") }
        let repo = try target.open()
        let all: ManifestList
        do { all = try repo.manifests() } catch let e as DataError { throw CLIError(data: e) }
        for d in all.damaged {
            FileHandle.standardError.write(Data("haven: warning: version \(d.id) is not listed, its manifest is damaged: \(d.error.message) (`haven repo verify` checks the rest; `haven backups forget \(d.id)` removes it)\n".utf8))
        }
        let list = all.versions.filter { m in
            m.matches(vm: vm) && (policy == nil || m.policy == policy) && (pool == nil || m.pool == pool) && (from.map { m.createdAt >= $0 } ?? true)
        }
        if output == .json {
            let f = ISO8601DateFormatter()
            let rows: [[String: Any]] = list.map { m in
                ["id": m.id, "vm": ["name": m.vmName, "uuid": m.vmUUID], "time": f.string(from: m.createdAt), "kind": m.kind.rawValue,
                 "size": m.totalSize, "storedBytes": m.storedBytes, "pool": m.pool, "policy": m.policy,
                 // An XVA version stores one stream, the whole-VM archive, not a disk image: say so.
                 "disks": m.disks.map { ["key": $0.key, "name": $0.name, "size": $0.size, "vdi": $0.vdiUUID,
                                         "content": $0.key == XVAArchive.key ? "xva-archive" : "disk"] }]
            }
            let damaged: [[String: Any]] = all.damaged.map { ["id": $0.id, "code": $0.error.code.rawValue, "message": $0.error.message] }
            print(try jsonText(["formatVersion": 1, "backups": rows, "damaged": damaged] as [String: Any]))
            return
        }
        if list.isEmpty {
            print("no backups")
            return
        }
        print(pad("ID", 34) + pad("VM", 16) + pad("POLICY", 16) + pad("TIME (UTC)", 21) + pad("KIND", 13) + pad("SIZE", 11) + "STORED")
        for m in list {
            print(pad(m.id, 34) + pad(m.vmName, 16) + pad(m.policy.isEmpty ? "-" : m.policy, 16) + pad(utcMinuteFormatter.string(from: m.createdAt), 21)
                  + pad(m.kindLabel, 13) + pad(humanBytes(m.totalSize), 11) + humanBytes(m.storedBytes))
        }
    }
}

struct BackupsShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Show one version: its VM, kind, base, disks, sizes and notes.")

    @OptionGroup var target: RepositoryOptions

    @Argument(help: "Version id (see `haven backups list`).")
    var id: String

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() throws {
        let repo = try target.open()
        let m: BackupManifest
        let all: [BackupManifest]
        do {
            m = try repo.manifest(id)
            all = try repo.manifests().versions
        } catch let e as DataError { throw CLIError(data: e) }
        // The version an incremental was patched into: recorded per disk when the engine notes it,
        // else the newest earlier version of the same VM and policy (what the CBT anchor pointed to).
        let recorded = Set(m.notes.filter { $0.key.hasPrefix("base.") }.map(\.value))
        let previous = all.filter { $0.vmUUID == m.vmUUID && $0.policy == m.policy && $0.createdAt < m.createdAt }.max { $0.createdAt < $1.createdAt }
        var base: String?
        var baseSource = ""
        if m.kind == .incremental {
            if let r = recorded.sorted().first {
                base = r
                baseSource = "recorded"
            } else if let previous {
                base = previous.id
                baseSource = "the previous version of this VM and policy"
            }
        }
        let baseExists = base.map { b in all.contains { $0.id == b } } ?? false
        if output == .json {
            let f = ISO8601DateFormatter()
            var obj: [String: Any] = [
                "formatVersion": 1, "id": m.id, "vm": ["name": m.vmName, "uuid": m.vmUUID], "pool": m.pool, "policy": m.policy,
                "time": f.string(from: m.createdAt), "kind": m.kind.rawValue, "size": m.totalSize, "storedBytes": m.storedBytes, "notes": m.notes,
                "disks": m.disks.map { ["key": $0.key, "name": $0.name, "size": $0.size, "vdi": $0.vdiUUID, "readBytes": $0.readBytes,
                                        "storedBytes": $0.storedBytes, "zeroChunks": $0.zeroChunks, "chunkSize": $0.chunkSize,
                                        "content": $0.key == XVAArchive.key ? "xva-archive" : "disk"] },
            ]
            if let base { obj["base"] = ["id": base, "source": baseSource, "present": baseExists] as [String: Any] }
            print(try jsonText(obj))
            return
        }
        print("Backup \(m.id)")
        print("  VM        \(m.vmName) (\(m.vmUUID))")
        print("  pool      \(m.pool.isEmpty ? "-" : m.pool), policy \(m.policy.isEmpty ? "-" : m.policy)")
        print("  made      \(utcMinuteFormatter.string(from: m.createdAt)) UTC")
        print("  kind      \(m.kindLabel)" + (m.kind == .incremental ? " (complete on its own: restoring it needs no other version)" : ""))
        if let base {
            print("  base      \(base) (\(baseSource)\(baseExists ? "" : "; since forgotten"))")
        }
        print("  size      \(humanBytes(m.totalSize)), \(humanBytes(m.storedBytes)) newly stored")
        print("  disks")
        for d in m.disks {
            print("    \(pad(d.key, 4))\(pad(d.name, 18))\(pad(humanBytes(d.size), 11))read \(pad(humanBytes(d.readBytes), 11))stored \(pad(humanBytes(d.storedBytes), 11))"
                  + (d.key == XVAArchive.key ? "the whole-VM XVA archive" : "vdi \(d.vdiUUID)"))
        }
        if !m.notes.isEmpty {
            print("  notes")
            for (k, v) in m.notes.sorted(by: { $0.key < $1.key }) { print("    \(k): \(v)") }
        }
    }
}

struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore", abstract: "Restore a backup version: one disk to a file, or the whole VM to a pool.",
        discussion: """
            `--disk N --to-file PATH` writes one disk as a sparse raw image or a dynamic VHD that qemu-img opens. \
            N is the disk's userdevice, else its position in userdevice order. For a version made with `method: xva` \
            the disk is taken out of the stored XVA archive; `--disk xva` writes the archive itself (for `xe vm-import`).
            `--to-pool NAME --sr NAME` recreates the VM on a declared pool: new MACs and a new name when the original \
            VM still exists there, its original name and MACs otherwise.
            """)

    @OptionGroup var target: RepositoryOptions

    @Option(help: "Version id (see `haven backups list`), or `latest` (with --vm).")
    var backup: String?

    @Option(help: "The VM whose version to restore (name or uuid), with --backup latest or --at.")
    var vm: String?

    @Option(help: "Only versions of this BackupPolicy (with --vm).")
    var policy: String?

    @Option(help: "The newest version at or before this time (2026-05-01T12:00:00Z, 2026-05-01, or an age such as 2d), with --vm.")
    var at: String?

    @Flag(help: "Overwrite the file --to-file names when it exists.")
    var force = false

    @Option(help: "Disk: its key (userdevice) or its position in the version; `xva` for the archive of an XVA version.")
    var disk: String = "0"

    @Option(help: "Write the disk to this file.")
    var toFile: String?

    enum Format: String, ExpressibleByArgument, CaseIterable { case raw, vhd }

    @Option(help: "raw or vhd.")
    var format: Format = .raw

    @Option(help: "Recreate the VM on this Pool (declared in the configuration).")
    var toPool: String?

    @Option(help: "SR (name_label) for the restored disks.")
    var sr: String?

    @Option(help: "Name of the restored VM.")
    var name: String?

    @Option(name: .customLong("state"), help: "haven's state directory.")
    var state: String?

    func validate() throws {
        if (toFile == nil) == (toPool == nil) { throw ValidationError("give either --to-file or --to-pool") }
        if toPool != nil && sr == nil { throw ValidationError("--to-pool needs --sr") }
        if backup == nil && at == nil { throw ValidationError("give --backup ID, --backup latest --vm NAME, or --at TIME --vm NAME") }
        if at != nil && backup != nil && backup != "latest" { throw ValidationError("--at chooses the version; do not give --backup ID with it") }
        if (backup == "latest" || at != nil) && vm == nil { throw ValidationError("--backup latest and --at need --vm NAME") }
        if policy != nil && vm == nil { throw ValidationError("--policy goes with --vm") }
    }

    /// The version asked for: by id, the newest of the VM, or the newest at or before --at.
    func resolve(_ repo: BackupRepository) throws -> BackupManifest {
        do {
            if let backup, backup != "latest" { return try repo.manifest(backup) }
            let limit = try at.map { try parseTimeArgument($0, option: "--at") }
            let mine = try repo.manifests().filter { $0.matches(vm: vm) && (policy == nil || $0.policy == policy) }
            guard let m = mine.filter({ m in limit.map { m.createdAt <= $0 } ?? true }).max(by: { $0.createdAt < $1.createdAt }) else {
                let whose = "VM \(vm ?? "")" + (policy.map { " in BackupPolicy \($0)" } ?? "")
                if mine.isEmpty { throw CLIError("no backup of \(whose) in the repository (see `haven backups list`)", code: .notFound) }
                let oldest = mine.map(\.createdAt).min()!
                throw CLIError("no backup of \(whose) at or before \(ISO8601DateFormatter().string(from: limit!)); the oldest is from \(ISO8601DateFormatter().string(from: oldest))", code: .notFound)
            }
            print("using \(m.id), made \(utcMinuteFormatter.string(from: m.createdAt)) UTC (\(at == nil ? "the newest" : "the newest at or before \(at!)") of \(m.vmName))")
            return m
        } catch let e as DataError { throw CLIError(data: e) }
    }

    func run() async throws {
        let repo = try target.open()
        let m = try resolve(repo)
        let backup = m.id
        if let toFile, FileManager.default.fileExists(atPath: toFile) {
            guard force else { throw CLIError("\(toFile) exists; nothing was written (give --force to overwrite it)", code: .exists) }
        }
        if let toFile, let archive = XVAArchive.stream(of: m) {
            try restoreFromXVA(m, archive: archive, repo: repo, to: toFile, backup: backup)
            return
        }
        if let toFile {
            guard let d = m.disks.first(where: { $0.key == disk }) ?? Int(disk).flatMap({ $0 < m.disks.count ? m.disks[$0] : nil }) else {
                throw CLIError("version \(backup) has no disk \(disk) (disks: \(m.disks.map { $0.key }.joined(separator: ", ")))")
            }
            do {
                let restore = DiskRestore(repository: repo)
                switch format {
                case .raw: try restore.toRawFile(d, path: toFile)
                case .vhd: try restore.toVHDFile(d, path: toFile)
                }
            } catch let e as DataError {
                throw CLIError(data: e)
            }
            print("restored disk \(d.key) of \(m.vmName) (\(humanBytes(d.size))) from \(backup) to \(toFile) (\(format.rawValue))")
            return
        }
        let result = SpecLoader.load(path: target.config)
        guard let desired = result.state, let pool = desired.pool(named: toPool!) else {
            throw CLIError("Pool '\(toPool!)' is not declared in \(target.config)")
        }
        let client = try PoolConnection.client(for: pool)
        do {
            let outcome = try await VMRestore(client: client, repository: repo).restore(m, srName: sr!, name: name) { print("  \($0)") }
            await client.logout()
            print("restored \(m.vmName) from \(backup) to pool \(pool.name) as '\(outcome.name)'" + (outcome.keptIdentity ? " (original name and MACs)" : " (new name and MACs: the original still exists)"))
        } catch {
            await client.logout()
            throw CLIError("\(error)")
        }
    }
}

extension RestoreCommand {
    /// A version made with `method: xva` holds the whole-VM archive, not disk images: a disk is
    /// taken out of the archive; `--disk xva` writes the archive as it is.
    func restoreFromXVA(_ m: BackupManifest, archive: DiskVersion, repo: BackupRepository, to path: String, backup: String) throws {
        if disk == XVAArchive.key {
            guard format == .raw else {
                throw CLIError("--disk xva is the XVA archive itself (a tar stream for `xe vm-import`), not a disk image, so it has no VHD form; give --disk N (a userdevice) for one of the VM's disks")
            }
            do {
                try DiskRestore(repository: repo).toRawFile(archive, path: path)
            } catch {
                throw CLIError("\(error)")
            }
            print("wrote the XVA archive of \(m.vmName) (\(humanBytes(archive.size))) from \(backup) to \(path): an XVA, not a disk image (import it with `xe vm-import`, or take one disk out with --disk N)")
            return
        }
        do {
            let r = try XVAArchive.extract(m, disk: disk, repository: repo, to: path, format: format == .vhd ? .vhd : .raw)
            print("restored disk \(r.disk.key) of \(m.vmName) (\(r.disk.name), \(humanBytes(r.disk.size))) from the XVA archive of \(backup) to \(path) (\(format.rawValue))")
        } catch {
            // A half-written image under the name the user asked for would pass for a good one.
            unlink(path)
            throw CLIError("\(error)")
        }
    }
}

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Per VM: its policy, last attempt, last good backup, next due, and whether the RPO is met.",
        discussion: """
            The last attempt comes from the run history (`haven history`): the last backup an apply or backup now \
            ran for the VM, with its result. A suspended policy is shown as such; its VMs have no next due time.

            Exit status: 0; with --check, 3 when the RPO of any VM of a policy that is not suspended is missed \
            (for monitoring); 2 on error.
            """)

    @OptionGroup var options: EngineOptions

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    @Flag(help: "Exit 3 when any RPO is missed (suspended policies are not counted).")
    var check = false

    func run() async throws {
        let desired = try options.loadDesired()
        let engine = try options.engine(desired)
        let now = currentTime()
        let scope = try options.scope(desired)
        // One computation for this command and the daemon's /api/v1/status.
        let report = try await engine.status(pools: scope.pools, policies: scope.policies, now: now)
        if output == .text {
            for name in report.unreachablePools {
                let why = report.unreachableReasons[name].map { " (\($0))" } ?? ""
                FileHandle.standardError.write(Data("haven: pool \(name) cannot be read\(why); its VMs are shown from the catalog\n".utf8))
            }
        }
        let rows = report.vms
        let replicas = report.replicas
        let missed = report.rpoMissed
        if output == .json {
            print(try report.json())
        } else {
            let f = DateFormatter()
            f.dateFormat = "yyyy-MM-dd HH:mm"
            f.timeZone = TimeZone(identifier: "UTC")
            func age(_ d: Date) -> String {
                let s = Int(now.timeIntervalSince(d))
                return s < 7_200 ? "\(s / 60)m ago" : s < 172_800 ? "\(s / 3_600)h ago" : "\(s / 86_400)d ago"
            }
            print(pad("POOL", 10) + pad("VM", 16) + pad("POLICY", 16) + pad("SUSPENDED", 10) + pad("LAST ATTEMPT", 12)
                  + pad("LAST GOOD BACKUP (UTC)", 28) + pad("NEXT DUE (UTC)", 18) + pad("VERSIONS", 9) + "RPO")
            for r in rows {
                let last = r.lastBackup.map { "\(f.string(from: $0)) (\(age($0)))" } ?? "never"
                let next = r.suspended ? "-" : r.nextDue.map { $0 <= now ? "now" : f.string(from: $0) } ?? "-"
                let suspended = r.suspendedBy == "command" ? "yes (cmd)" : r.suspended ? "yes" : "no"
                print(pad(r.pool, 10) + pad(r.vm, 16) + pad(r.policy, 16) + pad(suspended, 10) + pad(r.lastAttempt?.result ?? "-", 12)
                      + pad(last, 28) + pad(next, 18) + pad(String(r.versions), 9) + (r.rpoMet ? "met" : "MISSED"))
            }
            if !replicas.isEmpty {
                print("")
                print(pad("REPLICA OF", 16) + pad("POLICY", 12) + pad("REPLICA", 20) + pad("TARGET", 10) + pad("LAST SYNC (UTC)", 28) + pad("LAG", 9)
                      + pad("POINTS", 8) + "STATE")
                for r in replicas {
                    print(pad(r.vm, 16) + pad(r.policy, 12) + pad(r.replica.isEmpty ? r.replicaUUID : r.replica, 20) + pad(r.targetPool, 10)
                          + pad(r.lastSync.map { "\(f.string(from: $0)) (\(age($0)))" } ?? "never", 28)
                          + pad(r.lagSeconds.map { $0 > 0 ? humanDuration($0) : "none" } ?? "-", 9) + pad(r.restorePoints.map(String.init) ?? "-", 8) + r.state)
                }
            }
        }
        if check && missed { throw HavenExit.rpoMissed }
    }
}

struct CatalogCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalog", abstract: "Work on haven's catalog.", subcommands: [CatalogRebuildCommand.self])
}

struct CatalogRebuildCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rebuild", abstract: "Recreate the catalog from the repositories' manifests and the pools' ownership marks.")

    @OptionGroup var options: EngineOptions

    func run() async throws {
        let desired = try options.loadDesired()
        let engine = try options.engine(desired)
        var repos: [String: BackupRepository] = [:]
        for r in desired.repositories where FileManager.default.fileExists(atPath: r.spec.path + "/config.json") {
            repos[r.name] = try BackupRepository.open(at: r.spec.path, keyFile: r.spec.encryption?.keyFile)
        }
        let found = repos
        let view = try await engine.withSessions { try await CatalogRebuild.rebuild(engine: engine, repositories: found) }
        let deltaBases = view.anchors.filter { $0.kind == .delta }.count
        print("catalog rebuilt: \(view.backups.count) backups, \(view.anchors.count - deltaBases) CBT anchors, "
              + (deltaBases > 0 ? "\(deltaBases) delta bases, " : "") + "\(view.inventory.count) owned objects, \(view.cbtMarks.count) disks with haven's CBT")
    }
}

struct BackupsForgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget", abstract: "Remove backup versions now (their chunks go at the next `haven repo gc`).",
        discussion: """
            Shows the versions and what `haven repo gc` will then free (the chunks only they reference), and asks. \
            --yes does not ask; without a terminal, --yes is required. --dry-run only shows.
            """)

    @OptionGroup var target: RepositoryOptions

    @Option(name: .customLong("state"), help: "haven's state directory (to drop the versions from the catalog too).")
    var state: String?

    @Flag(help: "Do not ask for confirmation.")
    var yes = false

    @Flag(help: "Show what would be forgotten and freed; change nothing.")
    var dryRun = false

    @Argument(help: "Version ids.")
    var ids: [String]

    func validate() throws {
        if ids.isEmpty { throw ValidationError("give the ids of the versions to forget (see `haven backups list`)") }
    }

    func run() async throws {
        let repo = try target.open()
        var versions: [BackupManifest] = []
        // A damaged version can be forgotten too: it is the way out `backups list` points to.
        var damaged: [(String, DataError)] = []
        for id in ids {
            do { versions.append(try repo.manifest(id)) } catch let e as DataError where e.code == .badManifest {
                damaged.append((id, e))
            } catch let e as DataError {
                throw CLIError(e.code == .noSuchVersion ? "no version \(id) in the repository; nothing was forgotten" : "\(e)",
                               code: e.code == .noSuchVersion ? .notFound : CLIError.Code(rawValue: e.code.rawValue))
            }
        }
        let count = versions.count + damaged.count
        print("\(dryRun ? "Would forget" : "Forgetting") \(count) version\(count == 1 ? "" : "s"):")
        for m in versions {
            print("  - \(m.id)  \(m.vmName)  \(utcMinuteFormatter.string(from: m.createdAt)) UTC  \(m.kindLabel)  \(humanBytes(m.totalSize))")
        }
        for (id, e) in damaged { print("  - \(id)  (damaged manifest: \(e.message))") }
        do {
            let u = try repo.exclusiveUsage(of: Set(ids))
            print("`haven repo gc` will then free up to \(humanBytes(u.bytes)) (\(u.chunks) chunk\(u.chunks == 1 ? "" : "s") no other version references; "
                  + "chunks younger than gc's safety window, and packs less than a third dead, are kept until later).")
        } catch {
            print("Cannot tell what `haven repo gc` will free: \(ExitMapping.describe(error)).")
        }
        if dryRun {
            print("Dry run: nothing was forgotten.")
            return
        }
        if !yes {
            guard stdinIsTTY else {
                throw CLIError("not forgetting: standard input is not a terminal; pass --yes to forget without asking", code: .refused)
            }
            print("\nForget these versions? They cannot be restored afterwards. Only 'yes' is accepted: ", terminator: "")
            fflush(nil)
            guard readLine()?.trimmingCharacters(in: .whitespaces) == "yes" else {
                print("Nothing was forgotten.")
                return
            }
        }
        let catalog = try? StateDirectory(path: state ?? StateDirectory.defaultPath).catalog()
        for id in ids {
            do {
                try repo.prune(id)
                try catalog?.forget(backup: id)
                print("forgot \(id)")
            } catch let e as DataError {
                throw CLIError(data: e)
            } catch {
                throw CLIError("\(error)")
            }
        }
    }
}

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
            throw CLIError("\(e)")
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
            throw CLIError("\(e)")
        }
    }
}

struct RepoVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Re-read and re-hash chunks; report every bad one with the versions that need it.",
        discussion: "Exit status 0 when everything checks out, 2 when any chunk is missing or damaged.")

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
            throw CLIError("\(e)")
        }
        if output == .json {
            let problems: [[String: Any]] = report.problems.map { ["chunk": $0.chunk, "code": $0.error.code.rawValue, "message": $0.error.message, "versions": $0.versions] }
            let obj: [String: Any] = ["ok": report.ok, "checkedChunks": report.checkedChunks, "checkedVersions": report.checkedVersions, "problems": problems]
            print(String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .prettyPrinted]), as: UTF8.self))
        } else {
            for p in report.problems { print("BAD \(p)") }
            print("\(report.ok ? "ok" : "FAILED"): \(report.checkedChunks) chunks of \(report.checkedVersions) versions checked, \(report.problems.count) bad")
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
            throw CLIError("\(e)")
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
            throw CLIError("\(e)")
        }
    }
}

struct BackupsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backups", abstract: "List or forget backup versions.", subcommands: [BackupsListCommand.self, BackupsForgetCommand.self])
}

struct BackupsListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the versions in a repository.")

    @OptionGroup var target: RepositoryOptions

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() throws {
        let repo = try target.open()
        let list: [BackupManifest]
        do { list = try repo.manifests() } catch let e as DataError { throw CLIError("\(e)") }
        if output == .json {
            let f = ISO8601DateFormatter()
            let rows: [[String: Any]] = list.map { m in
                ["id": m.id, "vm": ["name": m.vmName, "uuid": m.vmUUID], "time": f.string(from: m.createdAt), "kind": m.kind.rawValue,
                 "size": m.totalSize, "storedBytes": m.storedBytes, "pool": m.pool, "policy": m.policy,
                 // An XVA version stores one stream, the whole-VM archive, not a disk image: say so.
                 "disks": m.disks.map { ["key": $0.key, "name": $0.name, "size": $0.size, "vdi": $0.vdiUUID,
                                         "content": $0.key == XVAArchive.key ? "xva-archive" : "disk"] }]
            }
            print(String(decoding: try JSONSerialization.data(withJSONObject: ["formatVersion": 1, "backups": rows], options: [.sortedKeys, .prettyPrinted]), as: UTF8.self))
            return
        }
        if list.isEmpty {
            print("no backups")
            return
        }
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm:ss"
        f.timeZone = TimeZone(identifier: "UTC")
        print("ID".padding(toLength: 34, withPad: " ", startingAt: 0) + "VM".padding(toLength: 18, withPad: " ", startingAt: 0)
              + "TIME (UTC)           KIND         SIZE       STORED")
        for m in list {
            print(m.id.padding(toLength: 34, withPad: " ", startingAt: 0) + m.vmName.padding(toLength: 18, withPad: " ", startingAt: 0)
                  + f.string(from: m.createdAt) + "  " + (m.kind == .xva ? "xva archive" : m.kind.rawValue).padding(toLength: 12, withPad: " ", startingAt: 0)
                  + humanBytes(m.totalSize).padding(toLength: 11, withPad: " ", startingAt: 0) + humanBytes(m.storedBytes))
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

    @Option(help: "Version id (see `haven backups list`).")
    var backup: String

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
    }

    func run() async throws {
        let repo = try target.open()
        let m: BackupManifest
        do { m = try repo.manifest(backup) } catch let e as DataError { throw CLIError("\(e)") }
        if let toFile, let archive = XVAArchive.stream(of: m) {
            try restoreFromXVA(m, archive: archive, repo: repo, to: toFile)
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
                throw CLIError("\(e)")
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
    func restoreFromXVA(_ m: BackupManifest, archive: DiskVersion, repo: BackupRepository, to path: String) throws {
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
        commandName: "status", abstract: "Per VM: its policy, last good backup, next due, and whether the RPO is met.")

    @OptionGroup var options: EngineOptions

    @Option(help: "text or json.")
    var output: OutputFormat = .text

    func run() async throws {
        let desired = try options.loadDesired()
        let engine = try options.engine(desired)
        let now = currentTime()
        let scope = try options.scope(desired)
        let observation = try await engine.withSessions { await engine.observe(pools: scope.pools) }
        let view = try engine.catalog.view()
        // A pool that cannot be read (a disaster is when status matters most) is answered from the catalog.
        var observed = observation.pools
        for (name, why) in observation.unreachable.sorted(by: { $0.key < $1.key }) {
            FileHandle.standardError.write(Data("haven: pool \(name) cannot be read (\(why)); its VMs are shown from the catalog\n".utf8))
            var seen: [String: ObservedVM] = [:]
            for b in view.backups where b.pool == name { seen[b.vmUUID] = ObservedVM(uuid: b.vmUUID, name: b.vmName, powerState: "unknown", tags: [], disks: []) }
            observed[name] = ObservedPool(name: name, apiMajor: 0, apiMinor: 0, cbtLicensed: false, vms: seen.values.sorted { $0.name < $1.name },
                                          snapshots: [], vdis: [:], srs: [:], nbdNetworks: [])
        }
        let fromCatalog = Set(observation.unreachable.keys)
        struct Row: Encodable {
            var pool, vm, policy: String
            var lastBackup: Date?
            var nextDue: Date?
            var rpoMet: Bool
            var versions: Int
        }
        var rows: [Row] = []
        for p in desired.backupPolicies {
            guard let pool = observed[p.spec.pool.value] else { continue }
            for vm in pool.vms where p.spec.vms.matches(name: vm.name, uuid: vm.uuid, tags: vm.tags)
                || (fromCatalog.contains(pool.name) && view.backups.contains { $0.policy == p.name && $0.vmUUID == vm.uuid }) {
                let mine = view.backups.filter { $0.pool == pool.name && $0.policy == p.name && $0.vmUUID == vm.uuid }
                let last = mine.map(\.createdAt).max()
                var next: Date?
                var met = false
                if let every = p.spec.schedule.every {
                    next = last.map { $0.addingTimeInterval(Double(every.seconds)) } ?? now
                    met = last.map { now.timeIntervalSince($0) < Double(every.seconds) } ?? false
                } else if let cron = p.spec.schedule.cron {
                    let tz = TimeZone(identifier: p.spec.schedule.timezone) ?? TimeZone(identifier: "UTC")!
                    next = cron.nextFire(after: last ?? now, in: tz)
                    let slot = cron.latestFire(notAfter: now, in: tz)
                    met = last.map { l in slot.map { l >= $0 } ?? true } ?? false
                }
                if p.spec.suspend { next = nil }
                rows.append(Row(pool: pool.name, vm: vm.name, policy: p.name + (p.spec.suspend ? " (suspended)" : ""), lastBackup: last,
                                nextDue: next, rpoMet: met, versions: mine.count))
            }
        }
        if output == .json {
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys]
            e.dateEncodingStrategy = .iso8601
            struct Out: Encodable {
                var formatVersion = 1
                var vms: [Row]
            }
            print(String(decoding: try e.encode(Out(vms: rows)), as: UTF8.self))
            return
        }
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm"
        f.timeZone = TimeZone(identifier: "UTC")
        func age(_ d: Date) -> String {
            let s = Int(now.timeIntervalSince(d))
            return s < 7_200 ? "\(s / 60)m ago" : s < 172_800 ? "\(s / 3_600)h ago" : "\(s / 86_400)d ago"
        }
        print("POOL".padding(toLength: 10, withPad: " ", startingAt: 0) + "VM".padding(toLength: 16, withPad: " ", startingAt: 0)
              + "POLICY".padding(toLength: 16, withPad: " ", startingAt: 0) + "LAST GOOD BACKUP (UTC)      NEXT DUE (UTC)      VERSIONS  RPO")
        for r in rows {
            let last = r.lastBackup.map { "\(f.string(from: $0)) (\(age($0)))" } ?? "never"
            let next = r.nextDue.map { $0 <= now ? "now" : f.string(from: $0) } ?? "-"
            print(r.pool.padding(toLength: 10, withPad: " ", startingAt: 0) + r.vm.padding(toLength: 16, withPad: " ", startingAt: 0)
                  + r.policy.padding(toLength: 16, withPad: " ", startingAt: 0) + last.padding(toLength: 28, withPad: " ", startingAt: 0)
                  + next.padding(toLength: 20, withPad: " ", startingAt: 0) + String(r.versions).padding(toLength: 10, withPad: " ", startingAt: 0)
                  + (r.rpoMet ? "met" : "MISSED"))
        }
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
        print("catalog rebuilt: \(view.backups.count) backups, \(view.anchors.count) CBT anchors, \(view.inventory.count) owned objects, \(view.cbtMarks.count) disks with haven's CBT")
    }
}

struct BackupsForgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "forget", abstract: "Remove backup versions now (their chunks go at the next `haven repo gc`).")

    @OptionGroup var target: RepositoryOptions

    @Option(name: .customLong("state"), help: "haven's state directory (to drop the versions from the catalog too).")
    var state: String?

    @Argument(help: "Version ids.")
    var ids: [String]

    func run() async throws {
        let repo = try target.open()
        let catalog = try? StateDirectory(path: state ?? StateDirectory.defaultPath).catalog()
        for id in ids {
            do {
                try repo.prune(id)
                try catalog?.forget(backup: id)
                print("forgot \(id)")
            } catch {
                throw CLIError("\(error)")
            }
        }
    }
}

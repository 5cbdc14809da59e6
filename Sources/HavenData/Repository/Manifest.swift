import CrashPoints
import Crypto
import Foundation
import XenAPI

/// One disk (or stream) of a backup version.
public struct DiskVersion: Codable, Sendable, Hashable {
    /// The VBD's userdevice ("0", "1", …) or `xva` for a whole-VM export.
    public var key: String
    public var name: String
    public var vdiUUID: String
    public var size: Int64
    public var chunkSize: Int
    public var index: IndexRoot
    /// The snapshot VDI the data was read from.
    public var sourceSnapshotVDI: String
    /// Bytes read from the source for this version.
    public var readBytes: Int64
    /// Bytes newly written to the repository (chunks and index pages).
    public var storedBytes: Int64
    public var zeroChunks: Int

    public init(key: String, name: String, vdiUUID: String, size: Int64, chunkSize: Int, index: IndexRoot,
                sourceSnapshotVDI: String, readBytes: Int64, storedBytes: Int64, zeroChunks: Int) {
        self.key = key
        self.name = name
        self.vdiUUID = vdiUUID
        self.size = size
        self.chunkSize = chunkSize
        self.index = index
        self.sourceSnapshotVDI = sourceSnapshotVDI
        self.readBytes = readBytes
        self.storedBytes = storedBytes
        self.zeroChunks = zeroChunks
    }
}

/// A network interface of the backed-up VM, for restores.
public struct VIFInfo: Codable, Sendable, Hashable {
    public var device: String
    public var mac: String
    public var network: String

    public init(device: String, mac: String, network: String) {
        self.device = device
        self.mac = mac
        self.network = network
    }
}

/// A backup version. It exists if and only if its manifest file exists; the manifest is written
/// last, after every chunk and index page it names is durable.
public struct BackupManifest: Codable, Sendable {
    public enum Kind: String, Codable, Sendable { case full, incremental, xva }

    public var formatVersion: Int = 1
    public var id: String
    public var createdAt: Date
    public var kind: Kind
    public var vmUUID: String
    public var vmName: String
    public var pool: String
    public var policy: String
    /// The VM's record as the pool gave it.
    public var vmRecord: [String: XenValue]
    public var sourceSnapshotUUID: String
    public var disks: [DiskVersion]
    /// Free-form facts (why full, which method, hook output summary).
    public var notes: [String: String]
    /// The VM's network interfaces (absent in versions made by `repo import-image`).
    public var vifs: [VIFInfo]?

    public init(id: String? = nil, createdAt: Date = Date(), kind: Kind, vmUUID: String, vmName: String, pool: String,
                policy: String, vmRecord: [String: XenValue], sourceSnapshotUUID: String, disks: [DiskVersion], notes: [String: String] = [:]) {
        self.id = id ?? BackupManifest.newID(at: createdAt)
        self.createdAt = createdAt
        self.kind = kind
        self.vmUUID = vmUUID
        self.vmName = vmName
        self.pool = pool
        self.policy = policy
        self.vmRecord = vmRecord
        self.sourceSnapshotUUID = sourceSnapshotUUID
        self.disks = disks
        self.notes = notes
    }

    /// Sortable by time, to the microsecond: `20261121T203000.123456Z-1a2b3c`.
    public static func newID(at date: Date = Date()) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyyMMdd'T'HHmmss"
        let micros = Int((date.timeIntervalSince1970 * 1_000_000).truncatingRemainder(dividingBy: 1_000_000))
        return f.string(from: date) + "." + String(format: "%06d", micros) + "Z-" + String(format: "%06x", UInt32.random(in: 0...0xff_ffff))
    }

    public var totalSize: Int64 { disks.reduce(0) { $0 + $1.size } }
    public var storedBytes: Int64 { disks.reduce(0) { $0 + $1.storedBytes } }
}

/// A version whose manifest cannot be used (truncated, tampered, or inconsistent): reported by id
/// so that the other versions stay usable.
public struct DamagedManifest: Sendable, Equatable, CustomStringConvertible {
    public var id: String
    public var error: DataError
    public var description: String { "version \(id): \(error.message)" }
}

/// The versions of a repository, oldest first, and those whose manifest is damaged. A collection
/// of the good versions, so that `for m in try repo.manifests()` reads them; work that must see
/// every version (GC: a damaged manifest still names chunks) calls `requireAll()`.
public struct ManifestList: RandomAccessCollection, Sendable {
    public var versions: [BackupManifest]
    public var damaged: [DamagedManifest]

    public var startIndex: Int { versions.startIndex }
    public var endIndex: Int { versions.endIndex }
    public subscript(position: Int) -> BackupManifest { versions[position] }

    /// Every version, or the first damaged one's error.
    public func requireAll() throws -> [BackupManifest] {
        if let d = damaged.first { throw d.error }
        return versions
    }
}

extension BackupManifest {
    /// The largest disk a manifest may describe: 64 TiB (XenServer's VDIs stop at 16 TiB). A bound
    /// keeps arithmetic on sizes and entry counts far from overflow.
    public static let maxDiskSize: Int64 = 1 << 46

    /// The depth `DiskIndex.write` gives a tree of `entries` ids (0 when one leaf holds them).
    static func indexDepth(entries: Int) -> Int {
        var pages = max(1, (entries + DiskIndex.fanout - 1) / DiskIndex.fanout)
        var depth = 0
        while pages > 1 {
            pages = (pages + DiskIndex.fanout - 1) / DiskIndex.fanout
            depth += 1
        }
        return depth
    }

    /// Throws `badManifest`, naming the version, unless every disk is one restore can use: a sane
    /// chunk size equal to the repository's, a size within bounds, exactly one index entry per
    /// chunk of that size, the depth the writer gives that many entries, counters non-negative.
    /// JSON that decodes is not enough: a size three chunks off restores a wrong image, and
    /// `chunkSize: 0` or `entries: 2^40` make restore divide by zero or allocate without end.
    public func checkConsistency(repositoryChunkSize: Int) throws {
        func bad(_ what: String) -> DataError { DataError(.badManifest, id, "inconsistent manifest: \(what)") }
        guard formatVersion == 1 else { throw bad("format \(formatVersion) is not one this haven understands") }
        var keys = Set<String>()
        for d in disks {
            let name = "disk \(d.key)"
            guard keys.insert(d.key).inserted else { throw bad("two disks have the key \(d.key)") }
            guard d.chunkSize >= 65_536, d.chunkSize <= 64 << 20, d.chunkSize & (d.chunkSize - 1) == 0 else {
                throw bad("\(name): chunk size \(d.chunkSize) is not a power of two from 64 KiB to 64 MiB")
            }
            guard d.chunkSize == repositoryChunkSize else {
                throw bad("\(name): chunk size \(d.chunkSize) is not the repository's (\(repositoryChunkSize))")
            }
            guard d.size >= 0, d.size <= Self.maxDiskSize else {
                throw bad("\(name): size \(d.size) is outside 0...\(Self.maxDiskSize)")
            }
            let chunks = Int((d.size + Int64(d.chunkSize) - 1) / Int64(d.chunkSize))
            guard d.index.entries == chunks else {
                throw bad("\(name): \(d.index.entries) index entries, but \(d.size) bytes in \(d.chunkSize)-byte chunks are \(chunks)")
            }
            guard d.index.depth == Self.indexDepth(entries: chunks) else {
                throw bad("\(name): index depth \(d.index.depth) for \(chunks) entries (expected \(Self.indexDepth(entries: chunks)))")
            }
            guard ChunkID(hex: d.index.root) != nil else { throw bad("\(name): index root '\(d.index.root)' is not a chunk id") }
            guard d.readBytes >= 0, d.storedBytes >= 0, (0...chunks).contains(d.zeroChunks) else {
                throw bad("\(name): negative byte counts or \(d.zeroChunks) zero chunks of \(chunks)")
            }
        }
    }
}

extension BackupRepository {
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        e.dateEncodingStrategy = .iso8601
        return e
    }()

    static let decoder: JSONDecoder = {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .iso8601
        return d
    }()

    /// First bytes of a sealed manifest (encrypted repositories): `HVM1 | nonce | ciphertext | tag`.
    static let manifestMagic = Data("HVM1".utf8)

    /// The file name stays `<id>.json` even when sealed: an older haven then fails on the file
    /// (and its GC refuses to run) instead of not seeing the version and sweeping its chunks.
    func manifestURL(_ id: String) -> URL { manifestsDir.appendingPathComponent("\(id).json") }

    /// The bytes of a manifest file: JSON, sealed with AES-256-GCM in an encrypted repository
    /// (VM names, the VM record and the disk layout are as private as the disks), the version id
    /// as additional data so that a sealed manifest renamed to another version does not open.
    func encodeManifest(_ manifest: BackupManifest) throws -> Data {
        let json = try Self.encoder.encode(manifest)
        guard let manifestKey else { return json }
        do {
            let sealed = try AES.GCM.seal(json, using: manifestKey, authenticating: Data(manifest.id.utf8))
            return Self.manifestMagic + sealed.combined!
        } catch {
            throw DataError(.io, manifest.id, "cannot seal the manifest: \(error)")
        }
    }

    /// Opens a manifest file's bytes and checks the version is one restore can use.
    func decodeManifest(_ data: Data, id: String) throws -> BackupManifest {
        var json = data
        if data.starts(with: Self.manifestMagic) {
            guard let manifestKey else {
                throw DataError(.badManifest, id, "the manifest is sealed but the repository is not encrypted")
            }
            do {
                let box = try AES.GCM.SealedBox(combined: data.dropFirst(Self.manifestMagic.count))
                json = try AES.GCM.open(box, using: manifestKey, authenticating: Data(id.utf8))
            } catch {
                throw DataError(.badManifest, id, "the manifest does not decrypt (truncated, tampered with, or another version's)")
            }
        }
        // A plaintext manifest in an encrypted repository was written before manifests were
        // sealed (issue 13, defect 8); it is still read, so that old versions stay restorable.
        let manifest: BackupManifest
        do {
            manifest = try Self.decoder.decode(BackupManifest.self, from: json)
        } catch {
            throw DataError(.badManifest, id, "manifest cannot be read: \(error)")
        }
        guard manifest.id == id else {
            throw DataError(.badManifest, id, "the manifest file names version \(manifest.id)")
        }
        try manifest.checkConsistency(repositoryChunkSize: config.chunkSize)
        return manifest
    }

    /// Commits a version: seals the packs being written, checks that every index page and chunk
    /// the version names is in a pack that is there (`missingChunk`, naming the chunk, otherwise:
    /// nothing is written), makes everything durable, then writes the manifest. An inconsistent
    /// manifest (`badManifest`) is refused before anything is written.
    ///
    /// Holds the lock shared meanwhile (waiting up to `lockTimeout` for a running GC), so GC cannot
    /// remove a chunk between the check and the manifest. That alone does not protect a backup's
    /// deduplication, which happened earlier: a backup holds a `WriteSession` from its first disk to
    /// its commit. Calling this inside one is fine (shared locks do not block each other).
    public func commit(_ manifest: BackupManifest, lockTimeout: Double? = nil) throws {
        try manifest.checkConsistency(repositoryChunkSize: config.chunkSize)
        try withLock(exclusive: false, timeout: lockTimeout) {
            try sealPacks()
            try checkReferences(of: manifest)
            try syncAll()
            try writeAtomically(try encodeManifest(manifest), to: manifestURL(manifest.id), tmp: tmpDir)
        }
    }

    /// Every version that can be used, oldest first, and the ids of those that cannot (each with
    /// why): one damaged manifest does not hide the others.
    public func manifests() throws -> ManifestList {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: manifestsDir.path)) ?? []
        var good: [BackupManifest] = []
        var damaged: [DamagedManifest] = []
        for name in names where name.hasSuffix(".json") {
            let id = String(name.dropLast(5))
            do {
                good.append(try manifest(id))
            } catch let e as DataError where e.code == .badManifest {
                damaged.append(DamagedManifest(id: id, error: e))
            } catch let e as DataError where e.code == .noSuchVersion {
                continue  // pruned since the listing
            }
        }
        return ManifestList(versions: good.sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) },
                            damaged: damaged.sorted { $0.id < $1.id })
    }

    public func manifest(_ id: String) throws -> BackupManifest {
        // An id is a file name in manifests/, never a path elsewhere.
        guard !id.isEmpty, !id.contains("/"), !id.hasPrefix(".") else { throw DataError(.noSuchVersion, id, "not a version id") }
        guard let data = FileManager.default.contents(atPath: manifestURL(id).path) else {
            throw DataError(.noSuchVersion, id, "no such backup version")
        }
        return try decodeManifest(data, id: id)
    }

    /// Removes a version (its chunks go at the next GC). A damaged manifest can be removed too.
    public func prune(_ id: String) throws {
        guard unlink(manifestURL(id).path) == 0 else { throw DataError(.noSuchVersion, id, "no such backup version") }
        CrashPoints.hit("manifest removed")
    }
}

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

    func manifestURL(_ id: String) -> URL { manifestsDir.appendingPathComponent("\(id).json") }

    /// Commits a version: seals the packs being written, checks that every index page and chunk
    /// the version names is in a pack that is there (`missingChunk`, naming the chunk, otherwise:
    /// nothing is written), makes everything durable, then writes the manifest.
    ///
    /// Holds the lock shared meanwhile (waiting up to `lockTimeout` for a running GC), so GC cannot
    /// remove a chunk between the check and the manifest. That alone does not protect a backup's
    /// deduplication, which happened earlier: a backup holds a `WriteSession` from its first disk to
    /// its commit. Calling this inside one is fine (shared locks do not block each other).
    public func commit(_ manifest: BackupManifest, lockTimeout: Double? = nil) throws {
        try withLock(exclusive: false, timeout: lockTimeout) {
            try sealPacks()
            try checkReferences(of: manifest)
            try syncAll()
            try writeAtomically(try Self.encoder.encode(manifest), to: manifestURL(manifest.id), tmp: tmpDir)
        }
    }

    /// Every version, oldest first. A manifest that cannot be read is reported, not skipped.
    public func manifests() throws -> [BackupManifest] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: manifestsDir.path)) ?? []
        return try names.filter { $0.hasSuffix(".json") }.map { try manifest(String($0.dropLast(5))) }
            .sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }

    public func manifest(_ id: String) throws -> BackupManifest {
        guard let data = FileManager.default.contents(atPath: manifestURL(id).path) else {
            throw DataError(.noSuchVersion, id, "no such backup version")
        }
        do {
            return try Self.decoder.decode(BackupManifest.self, from: data)
        } catch {
            throw DataError(.badManifest, id, "manifest cannot be read: \(error)")
        }
    }

    /// Removes a version (its chunks go at the next GC).
    public func prune(_ id: String) throws {
        guard unlink(manifestURL(id).path) == 0 else { throw DataError(.noSuchVersion, id, "no such backup version") }
    }
}

import CHavenSystem
import CrashPoints
import Crypto
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `config.json` at the repository's root: how chunks are cut, compressed and sealed.
public struct RepositoryConfig: Codable, Sendable, Equatable {
    public var formatVersion: Int
    public var id: String
    public var chunkSize: Int
    /// `none`, or `zstd:N`.
    public var compression: String
    public var encrypted: Bool
    /// HMAC of a fixed text with the key: tells a wrong key from corruption.
    public var keyCheck: String?
    public var created: Date

    public var zstdLevel: Int32? {
        guard compression.hasPrefix("zstd:"), let n = Int32(compression.dropFirst(5)) else { return nil }
        return n
    }
}

/// A local directory of content-addressed chunks, index pages and version manifests. See
/// docs/repository.md for the layout. Safe for several writers at once; GC excludes writers with
/// a lock.
public final class BackupRepository: @unchecked Sendable {
    // @unchecked: immutable after open; the file system is the shared state and every write is
    // a rename of a complete file, so concurrent writers cannot see each other's partial files.
    public let root: URL
    public let config: RepositoryConfig
    let encryptionKey: SymmetricKey?
    let idKey: SymmetricKey?
    /// Seals manifests (see `encodeManifest`); nil in a repository that is not encrypted.
    let manifestKey: SymmetricKey?

    /// Modes of everything the repository creates: an unencrypted repository holds the disks'
    /// contents in the clear, and an encrypted one is still nobody else's business. The process
    /// umask can only narrow these.
    static let directoryMode: mode_t = 0o700
    static let fileMode: mode_t = 0o600

    static let magic: [UInt8] = Array("HVC1".utf8)

    var packsDir: URL { root.appendingPathComponent("packs") }
    var indexDir: URL { root.appendingPathComponent("index") }
    var manifestsDir: URL { root.appendingPathComponent("manifests") }
    var tmpDir: URL { root.appendingPathComponent("tmp") }
    var lockFile: URL { root.appendingPathComponent("lock") }

    let index: ChunkIndex
    private let writersLock = NSLock()
    private var idleWriters: [PackWriter] = []
    private var allWriters: [PackWriter] = []
    /// Set once in init, never reassigned.
    private(set) var sharedWriter: PackWriter!

    private init(root: URL, config: RepositoryConfig, key: SymmetricKey?) {
        self.root = root
        self.config = config
        index = ChunkIndex(root: root)
        if let key {
            encryptionKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Data("haven chunk encryption".utf8), outputByteCount: 32)
            idKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Data("haven chunk id".utf8), outputByteCount: 32)
            manifestKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Data("haven manifest encryption".utf8), outputByteCount: 32)
        } else {
            encryptionKey = nil
            idKey = nil
            manifestKey = nil
        }
        sharedWriter = PackWriter(repository: self)
        allWriters.append(sharedWriter)
    }

    /// Creates a repository (directories 0700, files 0600). With `keyFile`, chunks and manifests
    /// are encrypted; the key file is created (32 random bytes, hex, mode 0600) when it does not exist.
    @discardableResult
    public static func initialize(at path: String, chunkSize: Int = 64 << 10, compression: String = "zstd:3", keyFile: String? = nil) throws
        -> BackupRepository
    {
        let root = URL(fileURLWithPath: path)
        let fm = FileManager.default
        if fm.fileExists(atPath: root.appendingPathComponent("config.json").path) {
            throw DataError(.repositoryExists, path, "a repository already exists here")
        }
        guard chunkSize >= 65_536, chunkSize & (chunkSize - 1) == 0, chunkSize <= 64 << 20 else {
            throw DataError(.unsupported, path, "chunk size must be a power of two from 64 KiB to 64 MiB")
        }
        guard compression == "none" || (compression.hasPrefix("zstd:") && Int(compression.dropFirst(5)).map({ (1...22).contains($0) }) == true) else {
            throw DataError(.unsupported, path, "compression must be none or zstd:N (1-22)")
        }
        var key: SymmetricKey?
        if let keyFile {
            if fm.fileExists(atPath: keyFile) {
                key = try readKey(keyFile)
            } else {
                let k = SymmetricKey(size: .bits256)
                let hex = k.withUnsafeBytes { Data($0) }.map { String(format: "%02x", $0) }.joined()
                // Created 0600 by open(2) itself: never, even for an instant, readable by others.
                let fd = Glibc.open(keyFile, O_WRONLY | O_CREAT | O_EXCL, 0o600)
                guard fd >= 0 else { throw DataError(.io, keyFile, "cannot create the key file: \(String(cString: strerror(errno)))") }
                let ok = Data((hex + "\n").utf8).withUnsafeBytes { writeAll(fd, $0) } && fsync(fd) == 0
                Glibc.close(fd)
                guard ok else {
                    unlink(keyFile)
                    throw DataError(.io, keyFile, "cannot write the key file")
                }
                key = k
            }
        }
        let parent = root.deletingLastPathComponent()
        if !fm.fileExists(atPath: parent.path) { try fm.createDirectory(at: parent, withIntermediateDirectories: true) }
        // A directory that already exists (a mount point, one the operator made) keeps its mode:
        // what is inside is protected by the modes below.
        try makeDirectory(root.path)
        for dir in ["packs", "index", "manifests", "tmp"] { try makeDirectory(root.appendingPathComponent(dir).path) }
        var config = RepositoryConfig(
            formatVersion: 1, id: UUID().uuidString.lowercased(), chunkSize: chunkSize, compression: compression,
            encrypted: key != nil, keyCheck: nil, created: Date())
        if let key { config.keyCheck = keyCheck(key) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        try writeAtomically(try encoder.encode(config), to: root.appendingPathComponent("config.json"), tmp: root.appendingPathComponent("tmp"))
        let repo = BackupRepository(root: root, config: config, key: key)
        try repo.index.load()
        return repo
    }

    /// Opens a repository; an encrypted one needs its key file, and a wrong key is refused here.
    public static func open(at path: String, keyFile: String? = nil) throws -> BackupRepository {
        let root = URL(fileURLWithPath: path)
        guard let data = FileManager.default.contents(atPath: root.appendingPathComponent("config.json").path) else {
            throw DataError(.noRepository, path, "no repository here (no config.json); create one with `haven repo init`")
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let config = try decoder.decode(RepositoryConfig.self, from: data)
        guard config.formatVersion == 1 else {
            throw DataError(.unsupported, path, "repository format \(config.formatVersion) is newer than this haven understands")
        }
        var key: SymmetricKey?
        if config.encrypted {
            guard let keyFile else { throw DataError(.wrongKey, path, "the repository is encrypted; give its key file") }
            let k = try readKey(keyFile)
            guard keyCheck(k) == config.keyCheck else {
                throw DataError(.wrongKey, keyFile, "this key does not open the repository at \(path)")
            }
            key = k
        }
        let repo = BackupRepository(root: root, config: config, key: key)
        for dir in [repo.packsDir, repo.indexDir, repo.tmpDir] { try? makeDirectory(dir.path) }
        try repo.index.load()
        return repo
    }

    /// Creates a directory with `directoryMode`; one already there is left as it is.
    static func makeDirectory(_ path: String) throws {
        guard mkdir(path, directoryMode) == 0 || errno == EEXIST else {
            throw DataError(.io, path, "cannot create the directory: \(String(cString: strerror(errno)))")
        }
    }

    static func readKey(_ file: String) throws -> SymmetricKey {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw DataError(.wrongKey, file, "cannot read the key file")
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let id = ChunkID(hex: text) else {
            throw DataError(.wrongKey, file, "a key file holds 64 hex digits (32 bytes)")
        }
        // 64 zeros is a placeholder, not a secret: anyone could open the repository.
        guard !id.isZero else {
            throw DataError(.weakKey, file, "the key is all zeros, which is no secret; create a key with `haven repo init --encrypt --key-file NEW` or `openssl rand -hex 32`")
        }
        var st = stat()
        if stat(file, &st) == 0, let warning = keyFileWarning(path: file, mode: st.st_mode) {
            DataWarnings.emitOnce(key: "key-mode:" + file, warning)
        }
        return SymmetricKey(data: id.bytes)
    }

    /// The warning for a key file others may read or replace; nil when its mode is private.
    static func keyFileWarning(path: String, mode: mode_t) -> String? {
        guard mode & 0o077 != 0 else { return nil }
        let octal = String(Int(mode & 0o7777), radix: 8)
        return "key file \(path) has mode \(String(repeating: "0", count: max(0, 4 - octal.count)) + octal): group or others can read or change it; run `chmod 600 \(path)`"
    }

    static func keyCheck(_ key: SymmetricKey) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Data("haven repository key check".utf8), using: key)
        return Data(mac).map { String(format: "%02x", $0) }.joined()
    }

    // MARK: chunks

    /// The id a chunk with these bytes has in this repository.
    public func chunkID(of data: UnsafeRawBufferPointer) -> ChunkID {
        if let idKey {
            return HMAC<SHA256>.authenticationCode(for: data, using: idKey).withUnsafeBytes { ChunkID(raw: $0) }
        }
        return SHA256.hash(data: data).withUnsafeBytes { ChunkID(raw: $0) }
    }

    func packPath(_ name: String) -> String { packsDir.path + "/" + name.prefix(2) + "/" + name }
    func indexPath(_ name: String) -> String { indexDir.path + "/" + name + ".idx" }

    /// Where a chunk's encoded bytes are (tests and rescue).
    func location(of id: ChunkID) -> ChunkLocation? {
        index.find(id).map { ChunkLocation(pack: index.packPath($0.pack), offset: $0.offset, length: $0.length, pending: $0.pending) }
    }

    /// Chunks (and index pages) stored, sealed or being written.
    public var chunkCount: Int { index.count }

    public func hasChunk(_ id: ChunkID) -> Bool { id.isZero || index.find(id) != nil }


    func acquireWriter() -> PackWriter {
        writersLock.withLock {
            if let w = idleWriters.popLast() { return w }
            let w = PackWriter(repository: self)
            allWriters.append(w)
            return w
        }
    }

    func releaseWriter(_ w: PackWriter) { writersLock.withLock { idleWriters.append(w) } }

    /// Closes every pack being written and publishes its index, durably (before a commit).
    public func sealPacks() throws {
        let writers = writersLock.withLock { allWriters }
        for w in writers { try w.seal() }
    }

    /// Writes out what the writers gathered of pack `n` (a chunk of it is about to be read).
    func flushWriters(pack n: UInt32) throws {
        let writers = writersLock.withLock { allWriters }
        for w in writers { try w.flush(pack: n) }
    }

    /// Stores a chunk unless it is already there; returns the bytes written (0 when deduplicated).
    /// The chunk goes into a pack that appears under its name only once complete (rename), so a
    /// crash leaves at most a temporary file behind.
    @discardableResult
    public func putChunk(_ id: ChunkID, _ data: UnsafeRawBufferPointer) throws -> Int {
        try putChunk(id, data, codec: ChunkCodec.current(chunkSize: config.chunkSize))
    }

    /// `putChunk` with the calling thread's codec (a worker keeps one: no lookup per chunk).
    @discardableResult
    func putChunk(_ id: ChunkID, _ data: UnsafeRawBufferPointer, codec: ChunkCodec) throws -> Int {
        if hasChunk(id) { return 0 }
        let encoded = try encode(id, data, codec: codec)
        // One pack at a time per repository: appends are short (the page cache takes them), and a
        // backup's packs and durable steps come out the same on every run.
        try sharedWriter.append(id, encoded)
        return encoded.count + 36
    }

    /// Reads, checks and decodes a chunk into `buffer`; returns its length. A chunk that does
    /// not decrypt, decompress or hash back to its name is reported as corrupt.
    public func getChunk(_ id: ChunkID, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try getChunk(id, into: buffer, codec: ChunkCodec.current(chunkSize: config.chunkSize))
    }

    /// `getChunk` with the calling thread's codec. The pack's descriptor is kept open for the
    /// next chunk. In an encrypted repository the AES-GCM tag (over the chunk and, as additional
    /// data, its id) already proves the bytes are the ones stored under this id, to the bit: the
    /// id is not computed again. Without encryption it is (SHA-256 of the plaintext).
    func getChunk(_ id: ChunkID, into buffer: UnsafeMutableRawBufferPointer, codec: ChunkCodec) throws -> Int {
        if id.isZero {
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            return buffer.count
        }
        guard let loc = index.find(id) else { throw DataError(.missingChunk, id.hex, "chunk is missing from the repository") }
        if loc.pending { try flushWriters(pack: loc.pack) }
        guard let fd = index.readDescriptor(loc.pack) else {
            throw DataError(.missingChunk, id.hex, "the pack holding the chunk is missing (\(index.packPath(loc.pack)))")
        }
        let length = Int(loc.length)
        codec.ensure(length)
        var done = 0
        while done < length {
            let n = pread(fd, codec.file.baseAddress! + done, length - done, off_t(loc.offset) + off_t(done))
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            done += n
        }
        let n = try decode(id, UnsafeRawBufferPointer(rebasing: codec.file[0..<done]), into: buffer, codec: codec)
        if encryptionKey == nil {
            let check = chunkID(of: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            guard check == id else { throw DataError(.corruptChunk, id.hex, "content does not match its hash") }
        }
        return n
    }

    /// Header: "HVC1", flags (1 = zstd, 2 = AES-256-GCM), 3 reserved bytes, plaintext length
    /// (u32 little-endian); then the payload (nonce | ciphertext | tag when encrypted). The
    /// result points into the codec's buffer (valid until its next use).
    func encode(_ id: ChunkID, _ data: UnsafeRawBufferPointer, codec: ChunkCodec) throws -> UnsafeRawBufferPointer {
        var flags: UInt8 = 0
        var payloadLength = data.count
        let header = 12
        codec.ensure(header + 64 + max(data.count, 1024) + data.count / 100 + 1024)
        if let level = config.zstdLevel {
            let n = try codec.compress(data, level: level, at: header)
            if n < data.count {
                payloadLength = n
                flags |= 1
            }
        }
        if flags & 1 == 0 {
            (codec.out.baseAddress! + header).copyMemory(from: data.baseAddress!, byteCount: data.count)
        }
        if let encryptionKey {
            let plain = UnsafeRawBufferPointer(rebasing: codec.out[header..<(header + payloadLength)])
            let sealed = try AES.GCM.seal(plain, using: encryptionKey, authenticating: id.bytes)
            let combined = sealed.combined!
            codec.ensure(header + combined.count)
            combined.withUnsafeBytes { (codec.out.baseAddress! + header).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            payloadLength = combined.count
            flags |= 2
        }
        let o = codec.out.baseAddress!
        for (i, b) in Self.magic.enumerated() { o.storeBytes(of: b, toByteOffset: i, as: UInt8.self) }
        o.storeBytes(of: flags, toByteOffset: 4, as: UInt8.self)
        for i in 5..<8 { o.storeBytes(of: 0, toByteOffset: i, as: UInt8.self) }
        o.storeBytes(of: UInt32(data.count).littleEndian, toByteOffset: 8, as: UInt32.self)
        return UnsafeRawBufferPointer(rebasing: codec.out[0..<(header + payloadLength)])
    }

    func decode(_ id: ChunkID, _ file: UnsafeRawBufferPointer, into buffer: UnsafeMutableRawBufferPointer, codec: ChunkCodec) throws -> Int {
        guard file.count >= 12, file[0] == Self.magic[0], file[1] == Self.magic[1], file[2] == Self.magic[2], file[3] == Self.magic[3] else {
            throw DataError(.corruptChunk, id.hex, "not a chunk file (bad header or truncated)")
        }
        let flags = file[4]
        let length = Int(file[8]) | Int(file[9]) << 8 | Int(file[10]) << 16 | Int(file[11]) << 24
        guard length <= buffer.count else { throw DataError(.corruptChunk, id.hex, "chunk longer than the buffer") }
        let payload = UnsafeRawBufferPointer(rebasing: file[12...])
        var opened: Data?
        if flags & 2 != 0 {
            guard let encryptionKey else { throw DataError(.wrongKey, id.hex, "chunk is encrypted but the repository has no key") }
            do {
                let box = try AES.GCM.SealedBox(combined: payload)
                opened = try AES.GCM.open(box, using: encryptionKey, authenticating: id.bytes)
            } catch {
                throw DataError(.corruptChunk, id.hex, "chunk does not decrypt (tampered or truncated)")
            }
        } else if encryptionKey != nil {
            throw DataError(.corruptChunk, id.hex, "chunk is not encrypted in an encrypted repository")
        }
        func finish(_ payload: UnsafeRawBufferPointer) throws -> Int {
            if flags & 1 != 0 {
                let n: Int
                do {
                    n = try codec.decompress(payload, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length]))
                } catch {
                    throw DataError(.corruptChunk, id.hex, "chunk does not decompress")
                }
                guard n == length else { throw DataError(.corruptChunk, id.hex, "chunk decompressed to \(n) bytes, not \(length)") }
            } else {
                guard payload.count == length else { throw DataError(.corruptChunk, id.hex, "chunk has \(payload.count) bytes, not \(length)") }
                buffer.baseAddress!.copyMemory(from: payload.baseAddress!, byteCount: length)
            }
            return length
        }
        if let opened { return try opened.withUnsafeBytes { try finish($0) } }
        return try finish(payload)
    }

    /// Makes every pack sealed so far durable: sealing already made each pack and its index
    /// durable (fsync of the files and of the pack's directory) before its index was visible;
    /// what is left is `index/` itself, whose renames another process's seal may not have made
    /// durable yet when this process read them (and deduplicated against them). Files this
    /// process did not write are never flushed (no `syncfs` of the whole file system).
    public func syncAll() throws {
        try syncDirectory(indexDir.path)
        CrashPoints.hit("synced")
    }

    // MARK: locks

    /// Writers hold the lock shared, GC holds it exclusive; `timeout` nil waits forever. A backup
    /// holds it from its first chunk lookup to its commit: see `WriteSession`. Shared holders never
    /// block each other, in one process or several, so a shared `withLock` inside a session is fine.
    public func withLock<T>(exclusive: Bool, timeout: Double? = nil, _ body: () throws -> T) throws -> T {
        let fd = try lockDescriptor(exclusive: exclusive, timeout: timeout)
        defer {
            flock(fd, LOCK_UN)
            Glibc.close(fd)
        }
        return try body()
    }

    /// A descriptor of the lock file of its own, locked: flock(2) locks belong to the open file
    /// description, so each holder (thread, session, process) opens the file itself.
    func lockDescriptor(exclusive: Bool, timeout: Double?) throws -> Int32 {
        let fd = Glibc.open(lockFile.path, O_RDWR | O_CREAT, Self.fileMode)
        guard fd >= 0 else { throw DataError(.io, lockFile.path, String(cString: strerror(errno))) }
        let op = exclusive ? LOCK_EX : LOCK_SH
        let deadline = timeout.map { Date().addingTimeInterval($0) }
        while flock(fd, op | LOCK_NB) != 0 {
            if let deadline, Date() >= deadline {
                Glibc.close(fd)
                throw DataError(.locked, root.path, exclusive ? "a backup is writing to the repository" : "garbage collection is running")
            }
            usleep(50_000)
        }
        return fd
    }
}

func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    var done = 0
    while done < bytes.count {
        let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0, errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}

/// Writes a file so that it either exists whole or not at all: temporary file, fsync, rename,
/// fsync of the directory.
func writeAtomically(_ data: Data, to url: URL, tmp: URL) throws {
    let tmpPath = tmp.appendingPathComponent(url.lastPathComponent + "." + UUID().uuidString).path
    let fd = Glibc.open(tmpPath, O_WRONLY | O_CREAT | O_TRUNC, BackupRepository.fileMode)
    guard fd >= 0 else { throw DataError(.io, tmpPath, String(cString: strerror(errno))) }
    let ok = data.withUnsafeBytes { writeAll(fd, $0) } && fsync(fd) == 0
    Glibc.close(fd)
    guard ok else {
        unlink(tmpPath)
        throw DataError(.io, tmpPath, "cannot write: \(String(cString: strerror(errno)))")
    }
    CrashPoints.hit("manifest-written")
    guard rename(tmpPath, url.path) == 0 else {
        unlink(tmpPath)
        throw DataError(.io, url.path, String(cString: strerror(errno)))
    }
    let dir = Glibc.open(url.deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY)
    if dir >= 0 {
        fsync(dir)
        Glibc.close(dir)
    }
    CrashPoints.hit("manifest-renamed")
}

/// Warnings of the data plane that are not errors (a key file others can read): on standard
/// error, each once per process, and kept for tests.
public enum DataWarnings {
    private static let state = Mutex<(seen: Set<String>, emitted: [String])>(([], []))

    /// Writes `message` unless a warning with the same `key` was written already.
    static func emitOnce(key: String, _ message: String) {
        let first = state.withLock { s -> Bool in
            guard s.seen.insert(key).inserted else { return false }
            s.emitted.append(message)
            return true
        }
        if first { FileHandle.standardError.write(Data("haven: warning: \(message)\n".utf8)) }
    }

    /// Every warning written so far, oldest first.
    public static var emitted: [String] { state.withLock { $0.emitted } }
}

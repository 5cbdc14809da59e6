import CHavenSystem
import CrashPoints
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Where a chunk lives, for callers outside the index (tests, rescue): the pack file's path, the
/// offset of its record's encoded chunk, its length.
struct ChunkLocation: Sendable {
    var pack: String
    var offset: UInt64
    var length: UInt32
    /// True while the pack is still being written.
    var pending: Bool
}

/// Chunks are appended to pack files (about 32 MiB each) instead of one file per chunk: a small
/// chunk no longer costs a file creation. A pack is a sequence of records, each `id (32) |
/// length (u32 LE) | encoded chunk`; it can be re-indexed by reading it front to back. Its index
/// (`index/<pack>.idx`: `id | offset (u64 LE) | length (u32 LE)` per chunk) is written after the
/// pack is in place, so an index never names a pack that is not there.
///
/// Appends are gathered in memory and written a megabyte at a time (asking the kernel to start
/// writing them back at once), so that sealing a pack finds little left to flush. Sealing makes a
/// pack durable before anyone can see it: fsync of the pack, rename into `packs/`, fsync of its
/// directory, then the same for its index. An index in `index/` therefore always names a pack
/// that is on disk, and a commit has only the directory `index/` itself to make durable.
final class PackWriter: @unchecked Sendable {
    // @unchecked: every field is guarded by `lock`; backup workers append from several threads,
    // and a commit may seal from another.
    private let lock = NSCondition()
    unowned let repository: BackupRepository
    /// The pack being appended to.
    private var current: OpenPack?
    /// Packs handed to a thread that is sealing them (outside the lock), by number.
    private var sealing: Set<UInt32> = []
    /// Packs whose seal failed part way (a full file system): tried again, first thing, by the
    /// next append or seal.
    private var unfinished: [OpenPack] = []
    static let target: UInt64 = 32 << 20
    /// Appends are written once this much is gathered.
    static let flushSize = 1 << 20
    /// The kernel is asked to write back every this many bytes.
    static let writebackSize: UInt64 = 8 << 20

    init(repository: BackupRepository) { self.repository = repository }

    /// A pack being written (in `tmp/`) or sealed.
    final class OpenPack {
        let name: String
        let id: UInt32
        var fd: Int32
        /// Bytes of the pack, gathered ones included; bytes already in the file.
        var size: UInt64 = 0
        var written: UInt64 = 0
        var writtenBack: UInt64 = 0
        var buffer: UnsafeMutableRawBufferPointer
        var buffered = 0
        var entries: [(ChunkID, UInt64, UInt32)] = []
        /// 0 writing, 1 in `packs/` (its index still to write).
        var stage = 0

        init(name: String, id: UInt32, fd: Int32) {
            self.name = name
            self.id = id
            self.fd = fd
            buffer = .allocate(byteCount: PackWriter.flushSize + 65_536, alignment: 4096)
        }

        deinit {
            buffer.deallocate()
            if fd >= 0 { close(fd) }
        }
    }

    /// Appends an encoded chunk; the chunk is visible (pending) in the index from here on.
    func append(_ id: ChunkID, _ encoded: UnsafeRawBufferPointer) throws {
        lock.lock()
        var locked = true
        defer { if locked { lock.unlock() } }
        if !unfinished.isEmpty { try finishUnfinishedLocked() }
        if current == nil {
            let name = (0..<4).map { _ in String(format: "%08x", UInt32.random(in: 0...UInt32.max)) }.joined()
            let path = repository.tmpDir.path + "/pack-" + name
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, BackupRepository.fileMode)
            guard fd >= 0 else { throw DataError(.io, path, String(cString: strerror(errno))) }
            current = OpenPack(name: name, id: repository.index.registerPack(name), fd: fd)
        }
        let pack = current!
        let record = 36 + encoded.count
        if pack.buffered + record > pack.buffer.count { try flushLocked(pack) }
        let length = UInt32(encoded.count)
        if record <= pack.buffer.count {
            let at = pack.buffer.baseAddress! + pack.buffered
            id.store(into: UnsafeMutableRawBufferPointer(start: at, count: 32))
            (at + 32).storeBytes(of: length.littleEndian, as: UInt32.self)
            (at + 36).copyMemory(from: encoded.baseAddress!, byteCount: encoded.count)
            pack.buffered += record
        } else {
            // A chunk larger than the buffer (chunk sizes up to 64 MiB) goes straight to the file.
            var header = [UInt8](repeating: 0, count: 36)
            header.withUnsafeMutableBytes { h in
                id.store(into: UnsafeMutableRawBufferPointer(rebasing: h[0..<32]))
                h.storeBytes(of: length.littleEndian, toByteOffset: 32, as: UInt32.self)
            }
            guard header.withUnsafeBytes({ writeAll(pack.fd, $0) }) && writeAll(pack.fd, encoded) else {
                try failedWriteLocked(pack, String(cString: strerror(errno)))
            }
            pack.written += UInt64(record)
        }
        let offset = pack.size + 36
        pack.size += UInt64(record)
        pack.entries.append((id, offset, length))
        repository.index.addPending(id, pack: pack.id, offset: offset, length: length)
        if pack.buffered >= Self.flushSize { try flushLocked(pack) }
        CrashPoints.hit("chunk-appended")
        guard pack.size >= Self.target else { return }
        // Full: a new pack takes the next appends while this thread seals this one.
        current = nil
        sealing.insert(pack.id)
        lock.unlock()
        locked = false
        var failure: (any Error)?
        do { try seal(pack) } catch { failure = error }
        lock.lock()
        sealing.remove(pack.id)
        if failure != nil { unfinished.append(pack) }
        lock.broadcast()
        lock.unlock()
        if let failure { throw failure }
    }

    /// Writes what is gathered of pack `id` (a reader wants a pending chunk of it); a pack being
    /// sealed by another thread is waited for.
    func flush(pack id: UInt32) throws {
        lock.lock()
        defer { lock.unlock() }
        while sealing.contains(id) { lock.wait() }
        if let c = current, c.id == id { try flushLocked(c) }
    }

    private func flushLocked(_ pack: OpenPack) throws {
        guard pack.buffered > 0 else { return }
        guard writeAll(pack.fd, UnsafeRawBufferPointer(rebasing: pack.buffer[0..<pack.buffered])) else {
            try failedWriteLocked(pack, String(cString: strerror(errno)))
        }
        pack.written += UInt64(pack.buffered)
        pack.buffered = 0
        if pack.written - pack.writtenBack >= Self.writebackSize {
            // Start writing back now, so that the fsync at the seal has little left to do.
            _ = haven_start_writeback(pack.fd, off_t(pack.writtenBack), off_t(pack.written - pack.writtenBack))
            pack.writtenBack = pack.written
        }
    }

    /// A write failed: the pack is cut back to its last whole record in the file, and the chunks
    /// gathered after it are forgotten (a backup that deduplicated against one fails at its
    /// commit, naming it: nothing committed ever names them).
    private func failedWriteLocked(_ pack: OpenPack, _ reason: String) throws -> Never {
        let path = repository.tmpDir.path + "/pack-" + pack.name
        let keep = pack.entries.filter { $0.1 + UInt64($0.2) <= pack.written }
        for (id, _, _) in pack.entries.dropFirst(keep.count) { repository.index.dropPending(id) }
        pack.entries = keep
        pack.buffered = 0
        pack.size = pack.written
        guard ftruncate(pack.fd, off_t(pack.written)) == 0, lseek(pack.fd, off_t(pack.written), SEEK_SET) == off_t(pack.written) else {
            // Cannot happen on a sane file system; if it does, this pack is lost: forget it
            // and its chunks (never sealed, so no committed version names them).
            close(pack.fd)
            pack.fd = -1
            unlink(path)
            for (id, _, _) in pack.entries { repository.index.dropPending(id) }
            repository.index.removePack(pack.id)
            current = nil
            throw DataError(.io, path, "cannot append to pack: \(reason)")
        }
        throw DataError(.io, path, "cannot append to pack: \(reason)")
    }

    /// Seals the pack being written, and waits for seals under way on other threads (a commit).
    func seal() throws {
        lock.lock()
        let pack = current
        current = nil
        while !sealing.isEmpty { lock.wait() }
        defer { lock.unlock() }
        if !unfinished.isEmpty { try finishUnfinishedLocked() }
        guard let pack else { return }
        do { try seal(pack) } catch {
            unfinished.append(pack)
            throw error
        }
    }

    private func finishUnfinishedLocked() throws {
        while let pack = unfinished.first {
            try seal(pack)
            unfinished.removeFirst()
        }
    }

    /// Flush, fsync, rename into `packs/`, fsync of its directory; then the index the same way.
    /// Resumable: a pack already in place only has its index written.
    private func seal(_ pack: OpenPack) throws {
        let tmpPath = repository.tmpDir.path + "/pack-" + pack.name
        let final = repository.packPath(pack.name)
        if pack.stage == 0 {
            if pack.buffered > 0 {
                guard writeAll(pack.fd, UnsafeRawBufferPointer(rebasing: pack.buffer[0..<pack.buffered])) else {
                    let reason = String(cString: strerror(errno))
                    // Back to the last whole record, so that a retry appends at the right offset.
                    _ = ftruncate(pack.fd, off_t(pack.written))
                    _ = lseek(pack.fd, off_t(pack.written), SEEK_SET)
                    throw DataError(.io, tmpPath, "cannot append to pack: \(reason)")
                }
                pack.written += UInt64(pack.buffered)
                pack.buffered = 0
            }
            guard fsync(pack.fd) == 0 else { throw DataError(.io, tmpPath, "fsync: \(String(cString: strerror(errno)))") }
            let dir = (final as NSString).deletingLastPathComponent
            if access(dir, F_OK) != 0 {
                mkdir(dir, BackupRepository.directoryMode)
                try syncDirectory(repository.packsDir.path)
            }
            guard rename(tmpPath, final) == 0 else { throw DataError(.io, final, String(cString: strerror(errno))) }
            CrashPoints.hit("pack-renamed")
            close(pack.fd)
            pack.fd = -1
            pack.stage = 1
            repository.index.packMoved(pack.id)
            try syncDirectory(dir)
        }
        var idx = [UInt8](repeating: 0, count: pack.entries.count * 44)
        idx.withUnsafeMutableBytes { out in
            for (i, (id, offset, length)) in pack.entries.enumerated() {
                id.store(into: UnsafeMutableRawBufferPointer(rebasing: out[(i * 44)..<(i * 44 + 32)]))
                out.storeBytes(of: offset.littleEndian, toByteOffset: i * 44 + 32, as: UInt64.self)
                out.storeBytes(of: length.littleEndian, toByteOffset: i * 44 + 40, as: UInt32.self)
            }
        }
        let tmpIndex = repository.tmpDir.path + "/index-" + pack.name
        let ifd = open(tmpIndex, O_WRONLY | O_CREAT | O_TRUNC, BackupRepository.fileMode)
        guard ifd >= 0 else { throw DataError(.io, tmpIndex, String(cString: strerror(errno))) }
        let ok = idx.withUnsafeBytes { writeAll(ifd, $0) } && fsync(ifd) == 0
        close(ifd)
        guard ok, rename(tmpIndex, repository.indexPath(pack.name)) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(tmpIndex)
            throw DataError(.io, tmpIndex, "cannot write the pack index: \(reason)")
        }
        CrashPoints.hit("index-renamed")
        try syncDirectory(repository.indexDir.path)
        repository.index.sealPack(pack.id, entries: pack.entries)
        pack.entries = []
    }
}

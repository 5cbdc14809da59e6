import CHavenSystem
import CrashPoints
import DiskFormats
import Foundation

/// Writes a disk version back: to a sparse raw file, a dynamic VHD file, a writable NBD export,
/// or any sink of bytes (the upload to `/import_raw_vdi`). Bit-identical to what was stored.
public struct DiskRestore: Sendable {
    public let repository: BackupRepository
    public let workers: Int

    public init(repository: BackupRepository, workers: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.repository = repository
        self.workers = max(1, workers)
    }

    /// A raw image: zero chunks (and zero 64 KiB blocks inside chunks) stay holes.
    /// Written under a temporary name beside `path` and renamed over it only once whole: a failed
    /// restore leaves no image (and an image that was there stays as it was).
    public func toRawFile(_ disk: DiskVersion, path: String, progress: (@Sendable (TransferProgress) -> Void)? = nil) throws {
        let entries = try DiskIndex.read(disk.index, from: repository)
        try Self.writeReplacing(path) { fd, regular in try writeRaw(disk, entries: entries, fd: fd, regular: regular, path: path, progress: progress) }
    }

    private func writeRaw(_ disk: DiskVersion, entries: [ChunkID], fd: Int32, regular: Bool, path: String,
                          progress: (@Sendable (TransferProgress) -> Void)?) throws {
        if regular {
            guard ftruncate(fd, off_t(disk.size)) == 0 else { throw DataError(.io, path, "cannot size the file: \(String(cString: strerror(errno)))") }
        }
        // Work in spans of about 1 MiB of neighbouring chunks: each is written with as few large
        // writes as its holes allow, and its writeback started at once (the fsync at the end then
        // has little left to do).
        let span = max(1, (1 << 20) / disk.chunkSize)
        var groups: [Int] = []
        var i = 0
        while i < entries.count {
            if entries[i..<min(entries.count, i + span)].contains(where: { !$0.isZero }) { groups.append(i) }
            i += span
        }
        let cursor = IndexCursor(groups)
        let done = ByteCounter()
        let repo = repository
        try runThreads(min(workers, max(1, groups.count)), name: "restore") { _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: span * disk.chunkSize, alignment: 4096)
            defer { buffer.deallocate() }
            let codec = ChunkCodec(chunkSize: disk.chunkSize)
            // Disks repeat themselves (the same block in many places): the last chunks decoded
            // are kept, and a repeat is a copy instead of a read, decryption and decompression.
            var recent = RecentChunks(capacity: 32, chunkSize: disk.chunkSize)
            defer { recent.release() }
            while let first = cursor.next() {
                let spanStart = Int64(first) * Int64(disk.chunkSize)
                let last = min(entries.count, first + span)
                let spanLength = Int(min(Int64(last - first) * Int64(disk.chunkSize), disk.size - spanStart))
                for c in first..<last {
                    let at = (c - first) * disk.chunkSize
                    let length = Int(min(Int64(disk.chunkSize), disk.size - Int64(c) * Int64(disk.chunkSize)))
                    let view = UnsafeMutableRawBufferPointer(rebasing: buffer[at..<(at + length)])
                    if entries[c].isZero {
                        view.initializeMemory(as: UInt8.self, repeating: 0)
                    } else if !recent.copy(entries[c], into: view) {
                        let n = try repo.getChunk(entries[c], into: view, codec: codec)
                        guard n == length else { throw DataError(.corruptChunk, entries[c].hex, "chunk has \(n) bytes, expected \(length)") }
                        recent.keep(entries[c], UnsafeRawBufferPointer(view))
                    }
                }
                // Runs of non-zero 64 KiB blocks, each one write; zero blocks stay holes.
                let block = 65_536
                var off = 0
                while off < spanLength {
                    let blockLen = min(block, spanLength - off)
                    if UnsafeRawBufferPointer(rebasing: buffer[off..<(off + blockLen)]).isZero {
                        off += blockLen
                        continue
                    }
                    var end = off + blockLen
                    while end < spanLength {
                        let len = min(block, spanLength - end)
                        if UnsafeRawBufferPointer(rebasing: buffer[end..<(end + len)]).isZero { break }
                        end += len
                    }
                    var w = 0
                    while w < end - off {
                        let r = pwrite(fd, buffer.baseAddress! + off + w, end - off - w, off_t(spanStart) + off_t(off + w))
                        if r < 0 && errno == EINTR { continue }
                        guard r > 0 else { throw DataError(.io, path, "write failed: \(String(cString: strerror(errno)))") }
                        w += r
                    }
                    if regular { _ = haven_start_writeback(fd, off_t(spanStart) + off_t(off), off_t(end - off)) }
                    off = end
                }
                progress?(TransferProgress(bytesDone: done.add(Int64(spanLength)), bytesTotal: disk.size))
            }
        }
    }

    /// A dynamic VHD (2 MiB blocks; only blocks with data are present) that qemu-img reads;
    /// written under a temporary name and renamed, as `toRawFile`.
    public func toVHDFile(_ disk: DiskVersion, path: String) throws {
        try Self.writeReplacing(path) { fd, _ in
            try toVHDStream(disk) { bytes in
                guard writeAll(fd, bytes) else { throw DataError(.io, path, "write failed: \(String(cString: strerror(errno)))") }
            }
        }
    }

    /// Runs `body` on a new file `.<name>.haven-partial-<random>` beside `path` (same directory,
    /// so the rename cannot cross file systems), makes it durable, and renames it to `path`; on
    /// any failure the temporary file is removed and `path` is untouched. The file is 0600: it
    /// holds a disk's contents. A `path` that exists and is not a regular file (a block device,
    /// a pipe) is written in place, as a rename would replace the device node itself.
    public static func writeReplacing(_ path: String, _ body: (_ fd: Int32, _ regular: Bool) throws -> Void) throws {
        var st = stat()
        if stat(path, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG {
            let fd = open(path, O_WRONLY)
            guard fd >= 0 else { throw DataError(.io, path, String(cString: strerror(errno))) }
            defer { close(fd) }
            try body(fd, false)
            guard fsync(fd) == 0 || errno == EINVAL else { throw DataError(.io, path, "fsync failed") }
            return
        }
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        let tmp = dir + "/." + url.lastPathComponent + ".haven-partial-" + String(format: "%08x", UInt32.random(in: 0...UInt32.max))
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, BackupRepository.fileMode)
        guard fd >= 0 else { throw DataError(.io, tmp, String(cString: strerror(errno))) }
        do {
            try body(fd, true)
            guard fsync(fd) == 0 else { throw DataError(.io, tmp, "fsync failed: \(String(cString: strerror(errno)))") }
            close(fd)
            CrashPoints.hit("restored image written")
        } catch {
            close(fd)
            unlink(tmp)
            throw error
        }
        guard rename(tmp, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(tmp)
            throw DataError(.io, path, "cannot put the restored image in place: \(reason)")
        }
        let dfd = open(dir, O_RDONLY | O_DIRECTORY)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
        CrashPoints.hit("restored image renamed")
    }

    /// The size of the VHD `toVHDStream` produces (for a Content-Length upload).
    public func vhdSize(_ disk: DiskVersion) throws -> Int64 {
        VHD.Layout(size: UInt64(disk.size), presentBlocks: try presentVHDBlocks(disk, entries: DiskIndex.read(disk.index, from: repository))).fileSize
    }

    func presentVHDBlocks(_ disk: DiskVersion, entries: [ChunkID]) -> [Int] {
        var present = Set<Int>()
        for (i, id) in entries.enumerated() where !id.isZero {
            let start = Int64(i) * Int64(disk.chunkSize)
            let end = min(disk.size, start + Int64(disk.chunkSize))
            for b in Int(start / Int64(VHD.blockSize))...Int((end - 1) / Int64(VHD.blockSize)) { present.insert(b) }
        }
        return present.sorted()
    }

    /// Streams a dynamic VHD front to back.
    public func toVHDStream(_ disk: DiskVersion, emit: (UnsafeRawBufferPointer) throws -> Void) throws {
        let entries = try DiskIndex.read(disk.index, from: repository)
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: disk.chunkSize, alignment: 4096)
        defer { chunk.deallocate() }
        try VHD.write(size: UInt64(disk.size), presentBlocks: presentVHDBlocks(disk, entries: entries), readBlock: { block, buffer in
            let start = Int64(block) * Int64(VHD.blockSize)
            let end = min(disk.size, start + Int64(VHD.blockSize))
            var pos = start
            while pos < end {
                let c = Int(pos / Int64(disk.chunkSize))
                let cStart = Int64(c) * Int64(disk.chunkSize)
                let cLen = Int(min(Int64(disk.chunkSize), disk.size - cStart))
                let from = Int(pos - cStart)
                let n = Int(min(Int64(cLen - from), end - pos))
                if !entries[c].isZero {
                    _ = try repository.getChunk(entries[c], into: UnsafeMutableRawBufferPointer(rebasing: chunk[0..<cLen]))
                    (buffer.baseAddress! + Int(pos - start)).copyMemory(from: chunk.baseAddress! + from, byteCount: n)
                }
                pos += Int64(n)
            }
        }, emit: emit)
    }

    /// The raw disk, front to back, in order (for `/import_raw_vdi` with format raw).
    public func toRawStream(_ disk: DiskVersion, emit: (UnsafeRawBufferPointer) throws -> Void) throws {
        let entries = try DiskIndex.read(disk.index, from: repository)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: disk.chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        for (i, id) in entries.enumerated() {
            let start = Int64(i) * Int64(disk.chunkSize)
            let length = Int(min(Int64(disk.chunkSize), disk.size - start))
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<length])
            if id.isZero { view.initializeMemory(as: UInt8.self, repeating: 0) } else { _ = try repository.getChunk(id, into: view) }
            try emit(UnsafeRawBufferPointer(view))
        }
    }

    /// Writes into a writable NBD export. `targetIsZero` skips zero chunks (a fresh export).
    public func toNBD(_ disk: DiskVersion, endpoint: NBDEndpoint, targetIsZero: Bool = false, connections: Int = 2) throws {
        let entries = try DiskIndex.read(disk.index, from: repository)
        let probe = try NBDConnection(endpoint, writable: true)
        guard probe.size >= disk.size else {
            throw DataError(.nbd, endpoint.description, "the export has \(probe.size) bytes, the disk \(disk.size)")
        }
        // The connection that checked the size writes too: one handshake fewer.
        let spare = Handoff(probe)
        let work = entries.indices.filter { !(targetIsZero && entries[$0].isZero) }
        let cursor = IndexCursor(work)
        let repo = repository
        try runThreads(min(connections, max(1, work.count)), name: "nbd-write") { _ in
            let conn = try spare.take() ?? NBDConnection(endpoint, writable: true)
            let codec = ChunkCodec(chunkSize: disk.chunkSize)
            var buffers: [(Int64, UnsafeMutableRawBufferPointer)] = []
            var inFlight: [(Int64, UnsafeMutableRawBufferPointer)] = []
            // libnbd reads a write's buffer until the command completes: finish the connection
            // (drain or close) before freeing any of them, whichever way this thread ends.
            defer {
                conn.finish()
                for (_, b) in buffers + inFlight { b.deallocate() }
            }
            while true {
                while inFlight.count < 8, let i = cursor.next() {
                    let start = Int64(i) * Int64(disk.chunkSize)
                    let length = Int(min(Int64(disk.chunkSize), disk.size - start))
                    let b = buffers.popLast()?.1 ?? UnsafeMutableRawBufferPointer.allocate(byteCount: disk.chunkSize, alignment: 4096)
                    let view = UnsafeMutableRawBufferPointer(rebasing: b[0..<length])
                    if entries[i].isZero { view.initializeMemory(as: UInt8.self, repeating: 0) } else { _ = try repo.getChunk(entries[i], into: view, codec: codec) }
                    let cookie = try conn.startWrite(from: b.baseAddress!, count: length, offset: start)
                    inFlight.append((cookie, b))
                }
                if inFlight.isEmpty { break }
                try conn.poll(timeoutMs: 30_000)
                var k = 0
                while k < inFlight.count {
                    if try conn.completed(inFlight[k].0) {
                        buffers.append(inFlight.remove(at: k))
                    } else {
                        k += 1
                    }
                }
            }
            try conn.flush()
        }
    }
}

final class IndexCursor: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private let items: [Int]
    private var next_ = 0
    init(_ items: [Int]) { self.items = items }
    func next() -> Int? {
        lock.lock()
        defer { lock.unlock() }
        guard next_ < items.count else { return nil }
        defer { next_ += 1 }
        return items[next_]
    }
}

final class ByteCounter: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var total: Int64 = 0
    func add(_ n: Int64) -> Int64 {
        lock.lock()
        defer { lock.unlock() }
        total += n
        return total
    }
}

/// A value handed to the first thread that asks (a connection opened before the threads start).
final class Handoff<T>: @unchecked Sendable {
    // @unchecked: guarded by `lock`; the value goes to exactly one thread.
    private let lock = NSLock()
    private var value: T?
    init(_ value: T) { self.value = value }
    func take() -> T? {
        lock.withLock {
            defer { value = nil }
            return value
        }
    }
}

/// The chunks a restore thread decoded last (a small ring): a disk's repeated blocks are copied.
struct RecentChunks {
    private var ids: [ChunkID]
    private let memory: UnsafeMutableRawBufferPointer
    private var lengths: [Int]
    private var next = 0
    private let chunkSize: Int

    init(capacity: Int, chunkSize: Int) {
        self.chunkSize = chunkSize
        ids = Array(repeating: .zero, count: capacity)
        lengths = Array(repeating: 0, count: capacity)
        memory = .allocate(byteCount: capacity * chunkSize, alignment: 64)
    }

    // The ring's memory lives as long as the thread that made it; freed with it.
    func release() { memory.deallocate() }

    func copy(_ id: ChunkID, into out: UnsafeMutableRawBufferPointer) -> Bool {
        guard let i = ids.firstIndex(of: id), lengths[i] == out.count else { return false }
        out.baseAddress!.copyMemory(from: memory.baseAddress! + i * chunkSize, byteCount: out.count)
        return true
    }

    mutating func keep(_ id: ChunkID, _ bytes: UnsafeRawBufferPointer) {
        (memory.baseAddress! + next * chunkSize).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        ids[next] = id
        lengths[next] = bytes.count
        next = (next + 1) % ids.count
    }
}

import DiskFormats
import Foundation
import HavenData
import Synchronization
import XenAPI

#if canImport(Glibc)
    import Glibc
#endif

/// Byte ranges of one disk, staged from an NBD read into a sparse scratch file (readers deliver
/// out of order; the VHD goes out in order), then written onto a VDI as a VHD delta whose blocks
/// are small enough that scattered 64 KiB changes travel without megabytes of padding each.
/// `readAndSend` sends the VHD while the read is still running: each piece goes out as soon as
/// its blocks are staged.
final class StagedDisk: Sendable {
    let path: String
    let fd: Int32
    let size: Int64
    /// 64 KiB blocks (CBT's unit) that hold a non-zero byte, among those staged (when asked
    /// for: an initial sync sends only those; every other copy sends every block it reads).
    let nonZero = Mutex<Set<Int>>([])
    let findsNonZero: Bool
    /// Which blocks are staged and how the read ended: what a streaming upload waits on.
    let progress: StagingProgress

    init(scratch: URL, name: String, size: Int64, findsNonZero: Bool = false) throws {
        self.findsNonZero = findsNonZero
        path = scratch.appendingPathComponent("replica-\(name).raw").path
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        self.size = size
        progress = StagingProgress(blocks: Int((size + Int64(ChangedBlocks.blockSize) - 1) / Int64(ChangedBlocks.blockSize)))
        guard fd >= 0 else { throw EngineError(.action, path, "cannot create \(path): \(String(cString: strerror(errno)))") }
    }

    func close() {
        Glibc.close(fd)
        unlink(path)
    }

    /// Stages the ranges of a delivered job: `buffer` is a chunk of `chunkSize` bytes holding each
    /// range at its offset within the chunk.
    func stage(_ job: ReadJob, _ buffer: ChunkBuffer, chunkSize: Int) throws {
        // The upload failed: the readers stop at their next delivery instead of reading on.
        if progress.isStopped { throw EngineError(.action, path, "the upload of the staged blocks stopped") }
        let chunkStart = Int64(job.chunk) * Int64(chunkSize)
        let blockSize = Int64(ChangedBlocks.blockSize)
        var found: [Int] = []
        var complete: [Range<Int>] = []
        for r in job.ranges {
            let base = buffer.memory.baseAddress! + Int(r.offset - chunkStart)
            let bytes = UnsafeRawBufferPointer(start: base, count: r.length)
            var at = findsNonZero ? 0 : r.length
            while at < r.length {
                let blockStart = r.offset + Int64(at)
                let block = Int(blockStart / Int64(ChangedBlocks.blockSize))
                let end = min(r.length, Int((Int64(block + 1) * Int64(ChangedBlocks.blockSize)) - r.offset))
                if UnsafeRawBufferPointer(rebasing: bytes[at..<end]).contains(where: { $0 != 0 }) { found.append(block) }
                at = end
            }
            var done = 0
            while done < r.length {
                let w = pwrite(fd, base + done, r.length - done, off_t(r.offset) + off_t(done))
                guard w > 0 else { throw EngineError(.action, path, "cannot write \(path): \(String(cString: strerror(errno)))") }
                done += w
            }
            // The 64 KiB blocks this range covers whole (the last one of the disk may be short).
            let first = Int((r.offset + blockSize - 1) / blockSize)
            let last = r.end >= size ? Int((size + blockSize - 1) / blockSize) : Int(r.end / blockSize)
            if first < last { complete.append(first..<last) }
        }
        if !found.isEmpty { nonZero.withLock { $0.formUnion(found) } }
        progress.mark(complete)
    }

    /// Reads the given 64 KiB blocks from `source` into the scratch file (2 MiB read jobs, in
    /// ascending order: the order a streaming upload wants them).
    func read(blocks: [Int], from source: any DiskSource) throws {
        let perChunk = VHD.blockSize / ChangedBlocks.blockSize
        var byChunk: [Int: [ByteRange]] = [:]
        for b in blocks.sorted() {
            let start = Int64(b) * Int64(ChangedBlocks.blockSize)
            let length = Int(min(Int64(ChangedBlocks.blockSize), size - start))
            guard length > 0 else { continue }
            let chunk = b / perChunk
            if let last = byChunk[chunk]?.last, last.end == start {
                byChunk[chunk]![byChunk[chunk]!.count - 1].length += length
            } else {
                byChunk[chunk, default: []].append(ByteRange(offset: start, length: length))
            }
        }
        let jobs = byChunk.keys.sorted().map { ReadJob(chunk: $0, ranges: byChunk[$0]!) }
        let pool = BufferPool(size: VHD.blockSize, limit: 64)
        try source.read(jobs, buffers: pool) { [self] job, buffer in
            defer { pool.release(buffer) }
            try stage(job, buffer, chunkSize: VHD.blockSize)
        }
    }

    /// The blocks as sector extents, coalesced (clipped to the disk's end).
    func extents(_ blocks: [Int]) -> [VHDDelta.Extent] {
        var out: [VHDDelta.Extent] = []
        for b in blocks.sorted() {
            let start = UInt64(b) * UInt64(ChangedBlocks.blockSize)
            guard start < UInt64(size) else { continue }
            let length = min(UInt64(ChangedBlocks.blockSize), UInt64(size) - start)
            if let last = out.last, last.end == start {
                out[out.count - 1].length += length
            } else {
                out.append(VHDDelta.Extent(offset: start, length: length))
            }
        }
        return out
    }

    /// Writes the staged blocks onto `vdi` through `/import_raw_vdi?format=vhd`: only their sectors
    /// change on the target. Returns the bytes the extents cover and the bytes of the VHD sent.
    /// `streaming`: the read is still running (`readAndSend`), each piece waits until its blocks
    /// are staged; otherwise the read is over and blocks it did not stage are holes (zeros).
    /// `what` names the disk and where it goes, for the error of a connection lost mid-upload.
    func send(blocks: [Int], to client: XenAPIClient, vdi: VDIRef, what: String, streaming: Bool = false) async throws -> (written: Int64, sent: Int64) {
        guard !blocks.isEmpty else { return (0, 0) }
        let delta = try VHDDelta(size: UInt64(size), extents: extents(blocks), blockSize: VHDDelta.blockSize(forDisk: UInt64(size)))
        let fd = self.fd
        let path = self.path
        let progress = self.progress
        let blockSize = UInt64(ChangedBlocks.blockSize)
        let stream = VHDDeltaStream(delta) { offset, buffer in
            if streaming { try progress.wait(for: Int(offset / blockSize)..<Int((offset + UInt64(buffer.count) + blockSize - 1) / blockSize)) }
            var done = 0
            while done < buffer.count {
                let r = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
                guard r >= 0 else { throw EngineError(.action, path, "cannot read \(path): \(String(cString: strerror(errno)))") }
                if r == 0 { break }
                done += r
            }
        }
        let handed = Atomic<Int64>(0)
        do {
            try await client.importRawVDI(vdi, format: .vhd, length: delta.fileSize) {
                let n = try stream.read(into: $0)
                handed.add(Int64(n), ordering: .relaxed)
                return n
            }
        } catch let e as HTTPTransportError where handed.load(ordering: .relaxed) > 0 {
            // The pool answered and the body was going out: the link dropped mid-upload, which
            // is not "could not be reached". Say what was being written and how far it got.
            throw EngineError(.action, what, "the upload of \(what) (/import_raw_vdi, a VHD delta of \(delta.fileSize) bytes) broke off after \(handed.load(ordering: .relaxed)) bytes had been handed to the connection: \(e)")
        }
        return (delta.extentBytes, delta.fileSize)
    }

    /// Runs `read` (blocking work that stages every one of `blocks`) on a thread of its own and
    /// sends the VHD of `blocks` at the same time, each piece as soon as it is staged: the upload
    /// overlaps the read instead of following it. A failed read fails the upload at its next
    /// piece (xapi then fails the import, as for any cut upload; what came before it is written,
    /// and the next sync, whose anchor did not move, writes those blocks again); a failed upload
    /// stops the read at its next delivery. The read is always over when this returns.
    func readAndSend<T: Sendable>(blocks: [Int], to client: XenAPIClient, vdi: VDIRef, what: String,
                                  read: @escaping @Sendable () throws -> T) async throws -> (T, written: Int64, sent: Int64) {
        let progress = self.progress
        async let reading: T = blocking {
            do {
                let r = try read()
                progress.end(nil)
                return r
            } catch {
                progress.end(error)
                throw error
            }
        }
        let sent: (written: Int64, sent: Int64)
        do {
            sent = try await send(blocks: blocks, to: client, vdi: vdi, what: what, streaming: true)
        } catch {
            progress.stop()
            _ = try? await reading
            throw error
        }
        return (try await reading, sent.written, sent.sent)
    }
}

/// Which 64 KiB blocks of a `StagedDisk` hold their bytes, and how the read ended: an upload that
/// starts before the read is over waits here for the blocks it sends next.
final class StagingProgress: @unchecked Sendable {
    // @unchecked: every field is guarded by `condition`.
    private let condition = NSCondition()
    private var staged: [UInt64]
    private var ended = false
    private var failure: (any Error)?
    private var stopped = false

    init(blocks: Int) { staged = [UInt64](repeating: 0, count: (blocks + 63) / 64) }

    func mark(_ ranges: [Range<Int>]) {
        guard !ranges.isEmpty else { return }
        condition.lock()
        for r in ranges {
            for b in r where b / 64 < staged.count { staged[b / 64] |= 1 << UInt64(b % 64) }
        }
        condition.broadcast()
        condition.unlock()
    }

    /// The read is over (`failure` when it failed): waiters for blocks that never came stop waiting.
    func end(_ failure: (any Error)?) {
        condition.lock()
        ended = true
        self.failure = failure
        condition.broadcast()
        condition.unlock()
    }

    /// The upload is over without the read: staging fails from now on.
    func stop() {
        condition.lock()
        stopped = true
        condition.unlock()
    }

    var isStopped: Bool {
        condition.lock()
        defer { condition.unlock() }
        return stopped
    }

    /// Waits until every block of `blocks` is staged or the read is over; throws the read's
    /// error when it failed. (A block a finished read did not stage is a hole: zeros.)
    func wait(for blocks: Range<Int>) throws {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if let failure { throw failure }
            if ended || blocks.allSatisfy({ $0 / 64 >= staged.count || staged[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }) { return }
            condition.wait()
        }
    }
}

/// A disk source that also stages every range it delivers: the one read that feeds a backup
/// (singlePass) and the replica.
struct TeeDiskSource: DiskSource {
    let inner: any DiskSource
    let staged: StagedDisk

    var size: Int64 { inner.size }
    var label: String { inner.label }

    func read(_ jobs: [ReadJob], buffers: BufferPool, deliver: @escaping @Sendable (ReadJob, ChunkBuffer) throws -> Void) throws {
        let staged = self.staged
        let chunkSize = buffers.size
        try inner.read(jobs, buffers: buffers) { job, buffer in
            try staged.stage(job, buffer, chunkSize: chunkSize)
            try deliver(job, buffer)
        }
    }
}

/// What one disk copy did, for the outcome and the bench.
struct CopyCounters: Sendable {
    var read: Int64 = 0
    var written: Int64 = 0
    var sent: Int64 = 0

    static func + (a: CopyCounters, b: CopyCounters) -> CopyCounters {
        CopyCounters(read: a.read + b.read, written: a.written + b.written, sent: a.sent + b.sent)
    }
}

/// User and system CPU seconds of this process so far (every thread): logged beside wall time.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

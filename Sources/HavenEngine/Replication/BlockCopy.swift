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
final class StagedDisk: Sendable {
    let path: String
    let fd: Int32
    let size: Int64
    /// 64 KiB blocks (CBT's unit) that hold a non-zero byte, among those staged.
    let nonZero = Mutex<Set<Int>>([])

    init(scratch: URL, name: String, size: Int64) throws {
        path = scratch.appendingPathComponent("replica-\(name).raw").path
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
        self.size = size
        guard fd >= 0 else { throw EngineError(.action, path, "cannot create \(path): \(String(cString: strerror(errno)))") }
    }

    func close() {
        Glibc.close(fd)
        unlink(path)
    }

    /// Stages the ranges of a delivered job: `buffer` is a chunk of `chunkSize` bytes holding each
    /// range at its offset within the chunk.
    func stage(_ job: ReadJob, _ buffer: ChunkBuffer, chunkSize: Int) throws {
        let chunkStart = Int64(job.chunk) * Int64(chunkSize)
        var found: [Int] = []
        for r in job.ranges {
            let base = buffer.memory.baseAddress! + Int(r.offset - chunkStart)
            let bytes = UnsafeRawBufferPointer(start: base, count: r.length)
            var at = 0
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
        }
        if !found.isEmpty { nonZero.withLock { $0.formUnion(found) } }
    }

    /// Reads the given 64 KiB blocks from `source` into the scratch file (2 MiB read jobs).
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
    func send(blocks: [Int], to client: XenAPIClient, vdi: VDIRef) async throws -> (written: Int64, sent: Int64) {
        guard !blocks.isEmpty else { return (0, 0) }
        let delta = try VHDDelta(size: UInt64(size), extents: extents(blocks), blockSize: VHDDelta.blockSize(forDisk: UInt64(size)))
        let fd = self.fd
        let path = self.path
        let stream = VHDDeltaStream(delta) { offset, buffer in
            var done = 0
            while done < buffer.count {
                let r = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
                guard r >= 0 else { throw EngineError(.action, path, "cannot read \(path): \(String(cString: strerror(errno)))") }
                if r == 0 { break }
                done += r
            }
        }
        try await client.importRawVDI(vdi, format: .vhd, length: delta.fileSize) { try stream.read(into: $0) }
        return (delta.extentBytes, delta.fileSize)
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

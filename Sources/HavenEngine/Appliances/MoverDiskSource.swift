import Foundation
import HavenData
import HavenMover

/// A disk plugged into a leased appliance, read through its mover: one READ stream over the
/// 64 KiB blocks the backup's jobs need (every block, or the changed ones as a bitmap), cut
/// into the repository's chunks as the blocks arrive in ascending order. The stream resumes by
/// itself after a broken connection (`MoverClient`), so each block is delivered once.
final class MoverDiskSource: DiskSource, @unchecked Sendable {
    // @unchecked: immutable; the stream state lives inside `read`, on the transfer thread.
    let size: Int64
    let label: String
    let client: MoverClient
    let disk: String

    init(client: MoverClient, disk: String, size: Int64, label: String) {
        self.client = client
        self.disk = disk
        self.size = size
        self.label = label
    }

    func read(_ jobs: [ReadJob], buffers: BufferPool, deliver: @escaping @Sendable (ReadJob, ChunkBuffer) throws -> Void) throws {
        let block = Int64(MoverProtocol.blockSize)
        let chunkSize = Int64(buffers.size)
        guard chunkSize % block == 0 else {
            throw DataError(.unsupported, label, "the repository's chunks (\(chunkSize) bytes) are not a multiple of the mover's 64 KiB blocks")
        }
        // The blocks each job's ranges touch; a job is delivered once all of them arrived.
        var byChunk: [Int: ReadJob] = [:]
        var remaining: [Int: Int] = [:]
        var wanted: [Int64] = []
        for job in jobs.sorted(by: { $0.chunk < $1.chunk }) {
            var blocks = Set<Int64>()
            for r in job.ranges where r.length > 0 {
                for b in (r.offset / block)...((r.offset + Int64(r.length) - 1) / block) { blocks.insert(b) }
            }
            guard !blocks.isEmpty else { continue }
            byChunk[job.chunk] = job
            remaining[job.chunk] = blocks.count
            wanted += blocks.sorted()
        }
        guard !wanted.isEmpty else { return }
        let all = BlockRange(diskSize: size)
        let bitmap: HavenMover.ChangedBlocks? = Int64(wanted.count) == all.count ? nil : HavenMover.ChangedBlocks(blocks: wanted)
        var open: [Int: ChunkBuffer] = [:]
        do {
            _ = try client.readBlocksBlocking(disk: disk, range: all, bitmap: bitmap) { b in
                let c = Int(b.offset / chunkSize)
                guard let job = byChunk[c], remaining[c, default: 0] > 0 else { return }
                let buffer: ChunkBuffer
                if let o = open[c] {
                    buffer = o
                } else {
                    buffer = buffers.acquire()
                    open[c] = buffer
                }
                let chunkStart = Int64(c) * chunkSize
                let blockEnd = min(b.offset + block, size)
                if !b.isZero && Int64(b.bytes.count) != blockEnd - b.offset {
                    throw DataError(.io, label, "block \(b.index) came with \(b.bytes.count) bytes, \(blockEnd - b.offset) expected")
                }
                for r in job.ranges {
                    let from = max(r.offset, b.offset)
                    let to = min(r.offset + Int64(r.length), blockEnd)
                    guard from < to else { continue }
                    let at = buffer.memory.baseAddress! + Int(from - chunkStart)
                    if b.isZero {
                        at.initializeMemory(as: UInt8.self, repeating: 0, count: Int(to - from))
                    } else {
                        b.bytes.withUnsafeBytes { at.copyMemory(from: $0.baseAddress! + Int(from - b.offset), byteCount: Int(to - from)) }
                    }
                }
                remaining[c]! -= 1
                if remaining[c] == 0 {
                    open[c] = nil
                    try deliver(job, buffer)
                }
            }
        } catch {
            for (_, buffer) in open { buffers.release(buffer) }
            throw error
        }
        for (_, buffer) in open { buffers.release(buffer) }
        let missing = remaining.values.filter { $0 > 0 }.count
        guard missing == 0 else { throw DataError(.io, label, "the mover's stream ended with \(missing) chunk\(missing == 1 ? "" : "s") unread") }
    }
}

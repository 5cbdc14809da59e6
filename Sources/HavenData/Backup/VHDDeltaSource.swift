import DiskFormats
import Foundation

/// A disk read as a VHD delta: the blocks that differ from a base, as xapi answers
/// `/export_raw_vdi?format=vhd&base=<base VDI>` (the pre-CBT way to an incremental). The stream
/// is parsed as it arrives and cut into chunk jobs; only chunks the delta's present sectors touch
/// are delivered, each with the ranges it carries, and `DiskBackup` patches them into the
/// previous version (a range that covers a whole chunk needs nothing of the old one).
public final class VHDDeltaDiskSource: DiskSource, @unchecked Sendable {
    // @unchecked: immutable; the parsing state lives in a `DeltaChunker` made per `read`.
    public let size: Int64
    public let label: String
    /// Runs the download on the calling thread, handing the stream to `sink` piece by piece, in order.
    let produce: @Sendable (_ sink: @escaping @Sendable (UnsafeRawBufferPointer) throws -> Void) throws -> Void

    public init(size: Int64, label: String,
                produce: @escaping @Sendable (_ sink: @escaping @Sendable (UnsafeRawBufferPointer) throws -> Void) throws -> Void) {
        self.size = size
        self.label = label
        self.produce = produce
    }

    public var deliversChangesOnly: Bool { true }

    /// `jobs` is ignored: the delta says which chunks changed.
    public func read(_ jobs: [ReadJob], buffers: BufferPool, deliver: @escaping @Sendable (ReadJob, ChunkBuffer) throws -> Void) throws {
        let chunker = DeltaChunker(size: size, label: label, buffers: buffers, deliver: deliver)
        try produce { try chunker.feed($0) }
        try chunker.finish()
    }
}

/// Turns a VHD stream into chunk jobs. A chunk is delivered once every present VHD block that
/// overlaps it has gone by (for chunks up to 2 MiB: the one block holding it).
final class DeltaChunker: @unchecked Sendable {
    // @unchecked: used by the one thread running the download, one call at a time.
    let size: Int64
    let label: String
    let buffers: BufferPool
    let deliver: @Sendable (ReadJob, ChunkBuffer) throws -> Void
    let chunkSize: Int
    private var parser: VHDStreamParser!
    private var header: VHDStreamParser.Header?
    private var present: Set<Int> = []
    /// Chunks being filled: their buffer and the ranges written so far.
    private var open: [Int: (buffer: ChunkBuffer, ranges: [ByteRange])] = [:]
    /// For chunks larger than a VHD block: present blocks of the chunk still to come.
    private var blocksLeft: [Int: Int] = [:]

    init(size: Int64, label: String, buffers: BufferPool, deliver: @escaping @Sendable (ReadJob, ChunkBuffer) throws -> Void) {
        self.size = size
        self.label = label
        self.buffers = buffers
        self.deliver = deliver
        chunkSize = buffers.size
        parser = VHDStreamParser(
            header: { [unowned self] in try self.start($0) }, data: { [unowned self] in try self.data($0, $1) },
            blockEnd: { [unowned self] in try self.blockEnd($0) })
    }

    deinit {
        // A failed transfer: the buffers being filled go back.
        for (_, c) in open { buffers.release(c.buffer) }
    }

    func feed(_ bytes: UnsafeRawBufferPointer) throws {
        do {
            try parser.feed(bytes)
        } catch let e as VHD.FormatError {
            throw DataError(.io, label, "the VHD delta cannot be read: \(e.message)")
        }
    }

    func finish() throws {
        do {
            try parser.finish()
        } catch let e as VHD.FormatError {
            throw DataError(.io, label, "the VHD delta cannot be read: \(e.message)")
        }
        guard open.isEmpty else { throw DataError(.io, label, "the VHD delta ended with \(open.count) chunks incomplete") }
    }

    private func start(_ h: VHDStreamParser.Header) throws {
        guard h.size == UInt64(size) else {
            throw DataError(.io, label, "the VHD delta is for a disk of \(h.size) bytes, the snapshot has \(size)")
        }
        header = h
        present = Set(h.presentBlocks)
    }

    /// Chunks overlapping VHD block `b`.
    private func chunks(ofBlock b: Int, blockSize: Int) -> ClosedRange<Int> {
        let start = Int64(b) * Int64(blockSize)
        let end = min(size, start + Int64(blockSize)) - 1
        return Int(start / Int64(chunkSize))...Int(max(start, end) / Int64(chunkSize))
    }

    private func data(_ offset: UInt64, _ bytes: UnsafeRawBufferPointer) throws {
        var at = Int64(offset)
        var done = 0
        while done < bytes.count {
            let c = Int(at / Int64(chunkSize))
            let chunkStart = Int64(c) * Int64(chunkSize)
            let within = Int(at - chunkStart)
            let n = min(chunkSize - within, bytes.count - done)
            if open[c] == nil {
                // Wait for a buffer only when filling no other chunk (see BufferPool); otherwise
                // take one beyond the pool's limit, which only out-of-order large chunks need.
                let next = buffers.tryAcquire() ?? (open.isEmpty ? buffers.acquireUnlessClosed() : ChunkBuffer(size: chunkSize))
                guard let buffer = next else { throw DataError(.cancelled, label, "the transfer was stopped") }
                open[c] = (buffer, [])
            }
            (open[c]!.buffer.memory.baseAddress! + within).copyMemory(from: bytes.baseAddress! + done, byteCount: n)
            if let last = open[c]!.ranges.last, last.end == at {
                open[c]!.ranges[open[c]!.ranges.count - 1].length += n
            } else {
                open[c]!.ranges.append(ByteRange(offset: at, length: n))
            }
            at += Int64(n)
            done += n
        }
    }

    private func blockEnd(_ b: Int) throws {
        guard let h = header else { return }
        for c in chunks(ofBlock: b, blockSize: h.blockSize) {
            if chunkSize > h.blockSize {
                let first = Int(Int64(c) * Int64(chunkSize) / Int64(h.blockSize))
                let last = Int((min(size, Int64(c + 1) * Int64(chunkSize)) - 1) / Int64(h.blockSize))
                let left = (blocksLeft[c] ?? (first...last).filter(present.contains).count) - 1
                if left > 0 {
                    blocksLeft[c] = left
                    continue
                }
                blocksLeft[c] = nil
            }
            guard let (buffer, ranges) = open.removeValue(forKey: c) else { continue }
            try deliver(ReadJob(chunk: c, ranges: ranges), buffer)
        }
    }
}

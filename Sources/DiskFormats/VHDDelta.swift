import Foundation

/// A dynamic VHD that holds only some byte ranges of a disk, to be imported onto an existing VDI
/// with `PUT /import_raw_vdi?format=vhd`: xapi (vhd-tool) writes exactly the sectors the VHD marks
/// present, block by block as the BAT lists them and sector by sector as each block's bitmap
/// says, and leaves the rest of the VDI as it was. A 2 MiB block only partly covered by the
/// ranges is stored whole but marks only the covered sectors, so neighbouring data on the target
/// is untouched.
///
/// The file is laid out for streaming front to back: footer copy, dynamic header, BAT, then for
/// each present block (ascending) its sector bitmap and its 2 MiB of data, then the footer.
public struct VHDDelta: Sendable {
    /// A byte range of the disk. Offsets are multiples of 512; lengths too, except a range that
    /// ends exactly at the disk's size.
    public struct Extent: Sendable, Hashable {
        public var offset: UInt64
        public var length: UInt64

        public init(offset: UInt64, length: UInt64) {
            self.offset = offset
            self.length = length
        }

        public var end: UInt64 { offset + length }
    }

    public let size: UInt64
    /// Sorted, merged, non-empty ranges.
    public let extents: [Extent]
    /// Present blocks in ascending order, each with its sector bitmap.
    let blocks: [(index: Int, bitmap: [UInt8])]
    let layout: VHD.Layout

    /// Bytes of data per VHD block.
    public var blockSize: Int { layout.blockSize }

    /// The smallest block size from `minimum` (a power of two) up whose BAT stays within
    /// `maxEntries` entries: small blocks carry scattered changes without 2 MiB of padding each.
    public static func blockSize(forDisk size: UInt64, minimum: Int = 65_536, maxEntries: Int = 1 << 20) -> Int {
        var b = minimum
        while b < VHD.blockSize && (size + UInt64(b) - 1) / UInt64(b) > UInt64(maxEntries) { b *= 2 }
        return b
    }

    /// Checks and normalises the ranges (overlapping or touching ones are merged). `blockSize`:
    /// bytes of data per VHD block (2 MiB by default, as XenServer writes them; a power of two).
    public init(size: UInt64, extents: [Extent], blockSize: Int = VHD.blockSize) throws {
        guard blockSize >= 4_096, blockSize & (blockSize - 1) == 0 else { throw VHD.FormatError(message: "block size \(blockSize) is not a power of two from 4 KiB") }
        let sector = UInt64(VHD.sectorSize)
        for e in extents where e.length > 0 {
            guard e.offset % sector == 0 else { throw VHD.FormatError(message: "extent at \(e.offset) is not on a 512-byte sector") }
            guard e.end <= size else { throw VHD.FormatError(message: "extent \(e.offset)+\(e.length) ends beyond the disk (\(size) bytes)") }
            guard e.length % sector == 0 || e.end == size else {
                throw VHD.FormatError(message: "extent \(e.offset)+\(e.length) is not a whole number of sectors")
            }
        }
        var merged: [Extent] = []
        for e in extents.filter({ $0.length > 0 }).sorted(by: { $0.offset < $1.offset }) {
            if let last = merged.last, e.offset <= last.end {
                merged[merged.count - 1].length = max(last.end, e.end) - last.offset
            } else {
                merged.append(e)
            }
        }
        self.size = size
        self.extents = merged
        let sectorsPerBlock = blockSize / VHD.sectorSize
        let layoutProbe = VHD.Layout(size: size, presentBlocks: [], blockSize: blockSize)
        let bitmapBytes = layoutProbe.bitmapBytes
        let blockBytes = UInt64(blockSize)
        var bitmaps: [Int: [UInt8]] = [:]
        for e in merged {
            var s = e.offset / sector
            let endSector = (e.end + sector - 1) / sector
            while s < endSector {
                let block = Int(s * sector / blockBytes)
                let inBlock = Int(s % UInt64(sectorsPerBlock))
                bitmaps[block, default: [UInt8](repeating: 0, count: bitmapBytes)][inBlock >> 3] |= 0x80 >> UInt8(inBlock & 7)
                s += 1
            }
        }
        blocks = bitmaps.keys.sorted().map { ($0, bitmaps[$0]!) }
        layout = VHD.Layout(size: size, presentBlocks: blocks.map(\.index), blockSize: blockSize)
    }

    /// Ranges given with their bytes (offset, data); for small deltas and tests.
    public init(size: UInt64, writes: [(offset: UInt64, bytes: [UInt8])], blockSize: Int = VHD.blockSize) throws {
        try self.init(size: size, extents: writes.map { Extent(offset: $0.offset, length: UInt64($0.bytes.count)) }, blockSize: blockSize)
    }

    /// Bytes of the whole file.
    public var fileSize: Int64 { layout.fileSize }

    /// Present blocks.
    public var blockCount: Int { blocks.count }

    /// Bytes the extents cover (what is written on the target).
    public var extentBytes: Int64 { extents.reduce(0) { $0 + Int64($1.length) } }

    /// Streams the file. `read(offset, buffer)` fills `buffer` with the disk's bytes at `offset`;
    /// it is called once per extent piece inside each block, in ascending order, never for bytes
    /// outside the extents (those are written as zeros and marked absent).
    public func write(
        read: (UInt64, UnsafeMutableRawBufferPointer) throws -> Void, emit: (UnsafeRawBufferPointer) throws -> Void
    ) throws {
        let id = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let now = Date()
        try layout.head(uniqueID: id, timestamp: now).withUnsafeBytes(emit)
        for n in 0..<blocks.count { try block(n, read: read).withUnsafeBytes(emit) }
        try layout.tail(uniqueID: id, timestamp: now).withUnsafeBytes(emit)
    }

    /// Present block `n` as stored: its sector bitmap, then the block's data (zeros outside the extents).
    func block(_ n: Int, read: (UInt64, UnsafeMutableRawBufferPointer) throws -> Void) throws -> [UInt8] {
        let (index, bitmap) = blocks[n]
        var piece = bitmap + [UInt8](repeating: 0, count: layout.blockSize)
        let blockStart = UInt64(index) * UInt64(layout.blockSize)
        let blockEnd = blockStart + UInt64(layout.blockSize)
        try piece.withUnsafeMutableBytes { raw in
            let data = UnsafeMutableRawBufferPointer(rebasing: raw[bitmap.count...])
            for e in extents where e.offset < blockEnd && e.end > blockStart {
                let lo = max(e.offset, blockStart)
                let hi = min(e.end, blockEnd)
                try read(lo, UnsafeMutableRawBufferPointer(rebasing: data[Int(lo - blockStart)..<Int(hi - blockStart)]))
            }
        }
        return piece
    }

    /// The whole file in memory, for ranges given with their bytes.
    public static func bytes(size: UInt64, writes: [(offset: UInt64, bytes: [UInt8])], blockSize: Int = VHD.blockSize) throws -> [UInt8] {
        let delta = try VHDDelta(size: size, writes: writes, blockSize: blockSize)
        var out: [UInt8] = []
        out.reserveCapacity(Int(delta.fileSize))
        try delta.write(read: { offset, buffer in
            // Extents were merged, so a piece may span several writes: lay each one over it.
            for w in writes {
                let lo = max(offset, w.offset)
                let hi = min(offset + UInt64(buffer.count), w.offset + UInt64(w.bytes.count))
                guard lo < hi else { continue }
                w.bytes.withUnsafeBytes { src in
                    let from = Int(lo - w.offset)
                    (buffer.baseAddress! + Int(lo - offset)).copyMemory(from: src.baseAddress! + from, byteCount: Int(hi - lo))
                }
            }
        }, emit: { out.append(contentsOf: $0) })
        return out
    }
}

/// The bytes of a `VHDDelta`, pulled a buffer at a time (what an HTTP upload wants); holds one
/// 2 MiB block in memory. Not thread-safe: one reader.
public final class VHDDeltaStream {
    private let delta: VHDDelta
    private let source: (UInt64, UnsafeMutableRawBufferPointer) throws -> Void
    private let uniqueID = (0..<16).map { _ in UInt8.random(in: 0...255) }
    private let timestamp = Date()
    /// The piece being handed out and how much of it is gone.
    private var pending: [UInt8] = []
    private var pendingOffset = 0
    private var nextBlock = 0
    private var stage = 0  // 0: head, 1: blocks, 2: footer, 3: done

    /// `read(offset, buffer)` as in `VHDDelta.write`.
    public init(_ delta: VHDDelta, read: @escaping (UInt64, UnsafeMutableRawBufferPointer) throws -> Void) {
        self.delta = delta
        self.source = read
    }

    public var totalBytes: Int64 { delta.fileSize }

    /// Copies up to `buffer.count` bytes; 0 at the end.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            if pendingOffset == pending.count {
                guard try refill() else { break }
            }
            let n = min(buffer.count - filled, pending.count - pendingOffset)
            pending.withUnsafeBytes { src in
                (buffer.baseAddress! + filled).copyMemory(from: src.baseAddress! + pendingOffset, byteCount: n)
            }
            pendingOffset += n
            filled += n
        }
        return filled
    }

    private func refill() throws -> Bool {
        pendingOffset = 0
        switch stage {
        case 0:
            pending = delta.layout.head(uniqueID: uniqueID, timestamp: timestamp)
            stage = 1
            return true
        case 1:
            guard nextBlock < delta.blocks.count else {
                stage = 2
                return try refill()
            }
            pending = try delta.block(nextBlock, read: source)
            nextBlock += 1
            return true
        case 2:
            pending = delta.layout.tail(uniqueID: uniqueID, timestamp: timestamp)
            stage = 3
            return true
        default:
            pending = []
            return false
        }
    }
}

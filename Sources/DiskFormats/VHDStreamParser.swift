/// Reads a dynamic or differencing VHD as its bytes arrive (pushed, as an HTTP download hands
/// them over), holding no more than one small structure at a time: block data is passed through
/// as it comes, never gathered. What `/export_raw_vdi?format=vhd&base=…` answers is such a file:
/// the 2 MiB blocks that differ from the base, each with a sector bitmap.
///
/// The callbacks come in file order: `header` once (the disk's size, the block size and the
/// present blocks), then for each present block (in the order the file holds them) `data` for
/// every run of present sectors, in pieces as they arrive, clipped to the disk's size, then
/// `blockEnd`. Sectors a bitmap marks absent are never handed over.
public final class VHDStreamParser {
    public struct Header: Sendable, Equatable {
        /// The disk's size (the footer's current size).
        public var size: UInt64
        public var blockSize: Int
        /// Blocks present in the file, ascending by block index.
        public var presentBlocks: [Int]
    }

    /// A BAT above this many entries (32 TiB of 2 MiB blocks… times two) is refused as hostile.
    static let maxEntries = 1 << 25

    private enum Stage { case footer, header, bat, bitmap, data, done }

    private let onHeader: (Header) throws -> Void
    private let onData: (UInt64, UnsafeRawBufferPointer) throws -> Void
    private let onBlockEnd: (Int) throws -> Void

    private var stage = Stage.footer
    /// Bytes of the file consumed so far.
    private(set) public var position = 0
    /// Where the structure being waited for starts; bytes before it are skipped.
    private var target = 0
    /// The structure being gathered and how long it is.
    private var pending: [UInt8] = []
    private var want = VHD.footerSize

    private var size: UInt64 = 0
    private var blockSize = 0
    private var bitmapBytes = 0
    /// Present blocks in file order: (file offset, block index).
    private var blocks: [(offset: Int, index: Int)] = []
    private var nextBlock = 0
    /// The block whose data is streaming: its index, its disk offset, how far into it the stream
    /// is, and its runs of present bytes (offsets within the block, clipped to the disk).
    private var block = 0
    private var blockStart: UInt64 = 0
    private var inBlock = 0
    private var runs: [(lo: Int, hi: Int)] = []

    public init(
        header: @escaping (Header) throws -> Void, data: @escaping (UInt64, UnsafeRawBufferPointer) throws -> Void,
        blockEnd: @escaping (Int) throws -> Void = { _ in }
    ) {
        onHeader = header
        onData = data
        onBlockEnd = blockEnd
        pending.reserveCapacity(VHD.headerSize)
    }

    /// True once every present block has been handed over (what follows is the closing footer).
    public var isComplete: Bool { stage == .done }

    /// Takes the next bytes of the file.
    public func feed(_ bytes: UnsafeRawBufferPointer) throws {
        var p = 0
        while p < bytes.count {
            let rest = bytes.count - p
            if position < target {
                let n = min(target - position, rest)
                position += n
                p += n
                continue
            }
            switch stage {
            case .footer, .header, .bat, .bitmap:
                let n = min(want - pending.count, rest)
                pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[p..<(p + n)]))
                position += n
                p += n
                if pending.count == want { try complete() }
            case .data:
                let n = min(blockSize - inBlock, rest)
                for r in runs where r.lo < inBlock + n && r.hi > inBlock {
                    let lo = max(r.lo, inBlock)
                    let hi = min(r.hi, inBlock + n)
                    try onData(blockStart + UInt64(lo), UnsafeRawBufferPointer(rebasing: bytes[(p + lo - inBlock)..<(p + hi - inBlock)]))
                }
                inBlock += n
                position += n
                p += n
                if inBlock == blockSize {
                    try onBlockEnd(block)
                    try startNextBlock()
                }
            case .done:
                position += rest
                p = bytes.count
            }
        }
    }

    /// The stream ended: an error unless every present block came.
    public func finish() throws {
        guard stage == .done else {
            throw VHD.FormatError(message: "stream ended at byte \(position), before the VHD was complete")
        }
    }

    /// Waits for `count` bytes at file offset `offset` next.
    private func expect(_ next: Stage, at offset: Int, count: Int) throws {
        guard offset >= position else {
            throw VHD.FormatError(message: "structure at \(offset) lies behind the stream position \(position)")
        }
        stage = next
        target = offset
        want = count
        pending.removeAll(keepingCapacity: true)
    }

    private func complete() throws {
        switch stage {
        case .footer:
            let footer = pending
            guard footer[0..<8].elementsEqual("conectix".utf8) else { throw VHD.FormatError(message: "no 'conectix' footer at the start") }
            guard footer.getBE(UInt32.self, at: 64) == VHD.checksum(footer, skipping: 64..<68) else {
                throw VHD.FormatError(message: "footer checksum mismatch")
            }
            size = footer.getBE(UInt64.self, at: 48)
            let type = footer.getBE(UInt32.self, at: 60)
            guard type == 3 || type == 4 else { throw VHD.FormatError(message: "disk type \(type) is not dynamic or differencing") }
            let headerOffset = footer.getBE(UInt64.self, at: 16)
            guard headerOffset < UInt64(Int.max / 2) else { throw VHD.FormatError(message: "dynamic header offset \(headerOffset) is out of range") }
            try expect(.header, at: Int(headerOffset), count: VHD.headerSize)
        case .header:
            let header = pending
            guard header[0..<8].elementsEqual("cxsparse".utf8) else { throw VHD.FormatError(message: "no 'cxsparse' dynamic header") }
            let batOffset = header.getBE(UInt64.self, at: 16)
            let entries = Int(header.getBE(UInt32.self, at: 28))
            let bsize = Int(header.getBE(UInt32.self, at: 32))
            guard bsize > 0, bsize % VHD.sectorSize == 0, bsize <= 1 << 30 else { throw VHD.FormatError(message: "bad block size \(bsize)") }
            guard UInt64(entries) * UInt64(bsize) >= size else { throw VHD.FormatError(message: "BAT too small for the disk size") }
            guard entries <= Self.maxEntries else { throw VHD.FormatError(message: "BAT of \(entries) entries is too large") }
            guard batOffset < UInt64(Int.max / 2) else { throw VHD.FormatError(message: "BAT offset \(batOffset) is out of range") }
            blockSize = bsize
            let sectorsPerBlock = bsize / VHD.sectorSize
            // One bit per sector, rounded up to whole bytes then sectors (rounding the bits down
            // gave a block of fewer than 8 sectors no bitmap at all: index out of range, found by
            // FuzzDiskFormats).
            bitmapBytes = ((sectorsPerBlock + 7) / 8 + VHD.sectorSize - 1) / VHD.sectorSize * VHD.sectorSize
            try expect(.bat, at: Int(batOffset), count: entries * 4)
        case .bat:
            let bat = pending
            blocks = []
            for i in 0..<(bat.count / 4) {
                let sector = bat.getBE(UInt32.self, at: i * 4)
                if sector != 0xffff_ffff { blocks.append((Int(sector) * VHD.sectorSize, i)) }
            }
            blocks.sort { $0.offset < $1.offset }
            try onHeader(Header(size: size, blockSize: blockSize, presentBlocks: blocks.map(\.index).sorted()))
            try startNextBlock()
        case .bitmap:
            let bitmap = pending
            let sectorsPerBlock = blockSize / VHD.sectorSize
            let limit = size > blockStart ? Int(min(UInt64(blockSize), size - blockStart)) : 0
            runs = []
            var s = 0
            while s < sectorsPerBlock {
                guard bitmap[s >> 3] & (0x80 >> UInt8(s & 7)) != 0 else {
                    s += 1
                    continue
                }
                var e = s
                while e < sectorsPerBlock, bitmap[e >> 3] & (0x80 >> UInt8(e & 7)) != 0 { e += 1 }
                let lo = s * VHD.sectorSize
                let hi = min(e * VHD.sectorSize, limit)
                if lo < hi { runs.append((lo, hi)) }
                s = e
            }
            stage = .data
            inBlock = 0
            pending.removeAll(keepingCapacity: true)
        case .data, .done:
            break
        }
    }

    private func startNextBlock() throws {
        guard nextBlock < blocks.count else {
            stage = .done
            pending = []
            return
        }
        let (offset, index) = blocks[nextBlock]
        nextBlock += 1
        block = index
        blockStart = UInt64(index) * UInt64(blockSize)
        try expect(.bitmap, at: offset, count: bitmapBytes)
    }
}

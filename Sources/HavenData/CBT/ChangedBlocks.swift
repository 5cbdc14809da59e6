import Foundation

/// The changed-block bitmap of `VDI.list_changed_blocks`: base64 of one bit per 64 KiB block,
/// most significant bit first (block n is byte n/8, mask 0x80 >> n%8).
public struct ChangedBlocks: Sendable, Equatable {
    public static let blockSize = 65_536

    public let diskSize: Int64
    /// Indexes of changed blocks, ascending.
    public let blocks: [Int]

    public var blockCount: Int { Int((diskSize + Int64(Self.blockSize) - 1) / Int64(Self.blockSize)) }

    public init(diskSize: Int64, blocks: [Int]) {
        self.diskSize = diskSize
        self.blocks = blocks.sorted()
    }

    /// Decodes xapi's text. The bitmap must cover the disk; SM may pad it to whole bytes (or a
    /// little more), but bits set beyond the end, or a bitmap too short for the disk, are refused.
    public init(base64: String, diskSize: Int64) throws {
        guard let data = Data(base64Encoded: base64.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw DataError(.badBitmap, "list_changed_blocks", "the bitmap is not valid base64")
        }
        guard diskSize >= 0 else {
            throw DataError(.badBitmap, "list_changed_blocks", "the disk's size \(diskSize) is negative")
        }
        let bytes = [UInt8](data)
        // Rounded up without `diskSize + blockSize - 1`, which overflows for a size near Int64.max
        // (the pool's `virtual_size`; found by FuzzCBTBitmap).
        let needed = Int(diskSize / Int64(Self.blockSize) + (diskSize % Int64(Self.blockSize) == 0 ? 0 : 1))
        guard bytes.count * 8 >= needed else {
            throw DataError(.badBitmap, "list_changed_blocks",
                            "the bitmap has \(bytes.count * 8) bits but the disk of \(diskSize) bytes has \(needed) blocks of 64 KiB")
        }
        // A bitmap for a much larger disk means it belongs to another (resized) disk.
        guard bytes.count <= (needed + 7) / 8 + 4096 else {
            throw DataError(.badBitmap, "list_changed_blocks",
                            "the bitmap has \(bytes.count * 8) bits, far more than the \(needed) blocks of this disk")
        }
        var out: [Int] = []
        for (i, b) in bytes.enumerated() where b != 0 {
            for bit in 0..<8 where b & (0x80 >> UInt8(bit)) != 0 {
                let block = i * 8 + bit
                guard block < needed else {
                    throw DataError(.badBitmap, "list_changed_blocks",
                                    "block \(block) is marked changed but the disk has only \(needed) blocks")
                }
                out.append(block)
            }
        }
        self.diskSize = diskSize
        self.blocks = out
    }

    /// The same bitmap encoded as xapi does.
    public var base64: String {
        var bytes = [UInt8](repeating: 0, count: max(0, (blockCount + 7) / 8))
        for b in blocks { bytes[b / 8] |= 0x80 >> UInt8(b % 8) }
        return Data(bytes).base64EncodedString()
    }

    /// Changed byte ranges, adjacent blocks coalesced, never crossing a boundary of `unit`
    /// bytes (a chunk) and clipped to the disk's end.
    public func ranges(within unit: Int) -> [ByteRange] {
        var out: [ByteRange] = []
        for b in blocks {
            let start = Int64(b) * Int64(Self.blockSize)
            let length = Int(min(Int64(Self.blockSize), diskSize - start))
            if let last = out.last, last.end == start, last.offset / Int64(unit) == start / Int64(unit) {
                out[out.count - 1].length += length
            } else {
                out.append(ByteRange(offset: start, length: length))
            }
        }
        return out
    }

    public var changedBytes: Int64 { ranges(within: Int.max).reduce(0) { $0 + Int64($1.length) } }
}

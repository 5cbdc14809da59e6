import Foundation

/// A run of 64 KiB blocks: `first`, `first + 1`, …, `first + count - 1`.
public struct BlockRange: Sendable, Hashable, CustomStringConvertible {
    public var first: Int64
    public var count: Int64

    public init(first: Int64, count: Int64) {
        self.first = first
        self.count = count
    }

    /// Every block of a disk of `size` bytes (the last one may be short).
    public init(diskSize: Int64) {
        first = 0
        count = (diskSize + Int64(MoverProtocol.blockSize) - 1) / Int64(MoverProtocol.blockSize)
    }

    public var end: Int64 { first + count }
    public var description: String { "blocks \(first)..<\(end)" }

    /// The part of this range from `block` on (for resuming).
    public func from(_ block: Int64) -> BlockRange {
        let start = min(max(first, block), end)
        return BlockRange(first: start, count: end - start)
    }
}

/// A set of changed 64 KiB blocks as xapi gives it: `VDI.list_changed_blocks` returns the
/// base64 of a bitmap, bit n (MSB first: byte n >> 3, mask 0x80 >> (n & 7)) for block n.
public struct ChangedBlocks: Sendable, Hashable {
    /// MSB-first, bit n for block n; may be longer than the disk.
    public let bitmap: [UInt8]

    public init(bitmap: [UInt8]) { self.bitmap = bitmap }

    /// From `VDI.list_changed_blocks`' answer.
    public init(base64: String) throws {
        guard let data = Data(base64Encoded: base64, options: .ignoreUnknownCharacters) else {
            throw MoverError(.invalidArgument, "changed-block bitmap", "not base64")
        }
        bitmap = [UInt8](data)
    }

    /// The given blocks (e.g. those whose hashes differ).
    public init(blocks: some Sequence<Int64>) {
        var bits: [UInt8] = []
        for b in blocks where b >= 0 {
            let byte = Int(b >> 3)
            if byte >= bits.count { bits += [UInt8](repeating: 0, count: byte - bits.count + 1) }
            bits[byte] |= 0x80 >> UInt8(b & 7)
        }
        bitmap = bits
    }

    public var base64: String { Data(bitmap).base64EncodedString() }

    public func contains(_ block: Int64) -> Bool {
        guard block >= 0 else { return false }
        let byte = Int(block >> 3)
        return byte < bitmap.count && bitmap[byte] & (0x80 >> UInt8(block & 7)) != 0
    }

    /// How many blocks are set.
    public var count: Int { bitmap.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// Set blocks within `range`, in order.
    public func blocks(in range: BlockRange) -> [Int64] {
        var out: [Int64] = []
        var b = range.first
        while b < range.end {
            let byte = Int(b >> 3)
            if byte >= bitmap.count { break }
            if bitmap[byte] == 0, b & 7 == 0 {
                b += 8
                continue
            }
            if contains(b) { out.append(b) }
            b += 1
        }
        return out
    }

    /// The bits of `range`, rebased so that bit 0 is `range.first` (what a request carries).
    func slice(_ range: BlockRange) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int((range.count + 7) / 8))
        for b in blocks(in: range) {
            let i = b - range.first
            out[Int(i >> 3)] |= 0x80 >> UInt8(i & 7)
        }
        return out
    }
}

/// One block as a client receives it or hands it over to be written.
public struct MoverBlock: Sendable {
    /// The block number (byte offset / 64 KiB).
    public let index: Int64
    /// The bytes; empty when `isZero` (the block reads as zeros). The last block of a disk
    /// may be shorter than 64 KiB.
    public let bytes: [UInt8]
    public let isZero: Bool

    public init(index: Int64, bytes: [UInt8]) {
        self.index = index
        self.bytes = bytes
        isZero = false
    }

    public init(zeroBlock index: Int64) {
        self.index = index
        bytes = []
        isZero = true
    }

    public var offset: Int64 { index * Int64(MoverProtocol.blockSize) }
}

/// The SHA-256 of a run of blocks' bytes (a short last block hashes only its bytes).
public struct RangeHash: Sendable, Hashable {
    public let range: BlockRange
    public let sha256: [UInt8]

    public init(range: BlockRange, sha256: [UInt8]) {
        self.range = range
        self.sha256 = sha256
    }
}

/// A disk attached to an appliance, as its mover sees it.
public struct MoverDisk: Sendable, Hashable, Codable {
    /// The kernel's name: `xvdb`, `xvdc`, …
    public let name: String
    public let size: Int64

    public init(name: String, size: Int64) {
        self.name = name
        self.size = size
    }
}

/// What a mover says about itself.
public struct MoverIdentity: Sendable, Hashable {
    public let name: String
    public let softwareVersion: String
    public let protocolVersion: UInt16
    public let blockSize: Int
    /// The address it listens on, as it knows it.
    public let address: String
}

/// What a transfer did.
public struct TransferSummary: Sendable, Hashable {
    /// Blocks moved (data and zero).
    public var blocks: Int64 = 0
    /// Of those, blocks that were all zeros (sent without data).
    public var zeroBlocks: Int64 = 0
    /// Data bytes moved (zero blocks count nothing).
    public var bytes: Int64 = 0
    /// Times the connection broke and the transfer went on from the last acknowledged block.
    public var resumes: Int = 0
    /// The last block acknowledged (consumed by the sink, written by the target); -1 if none.
    public var lastAcknowledged: Int64 = -1

    public init() {}
}

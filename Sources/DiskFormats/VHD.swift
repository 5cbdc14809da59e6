import Foundation

/// Dynamic VHD (Microsoft Virtual Hard Disk 1.0), as XenServer writes it: 2 MiB blocks, a footer
/// copy at both ends, creator "tap" (blktap) so qemu-img takes the size from `current size`.
public enum VHD {
    public static let blockSize = 2 << 20
    public static let sectorSize = 512
    static let footerSize = 512
    static let headerSize = 1024
    static let bitmapSize = 512  // 2 MiB / 512 sectors / 8 bits, rounded to a sector
    /// Seconds between the Unix epoch and 2000-01-01, VHD's epoch.
    static let epochOffset: UInt32 = 946_684_800

    public struct FormatError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { "VHD: \(message)" }
    }

    /// Cylinders/heads/sectors as the VHD specification's appendix computes them.
    static func geometry(size: UInt64) -> (UInt16, UInt8, UInt8) {
        var totalSectors = size / 512
        if totalSectors > 65535 * 16 * 255 { totalSectors = 65535 * 16 * 255 }
        var sectorsPerTrack: UInt64
        var heads: UInt64
        var cylinderTimesHeads: UInt64
        if totalSectors >= 65535 * 16 * 63 {
            sectorsPerTrack = 255
            heads = 16
            cylinderTimesHeads = totalSectors / sectorsPerTrack
        } else {
            sectorsPerTrack = 17
            cylinderTimesHeads = totalSectors / sectorsPerTrack
            heads = (cylinderTimesHeads + 1023) / 1024
            if heads < 4 { heads = 4 }
            if cylinderTimesHeads >= heads * 1024 || heads > 16 {
                sectorsPerTrack = 31
                heads = 16
                cylinderTimesHeads = totalSectors / sectorsPerTrack
            }
            if cylinderTimesHeads >= heads * 1024 {
                sectorsPerTrack = 63
                heads = 16
                cylinderTimesHeads = totalSectors / sectorsPerTrack
            }
        }
        return (UInt16(cylinderTimesHeads / heads), UInt8(heads), UInt8(sectorsPerTrack))
    }

    static func checksum(_ bytes: [UInt8], skipping range: Range<Int>) -> UInt32 {
        var sum: UInt32 = 0
        for (i, b) in bytes.enumerated() where !range.contains(i) { sum &+= UInt32(b) }
        return ~sum
    }

    static func footer(size: UInt64, uniqueID: [UInt8], timestamp: Date) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: footerSize)
        f.putASCII("conectix", at: 0)
        f.putBE(UInt32(2), at: 8)  // features: reserved bit always set
        f.putBE(UInt32(0x0001_0000), at: 12)  // format version 1.0
        f.putBE(UInt64(footerSize), at: 16)  // data offset: the dynamic header
        let seconds = UInt32(max(0, timestamp.timeIntervalSince1970) ) &- epochOffset
        f.putBE(seconds, at: 24)
        f[28] = UInt8(ascii: "t"); f[29] = UInt8(ascii: "a"); f[30] = UInt8(ascii: "p"); f[31] = 0
        f.putBE(UInt32(0x0001_0003), at: 32)  // creator version
        f.putASCII("Lnux", at: 36)  // creator host OS
        f.putBE(size, at: 40)  // original size
        f.putBE(size, at: 48)  // current size
        let (c, h, s) = geometry(size: size)
        f.putBE(c, at: 56)
        f[58] = h
        f[59] = s
        f.putBE(UInt32(3), at: 60)  // dynamic
        for i in 0..<16 { f[68 + i] = uniqueID[i] }
        f.putBE(checksum(f, skipping: 64..<68), at: 64)
        return f
    }

    static func dynamicHeader(entries: Int, blockSize: Int = blockSize) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: headerSize)
        h.putASCII("cxsparse", at: 0)
        h.putBE(UInt64.max, at: 8)  // data offset: unused
        h.putBE(UInt64(footerSize + headerSize), at: 16)  // BAT offset
        h.putBE(UInt32(0x0001_0000), at: 24)
        h.putBE(UInt32(entries), at: 28)
        h.putBE(UInt32(blockSize), at: 32)
        h.putBE(checksum(h, skipping: 36..<40), at: 36)
        return h
    }

    /// The layout of a dynamic VHD that holds exactly the given blocks, so it can be streamed
    /// front to back: header, BAT, blocks in ascending order, footer.
    public struct Layout: Sendable {
        public let size: UInt64
        public let present: [Int]
        public let entries: Int
        /// Bytes of data per block: 2 MiB as XenServer writes them; any power of two from 4 KiB
        /// (the header says it, and vhd-tool takes it from there).
        public let blockSize: Int
        let batBytes: Int

        public init(size: UInt64, presentBlocks: [Int], blockSize: Int = VHD.blockSize) {
            self.size = size
            self.blockSize = blockSize
            self.entries = Int((size + UInt64(blockSize) - 1) / UInt64(blockSize))
            self.present = presentBlocks.sorted()
            self.batBytes = (entries * 4 + 511) / 512 * 512
        }

        var dataStart: Int { VHD.footerSize + VHD.headerSize + batBytes }
        /// The sector bitmap before each block: one bit per sector, rounded up to a whole sector.
        var bitmapBytes: Int { (blockSize / VHD.sectorSize / 8 + VHD.sectorSize - 1) / VHD.sectorSize * VHD.sectorSize }
        var perBlock: Int { bitmapBytes + blockSize }

        /// Total bytes of the file.
        public var fileSize: Int64 { Int64(dataStart + present.count * perBlock + VHD.footerSize) }

        /// Footer, dynamic header and BAT: everything before the first block.
        public func head(uniqueID: [UInt8] = Array(repeating: 0x5a, count: 16), timestamp: Date = Date()) -> [UInt8] {
            var out = VHD.footer(size: size, uniqueID: uniqueID, timestamp: timestamp)
            out += VHD.dynamicHeader(entries: entries, blockSize: blockSize)
            var bat = [UInt8](repeating: 0xff, count: batBytes)
            for (n, block) in present.enumerated() {
                bat.putBE(UInt32((dataStart + n * perBlock) / VHD.sectorSize), at: block * 4)
            }
            return out + bat
        }

        /// The sector bitmap that precedes each block: every sector present.
        public var blockBitmap: [UInt8] { [UInt8](repeating: 0xff, count: bitmapBytes) }

        public func tail(uniqueID: [UInt8] = Array(repeating: 0x5a, count: 16), timestamp: Date = Date()) -> [UInt8] {
            VHD.footer(size: size, uniqueID: uniqueID, timestamp: timestamp)
        }
    }

    /// Writes a dynamic VHD front to back. `readBlock(i, buffer)` fills block i (2 MiB; the
    /// last block of a disk whose size is not a multiple is zero-padded by the writer).
    public static func write(
        size: UInt64, presentBlocks: [Int], readBlock: (Int, UnsafeMutableRawBufferPointer) throws -> Void,
        emit: (UnsafeRawBufferPointer) throws -> Void
    ) throws {
        let layout = Layout(size: size, presentBlocks: presentBlocks)
        let id = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let now = Date()
        try layout.head(uniqueID: id, timestamp: now).withUnsafeBytes(emit)
        let bitmap = layout.blockBitmap
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize, alignment: 4096)
        defer { buffer.deallocate() }
        for block in layout.present {
            try bitmap.withUnsafeBytes(emit)
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            try readBlock(block, buffer)
            try emit(UnsafeRawBufferPointer(buffer))
        }
        try layout.tail(uniqueID: id, timestamp: now).withUnsafeBytes(emit)
    }

    /// Reads a dynamic VHD from a stream (blocks in any order the BAT says, read front to back)
    /// and hands each present run of sectors to `write(offset, bytes)`; returns the disk's size.
    /// The stream is read to its end. See `VHDStreamParser` for a stream that is pushed.
    public static func read(
        from input: (UnsafeMutableRawBufferPointer) throws -> Int,
        write: (UInt64, UnsafeRawBufferPointer) throws -> Void
    ) throws -> UInt64 {
        try withoutActuallyEscaping(write) { write in
            var size: UInt64 = 0
            let parser = VHDStreamParser(header: { size = $0.size }, data: write)
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
            defer { buffer.deallocate() }
            while true {
                let n = try input(buffer)
                if n == 0 { break }
                try parser.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            }
            try parser.finish()
            return size
        }
    }
}

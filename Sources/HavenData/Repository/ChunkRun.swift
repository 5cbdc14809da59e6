import DiskFormats
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// One immutable sorted run of the chunk index (`index/runs/<name>.run`): the entries of the
/// packs it names, sorted by chunk id, memory-mapped and searched in place, so that opening an
/// index of millions of chunks reads none of them. Runs are a cache of the packs' own `.idx`
/// files: a run lost or damaged only means those packs are read from their `.idx` again.
///
/// Layout (little-endian): a 64-byte header (`HVR1`, version, record count, pack count, records
/// per block, the offsets of the three sections, and an XXH64 of the header, fences and pack
/// table), then the records (48 bytes: id 32 | offset u64 | length u32 | pack u32, the pack being
/// a number in this run's pack table), then one fence per block of 85 records (the first 8 bytes
/// of the block's first id, as an integer), then the pack table (32 ASCII bytes per pack name).
/// A lookup searches the fences (1.4 MB for 16 million chunks, the only part kept warm) and then
/// one 4 KiB block of records.
final class ChunkRun: @unchecked Sendable {
    // @unchecked: immutable after init; the mapping is read-only and read from any thread.
    static let magic = Array("HVR1".utf8)
    static let version: UInt32 = 1
    static let headerSize = 64
    static let recordSize = 48
    static let perBlock = 85
    static let nameSize = 32
    static let packEntrySize = 40

    let path: String
    let count: Int
    let packNames: [String]
    /// Chunks per pack, as its `.idx` has them.
    let packCounts: [Int]
    private let base: UnsafeRawPointer
    private let length: Int
    private let recordsOffset: Int
    private let fencesOffset: Int
    private let fenceCount: Int

    /// Maps and checks a run; throws when it is not a whole, valid run.
    init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw DataError(.io, path, String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= Self.headerSize else { throw DataError(.io, path, "not a chunk index run (too short)") }
        length = Int(st.st_size)
        guard let map = mmap(nil, length, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else {
            throw DataError(.io, path, "cannot map: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(map)
        // Searches land anywhere: no read-ahead.
        madvise(map, length, MADV_RANDOM)
        do {
            let h = UnsafeRawBufferPointer(start: base, count: Self.headerSize)
            guard Array(h[0..<4]) == Self.magic, h.loadUnaligned(fromByteOffset: 4, as: UInt32.self) == Self.version else {
                throw DataError(.io, path, "not a chunk index run (bad header)")
            }
            let count = Int(UInt64(littleEndian: h.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
            let packs = Int(UInt32(littleEndian: h.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
            let perBlock = Int(UInt32(littleEndian: h.loadUnaligned(fromByteOffset: 20, as: UInt32.self)))
            recordsOffset = Int(UInt64(littleEndian: h.loadUnaligned(fromByteOffset: 24, as: UInt64.self)))
            fencesOffset = Int(UInt64(littleEndian: h.loadUnaligned(fromByteOffset: 32, as: UInt64.self)))
            let packsOffset = Int(UInt64(littleEndian: h.loadUnaligned(fromByteOffset: 40, as: UInt64.self)))
            let checksum = UInt64(littleEndian: h.loadUnaligned(fromByteOffset: 48, as: UInt64.self))
            fenceCount = (count + Self.perBlock - 1) / Self.perBlock
            guard perBlock == Self.perBlock, recordsOffset == Self.headerSize, count >= 0, count < 1 << 40,
                  fencesOffset == recordsOffset + count * Self.recordSize, packsOffset == fencesOffset + fenceCount * 8,
                  length == packsOffset + packs * Self.packEntrySize
            else { throw DataError(.io, path, "not a chunk index run (sections do not add up)") }
            guard checksum == Self.checksum(base: base, fences: fencesOffset, end: length) else {
                throw DataError(.io, path, "chunk index run is damaged (checksum)")
            }
            self.count = count
            var names: [String] = []
            var counts: [Int] = []
            names.reserveCapacity(packs)
            counts.reserveCapacity(packs)
            for i in 0..<packs {
                let entry = base + packsOffset + i * Self.packEntrySize
                names.append(String(decoding: UnsafeRawBufferPointer(start: entry, count: Self.nameSize), as: UTF8.self))
                counts.append(Int(UInt64(littleEndian: (entry + Self.nameSize).loadUnaligned(as: UInt64.self))))
            }
            packNames = names
            packCounts = counts
        } catch {
            munmap(map, length)
            throw error
        }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), length) }

    /// XXH64 of the header's first 48 bytes and everything after the records.
    static func checksum(base: UnsafeRawPointer, fences: Int, end: Int) -> UInt64 {
        checksum(header: UnsafeRawBufferPointer(start: base, count: 48), tail: UnsafeRawBufferPointer(start: base + fences, count: end - fences))
    }

    static func checksum(header: UnsafeRawBufferPointer, tail: UnsafeRawBufferPointer) -> UInt64 {
        var all = Array(header.prefix(48))
        all += tail
        return all.withUnsafeBytes { XXHash64.hash($0) }
    }

    private func fence(_ i: Int) -> UInt64 {
        UInt64(littleEndian: (base + fencesOffset + i * 8).loadUnaligned(as: UInt64.self))
    }

    private func id(_ i: Int) -> ChunkID { ChunkID(raw: UnsafeRawBufferPointer(start: base + recordsOffset + i * Self.recordSize, count: 32)) }

    /// The i-th record: id, offset, length, pack number (in `packNames`).
    func record(_ i: Int) -> (id: ChunkID, offset: UInt64, length: UInt32, pack: Int) {
        let r = base + recordsOffset + i * Self.recordSize
        return (ChunkID(raw: UnsafeRawBufferPointer(start: r, count: 32)), UInt64(littleEndian: (r + 32).loadUnaligned(as: UInt64.self)),
                UInt32(littleEndian: (r + 40).loadUnaligned(as: UInt32.self)), Int(UInt32(littleEndian: (r + 44).loadUnaligned(as: UInt32.self))))
    }

    /// The record of `id`, if this run has it.
    func lookup(_ target: ChunkID) -> (offset: UInt64, length: UInt32, pack: Int)? {
        guard count > 0 else { return nil }
        let p = target.prefix
        // Blocks whose first id could precede or equal the target: from the last block starting
        // below `p` up to the last starting at or below it (ids sharing a prefix may straddle).
        var lo = 0
        var hi = fenceCount
        while lo < hi {
            let mid = (lo + hi) / 2
            if fence(mid) < p { lo = mid + 1 } else { hi = mid }
        }
        let first = max(0, lo - 1)
        hi = fenceCount
        while lo < hi {
            let mid = (lo + hi) / 2
            if fence(mid) <= p { lo = mid + 1 } else { hi = mid }
        }
        var a = first * Self.perBlock
        var b = min(count, max(lo, first + 1) * Self.perBlock)
        while a < b {
            let mid = (a + b) / 2
            let m = id(mid)
            if m == target {
                let r = record(mid)
                return (r.offset, r.length, r.pack)
            }
            if m < target { a = mid + 1 } else { b = mid }
        }
        return nil
    }

    /// Lets go of the record pages this process touched (they stay in the page cache): keeps
    /// the index's resident memory bounded however many chunks are looked up.
    func dropResidentRecords() {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = recordsOffset / page * page
        let end = fencesOffset / page * page
        if end > start { madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_DONTNEED) }
    }

}

/// Writes a run front to back as records arrive in id order (a merge of other runs streams
/// through it: memory stays at one buffer, the fences and the pack table), then the tail, then
/// the header; temporary file, fsync, rename into `dir`, fsync of `dir`.
final class RunWriter {
    let dir: String
    let tmpPath: String
    let finalPath: String
    private let packs: [(name: String, count: Int)]
    private let fd: Int32
    /// Gathered output and how much of it is used.
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
    private var used = 0
    private var fences: [UInt64] = []
    private(set) var count = 0
    private var last: ChunkID?
    private var finished = false

    init(dir: String, tmp: String, packs: [(name: String, count: Int)]) throws {
        let name = (0..<4).map { _ in String(format: "%08x", UInt32.random(in: 0...UInt32.max)) }.joined()
        self.dir = dir
        tmpPath = tmp + "/run-" + name
        finalPath = dir + "/" + name + ".run"
        self.packs = packs
        for p in packs where p.name.utf8.count != ChunkRun.nameSize {
            throw DataError(.io, p.name, "pack name is not \(ChunkRun.nameSize) characters")
        }
        fd = open(tmpPath, O_WRONLY | O_CREAT | O_TRUNC, BackupRepository.fileMode)
        guard fd >= 0 else { throw DataError(.io, tmpPath, String(cString: strerror(errno))) }
        // Room for the header, written last.
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        used = ChunkRun.headerSize
    }

    deinit {
        buffer.deallocate()
        close(fd)
        if !finished { unlink(tmpPath) }
    }

    /// Adds the next record; ids must ascend (a repeated id is skipped).
    func add(_ id: ChunkID, offset: UInt64, length: UInt32, pack: UInt32) throws {
        if let last {
            if last == id { return }
            precondition(last < id, "run records out of order")
        }
        last = id
        if count % ChunkRun.perBlock == 0 { fences.append(id.prefix) }
        if used + ChunkRun.recordSize > buffer.count { try drain() }
        id.store(into: UnsafeMutableRawBufferPointer(rebasing: buffer[used..<(used + 32)]))
        buffer.storeBytes(of: offset.littleEndian, toByteOffset: used + 32, as: UInt64.self)
        buffer.storeBytes(of: length.littleEndian, toByteOffset: used + 40, as: UInt32.self)
        buffer.storeBytes(of: pack.littleEndian, toByteOffset: used + 44, as: UInt32.self)
        used += ChunkRun.recordSize
        count += 1
    }

    private func drain() throws {
        guard writeAll(fd, UnsafeRawBufferPointer(rebasing: buffer[0..<used])) else {
            throw DataError(.io, tmpPath, "cannot write the run: \(String(cString: strerror(errno)))")
        }
        used = 0
    }

    /// Writes the tail and the header, makes the run durable and puts it in place; returns its path.
    func finish() throws -> String {
        var tail: [UInt8] = []
        tail.reserveCapacity(fences.count * 8 + packs.count * ChunkRun.packEntrySize)
        for f in fences { withUnsafeBytes(of: f.littleEndian) { tail += $0 } }
        for p in packs {
            tail += Array(p.name.utf8)
            withUnsafeBytes(of: UInt64(p.count).littleEndian) { tail += $0 }
        }
        try drain()
        guard tail.withUnsafeBytes({ writeAll(fd, $0) }) else {
            throw DataError(.io, tmpPath, "cannot write the run: \(String(cString: strerror(errno)))")
        }
        let fencesOffset = ChunkRun.headerSize + count * ChunkRun.recordSize
        var header = [UInt8](repeating: 0, count: ChunkRun.headerSize)
        header.withUnsafeMutableBytes { h in
            for (i, b) in ChunkRun.magic.enumerated() { h[i] = b }
            h.storeBytes(of: ChunkRun.version.littleEndian, toByteOffset: 4, as: UInt32.self)
            h.storeBytes(of: UInt64(count).littleEndian, toByteOffset: 8, as: UInt64.self)
            h.storeBytes(of: UInt32(packs.count).littleEndian, toByteOffset: 16, as: UInt32.self)
            h.storeBytes(of: UInt32(ChunkRun.perBlock).littleEndian, toByteOffset: 20, as: UInt32.self)
            h.storeBytes(of: UInt64(ChunkRun.headerSize).littleEndian, toByteOffset: 24, as: UInt64.self)
            h.storeBytes(of: UInt64(fencesOffset).littleEndian, toByteOffset: 32, as: UInt64.self)
            h.storeBytes(of: UInt64(fencesOffset + fences.count * 8).littleEndian, toByteOffset: 40, as: UInt64.self)
        }
        let sum = header.withUnsafeBytes { h in tail.withUnsafeBytes { ChunkRun.checksum(header: h, tail: $0) } }
        header.withUnsafeMutableBytes { $0.storeBytes(of: sum.littleEndian, toByteOffset: 48, as: UInt64.self) }
        guard header.withUnsafeBytes({ pwrite(fd, $0.baseAddress, $0.count, 0) }) == ChunkRun.headerSize, fsync(fd) == 0 else {
            throw DataError(.io, tmpPath, "cannot write the run: \(String(cString: strerror(errno)))")
        }
        guard rename(tmpPath, finalPath) == 0 else { throw DataError(.io, finalPath, String(cString: strerror(errno))) }
        finished = true
        try syncDirectory(dir)
        return finalPath
    }
}

/// fsync of a directory: makes the renames and creations in it durable.
func syncDirectory(_ path: String) throws {
    let fd = open(path, O_RDONLY | O_DIRECTORY)
    guard fd >= 0 else { throw DataError(.io, path, String(cString: strerror(errno))) }
    defer { close(fd) }
    guard fsync(fd) == 0 else { throw DataError(.io, path, "fsync: \(String(cString: strerror(errno)))") }
}

import DiskFormats
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

// Linux's lseek whences for sparse files (not exported by Glibc's Swift overlay).
let seekData: Int32 = 3
let seekHole: Int32 = 4

/// Disks of the simulated pool: one sparse file per VDI.
struct DiskStore: Sendable {
    static let cbtBlock = 65_536
    let directory: URL

    func path(_ uuid: String) -> String { directory.appendingPathComponent("\(uuid).img").path }

    func create(uuid: String, size: Int64) throws {
        let fd = open(path(uuid), O_CREAT | O_RDWR | O_TRUNC, 0o644)
        guard fd >= 0 else { throw SimError("cannot create disk \(uuid): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw SimError("cannot size disk \(uuid)") }
    }

    func remove(uuid: String) { unlink(path(uuid)) }

    func exists(_ uuid: String) -> Bool { access(path(uuid), F_OK) == 0 }

    /// Copies a disk keeping holes: only data extents (seekData/seekHole) are read and written.
    func copy(from source: String, to target: String, size: Int64) throws {
        try create(uuid: target, size: size)
        let src = open(path(source), O_RDONLY)
        guard src >= 0 else { return }
        defer { close(src) }
        let dst = open(path(target), O_WRONLY)
        guard dst >= 0 else { throw SimError("cannot open disk \(target)") }
        defer { close(dst) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var offset: off_t = 0
        while offset < size {
            let data = lseek(src, offset, seekData)
            if data < 0 || data >= size { break }
            var hole = lseek(src, data, seekHole)
            if hole < 0 || hole > size { hole = off_t(size) }
            var pos = data
            while pos < hole {
                let n = buffer.withUnsafeMutableBytes { pread(src, $0.baseAddress, Swift.min($0.count, Int(hole - pos)), pos) }
                if n <= 0 { break }
                let isZero = buffer.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[0..<n]).allZero }
                if !isZero { _ = buffer.withUnsafeBytes { pwrite(dst, $0.baseAddress, n, pos) } }
                pos += off_t(n)
            }
            offset = hole
        }
    }

    func read(_ uuid: String, offset: Int64, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let fd = open(path(uuid), O_RDONLY)
        guard fd >= 0 else {
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            return buffer.count
        }
        defer { close(fd) }
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n <= 0 { break }
            done += n
        }
        if done < buffer.count { (buffer.baseAddress! + done).initializeMemory(as: UInt8.self, repeating: 0, count: buffer.count - done) }
        return buffer.count
    }

    func write(_ uuid: String, offset: Int64, _ bytes: UnsafeRawBufferPointer) throws {
        let w = try writer(uuid)
        defer { w.close() }
        try w.put(offset, bytes)
    }

    /// A writer that keeps the disk open for a whole import.
    func writer(_ uuid: String) throws -> DiskWriter {
        let fd = open(path(uuid), O_WRONLY)
        guard fd >= 0 else { throw SimError("cannot open disk \(uuid)") }
        return DiskWriter(fd: fd, uuid: uuid)
    }

    /// Bytes actually allocated on the host (the VDI's physical_utilisation).
    func allocated(_ uuid: String) -> Int64 {
        var st = stat()
        guard stat(path(uuid), &st) == 0 else { return 0 }
        return Int64(st.st_blocks) * 512
    }

    /// Whether a 2 MiB-aligned region holds any data, cheaply via seekData first.
    func regionHasData(_ uuid: String, offset: Int64, length: Int) -> Bool {
        let fd = open(path(uuid), O_RDONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let data = lseek(fd, off_t(offset), seekData)
        if data < 0 || data >= off_t(offset) + off_t(length) { return false }
        var buffer = [UInt8](repeating: 0, count: length)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, off_t(offset)) }
        guard n > 0 else { return false }
        return !buffer.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[0..<n]).allZero }
    }
}

/// Writes of one import onto one disk: one descriptor, and runs of adjacent pieces (an upload
/// arrives in TLS-record-sized pieces) gathered into writes of up to 1 MiB.
final class DiskWriter {
    let fd: Int32
    let uuid: String
    private var pending: [UInt8] = []
    private var pendingOffset: Int64 = 0
    private var closed = false
    static let gather = 1 << 20

    init(fd: Int32, uuid: String) {
        self.fd = fd
        self.uuid = uuid
        pending.reserveCapacity(Self.gather)
    }

    deinit { close() }

    func write(offset: Int64, _ bytes: UnsafeRawBufferPointer) throws {
        if !pending.isEmpty, offset != pendingOffset + Int64(pending.count) || pending.count + bytes.count > Self.gather { try flush() }
        if pending.isEmpty {
            pendingOffset = offset
            if bytes.count >= Self.gather { return try put(offset, bytes) }
        }
        pending.append(contentsOf: bytes)
    }

    /// Writes what is gathered.
    func flush() throws {
        guard !pending.isEmpty else { return }
        try pending.withUnsafeBytes { try put(pendingOffset, $0) }
        pending.removeAll(keepingCapacity: true)
    }

    /// Writes `bytes` at `offset` now, past what is gathered.
    func put(_ offset: Int64, _ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            guard n > 0 else { throw SimError("write to disk \(uuid) failed: \(String(cString: strerror(errno)))") }
            done += n
        }
    }

    /// Closes the disk (what is still gathered is written first, as far as it goes).
    func close() {
        guard !closed else { return }
        closed = true
        try? flush()
        Glibc.close(fd)
    }
}

extension UnsafeRawBufferPointer {
    var allZero: Bool {
        guard let base = baseAddress else { return true }
        var i = 0
        while i + 8 <= count {
            if base.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < count {
            if base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
            i += 1
        }
        return true
    }
}

/// Block contents for seeding disks and simulating guest writes.
enum BlockPatterns {
    static let words = ["backup", "restore", "xen", "pool", "snapshot", "disk", "block", "chunk", "the", "of", "and",
                        "a", "to", "in", "is", "data", "server", "log", "entry", "error", "warning", "info", "request",
                        "user", "session", "time", "value", "index", "table", "row", "column", "page"]

    static func random(_ rng: inout SplitMix64, into buffer: UnsafeMutableRawBufferPointer) {
        var i = 0
        while i + 8 <= buffer.count {
            buffer.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self)
            i += 8
        }
    }

    static func text(_ rng: inout SplitMix64, into buffer: UnsafeMutableRawBufferPointer) {
        var i = 0
        while i < buffer.count {
            let w = words[Int(rng.next() % UInt64(words.count))]
            for b in w.utf8 where i < buffer.count {
                buffer[i] = b
                i += 1
            }
            if i < buffer.count {
                buffer[i] = rng.next() % 11 == 0 ? 0x0a : 0x20
                i += 1
            }
        }
    }

    /// Seeds a disk: decides per 64 KiB block what it holds, writes all but the holes.
    static func fill(store: DiskStore, uuid: String, size: Int64, spec: World.FillSpec) throws {
        var rng = SplitMix64(state: spec.seed ?? 1)
        let shares = [spec.unallocated ?? 0.34, spec.random ?? 0.33, spec.text ?? 0.2, spec.duplicate ?? 0.13]
        let blocks = Int((size + Int64(DiskStore.cbtBlock) - 1) / Int64(DiskStore.cbtBlock))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: DiskStore.cbtBlock, alignment: 8)
        defer { buffer.deallocate() }
        // A handful of distinct blocks that recur: the "duplicated blocks" of real disks.
        var library: [[UInt8]] = []
        for n in 0..<8 {
            if n % 2 == 0 { random(&rng, into: buffer) } else { text(&rng, into: buffer) }
            library.append(Array(buffer))
        }
        for block in 0..<blocks {
            let roll = Double(rng.next() % 1_000_000) / 1_000_000
            var kind = 0
            var acc = shares[0]
            while kind < 3, roll >= acc {
                kind += 1
                acc += shares[kind]
            }
            if roll >= acc { continue }
            switch kind {
            case 0: continue
            case 1: random(&rng, into: buffer)
            case 2: text(&rng, into: buffer)
            default:
                let pick = library[Int(rng.next() % UInt64(library.count))]
                pick.withUnsafeBytes { buffer.copyMemory(from: $0) }
            }
            let offset = Int64(block) * Int64(DiskStore.cbtBlock)
            let length = Int(min(Int64(DiskStore.cbtBlock), size - offset))
            try store.write(uuid, offset: offset, UnsafeRawBufferPointer(rebasing: buffer[0..<length]))
        }
    }
}

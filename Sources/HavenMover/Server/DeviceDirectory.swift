import CHavenSystem
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The disks a mover serves: the entries of a directory named like kernel block devices
/// (`xvdb`, `sdc`, `vdd`), each a block device, a regular file, or a link to one. On an appliance
/// the boot script links its data disks there (never its own root disk); in the simulator they
/// are links to the plugged VDIs' images. A disk is read-only when the kernel says so (a VBD
/// plugged RO) or, for an image file, when a file `.NAME.ro` sits beside it (the simulator's way
/// of saying the same).
public struct DeviceDirectory: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    /// A kernel-style device name: letters then optional digits, short, no path characters.
    static func isDeviceName(_ name: String) -> Bool {
        guard (2...16).contains(name.count), name.first?.isLetter == true else { return false }
        return name.allSatisfy { ($0.isASCII && $0.isLowercase) || $0.isNumber }
    }

    /// The attached disks, by name.
    public func list() -> [MoverDisk] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter(Self.isDeviceName).sorted().compactMap { name in
            guard let device = try? BlockDevice(directory: path, name: name, writable: false) else { return nil }
            return MoverDisk(name: name, size: device.size)
        }
    }

    func open(_ name: String, writable: Bool) throws -> BlockDevice {
        guard Self.isDeviceName(name) else { throw MoverError(.noSuchDisk, "disk \(name)", "not a device name") }
        let device = try BlockDevice(directory: path, name: name, writable: false)
        guard writable else { return device }
        if device.isRegularFile ? access(path + "/." + name + ".ro", F_OK) == 0 : haven_block_device_readonly(device.fd) == 1 {
            throw MoverError(.forbidden, "disk \(name)", "the disk is attached read-only")
        }
        return try BlockDevice(directory: path, name: name, writable: true)
    }
}

/// One open disk: 64 KiB blocks by number; the last one may be short.
final class BlockDevice {
    let name: String
    let fd: Int32
    let size: Int64
    let isRegularFile: Bool

    init(directory: String, name: String, writable: Bool) throws {
        self.name = name
        let path = directory + "/" + name
        fd = Glibc.open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC)
        guard fd >= 0 else {
            let code: MoverError.Code = errno == ENOENT ? .noSuchDisk : .io
            throw MoverError(code, "disk \(name)", code == .noSuchDisk ? "no such disk is attached" : "cannot open: \(Sockets.errnoText())")
        }
        var st = stat()
        fstat(fd, &st)
        isRegularFile = (st.st_mode & mode_t(S_IFMT)) == mode_t(S_IFREG)
        if isRegularFile {
            size = Int64(st.st_size)
        } else {
            // A block device: its size is where the end is.
            let end = lseek(fd, 0, SEEK_END)
            size = Int64(max(0, end))
        }
    }

    deinit { close(fd) }

    var blockCount: Int64 { BlockRange(diskSize: size).count }

    /// The length of block `index` (the last one may be short).
    func length(of index: Int64) -> Int {
        Int(min(Int64(MoverProtocol.blockSize), size - index * Int64(MoverProtocol.blockSize)))
    }

    /// Reads block `index` into `buffer` (at least 64 KiB); returns its length.
    func read(_ index: Int64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = length(of: index)
        var done = 0
        let offset = off_t(index) * off_t(MoverProtocol.blockSize)
        while done < n {
            let got = pread(fd, buffer.baseAddress! + done, n - done, offset + off_t(done))
            if got < 0, errno == EINTR { continue }
            guard got > 0 else { throw MoverError(.io, "disk \(name)", "read of block \(index) failed: \(got == 0 ? "end of disk" : Sockets.errnoText())") }
            done += got
        }
        return n
    }

    /// Writes block `index`; nil writes zeros (a hole in a file, zeros on a device).
    func write(_ index: Int64, _ bytes: UnsafeRawBufferPointer?) throws {
        let n = length(of: index)
        let offset = off_t(index) * off_t(MoverProtocol.blockSize)
        if bytes == nil, isRegularFile, haven_punch_hole(fd, Int64(offset), Int64(n)) == 0 { return }
        let zeros = bytes == nil ? [UInt8](repeating: 0, count: n) : []
        try zeros.withUnsafeBytes { z in
            let data = bytes ?? z
            guard data.count == n else { throw MoverError(.outOfRange, "disk \(name)", "block \(index) must be \(n) bytes, not \(data.count)") }
            var done = 0
            while done < n {
                let put = pwrite(fd, data.baseAddress! + done, n - done, offset + off_t(done))
                if put < 0, errno == EINTR { continue }
                guard put > 0 else { throw MoverError(.io, "disk \(name)", "write of block \(index) failed: \(Sockets.errnoText())") }
                done += put
            }
        }
    }

    func sync() throws {
        guard fsync(fd) == 0 || errno == EINVAL else { throw MoverError(.io, "disk \(name)", "fsync failed: \(Sockets.errnoText())") }
    }
}

/// Told of blocks a mover wrote, before the writer is told they are written. A real appliance
/// needs none (the host's tapdisk tracks what its guest writes for CBT); the simulator's hosts
/// learn of writes this way (`ChangeReportChannel`).
public protocol MoverWriteObserver: Sendable {
    func wrote(disk: String, blocks: BlockRange) throws
}

/// A line protocol on a connected socket the simulator hands its appliances: the mover sends
/// `<disk> <first> <count>\n`, the simulator marks those blocks changed and answers `ok\n`.
public final class ChangeReportChannel: MoverWriteObserver, @unchecked Sendable {
    // @unchecked: the descriptor is only used while `lock` is held.
    private let fd: Int32
    private let lock = NSLock()

    public init(fd: Int32) { self.fd = fd }

    public func wrote(disk: String, blocks: BlockRange) throws {
        guard blocks.count > 0 else { return }
        lock.lock()
        defer { lock.unlock() }
        let line = Array("\(disk) \(blocks.first) \(blocks.count)\n".utf8)
        var sent = 0
        while sent < line.count {
            let n = line.withUnsafeBytes { send(fd, $0.baseAddress! + sent, line.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw MoverError(.io, "disk \(disk)", "the host's change tracking is gone") }
            sent += n
        }
        var reply = [UInt8](repeating: 0, count: 3)
        var got = 0
        while got < 3 {
            let n = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, 3 - got, 0) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw MoverError(.io, "disk \(disk)", "the host's change tracking did not answer") }
            got += n
        }
        guard reply == Array("ok\n".utf8) else { throw MoverError(.io, "disk \(disk)", "the host's change tracking refused the write") }
    }

    /// The simulator's side: serves reports until the peer closes. `mark` returns false to refuse.
    public static func serve(fd: Int32, mark: (String, BlockRange) -> Bool) {
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return }
            pending += buffer[0..<n]
            while let nl = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                let parts = line.split(separator: " ")
                var ok = false
                if parts.count == 3, let first = Int64(parts[1]), let count = Int64(parts[2]), first >= 0, count >= 0 {
                    ok = mark(String(parts[0]), BlockRange(first: first, count: count))
                }
                let reply = Array((ok ? "ok\n" : "no\n").utf8)
                _ = reply.withUnsafeBytes { send(fd, $0.baseAddress, 3, Int32(MSG_NOSIGNAL)) }
            }
            if pending.count > 4096 { return }
        }
    }
}

import Foundation
import Synchronization

@testable import HavenMover

/// A mover served in process on a loopback address of its own (127.40-59: mover tests), with a
/// devices directory of image files.
final class MoverHarness: @unchecked Sendable {
    // @unchecked: set up in init, read-only afterwards (the server is itself thread-safe).
    static let counter = Atomic<Int>(0)
    let directory: URL
    let host: String
    let credentials: MoverCredentials
    let server: MoverServer
    var devices: URL { directory.appendingPathComponent("devices") }

    /// `configure` adjusts the server's configuration before it starts.
    init(name: String = "abd-test", host: String? = nil, configure: (inout MoverServerConfiguration) -> Void = { _ in }) throws {
        self.host = host ?? Self.nextAddress()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("haven-mover-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("devices"), withIntermediateDirectories: true)
        credentials = try MoverCredentials.generate(name: name)
        var config = MoverServerConfiguration(credentials: credentials, host: self.host, devices: DeviceDirectory(path: directory.appendingPathComponent("devices").path))
        configure(&config)
        server = try MoverServer(config)
        try server.start()
    }

    deinit {
        server.stop()
        try? FileManager.default.removeItem(at: directory)
    }

    /// A fresh address: 127.(40 + pid % 20).(counter).(1…) so parallel tests and processes differ.
    static func nextAddress() -> String {
        let n = counter.add(1, ordering: .relaxed).newValue
        return "127.\(40 + Int(getpid()) % 20).\(1 + (n / 250) % 250).\(1 + n % 250)"
    }

    var endpoint: MoverEndpoint { MoverEndpoint(host: host, pin: credentials.pin) }

    func token(_ scope: MoverToken.Scope = .all, job: String = "job-1", expires: Date = Date().addingTimeInterval(3600)) -> MoverToken {
        credentials.issueToken(jobID: job, scope: scope, expires: expires)
    }

    func client(_ scope: MoverToken.Scope = .all, options: MoverClient.Options = MoverClient.Options()) -> MoverClient {
        MoverClient(endpoint: endpoint, token: token(scope), options: options)
    }

    func peer(disk: String, _ scope: MoverToken.Scope) -> MoverPeer {
        MoverPeer(endpoint: endpoint, token: token(scope), disk: disk)
    }

    /// An image of `size` bytes: random blocks, all-zero blocks, and a short last block.
    @discardableResult
    func makeDisk(_ name: String, size: Int, seed: UInt64 = 1, zeroEvery: Int = 3) throws -> [UInt8] {
        var rng = SeededRandom(seed)
        var bytes = [UInt8](repeating: 0, count: size)
        let block = MoverProtocol.blockSize
        for b in 0..<((size + block - 1) / block) where b % zeroEvery != 0 {
            for i in (b * block)..<min(size, (b + 1) * block) { bytes[i] = UInt8(truncatingIfNeeded: rng.next()) }
        }
        try Data(bytes).write(to: devices.appendingPathComponent(name))
        return bytes
    }

    func emptyDisk(_ name: String, size: Int) throws {
        FileManager.default.createFile(atPath: devices.appendingPathComponent(name).path, contents: nil)
        let h = try FileHandle(forWritingTo: devices.appendingPathComponent(name))
        try h.truncate(atOffset: UInt64(size))
        try h.close()
    }

    func contents(_ name: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: devices.appendingPathComponent(name))) }
}

struct SeededRandom {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Collects blocks handed to a sink (from the client's thread) and rebuilds a disk image.
final class BlockCollector: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private(set) var indices: [Int64] = []
    private var image: [UInt8]

    init(size: Int) { image = [UInt8](repeating: 0, count: size) }

    func add(_ b: MoverBlock) {
        lock.lock()
        defer { lock.unlock() }
        indices.append(b.index)
        if !b.isZero {
            let start = Int(b.offset)
            image.replaceSubrange(start..<(start + b.bytes.count), with: b.bytes)
        }
    }

    var bytes: [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        return image
    }
}

/// A TCP relay in front of a mover that cuts its first connection once that many bytes went
/// from the server (`cutDownstreamAfter`) or to it (`cutUpstreamAfter`): a connection dropped in
/// the middle of a stream.
final class DroppingProxy: @unchecked Sendable {
    // @unchecked: `cuts` is atomic; the rest is set in init.
    let host: String
    let port = MoverProtocol.defaultPort
    let upstream: (String, Int)
    let cutDown: Int
    let cutUp: Int
    let cuts = Atomic<Int>(0)
    let connections = Atomic<Int>(0)
    private let fd: Int32

    init(to upstream: (String, Int), cutDownstreamAfter: Int = .max, cutUpstreamAfter: Int = .max) throws {
        host = MoverHarness.nextAddress()
        self.upstream = upstream
        cutDown = cutDownstreamAfter
        cutUp = cutUpstreamAfter
        fd = try Sockets.listen(host, MoverProtocol.defaultPort)
        Thread { [self] in acceptLoop() }.start()
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    private func acceptLoop() {
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 { return }
            let n = connections.add(1, ordering: .relaxed).newValue
            guard let server = try? Sockets.connect(upstream.0, upstream.1, source: nil, timeout: 5) else {
                close(client)
                continue
            }
            let down = n == 1 ? cutDown : Int.max
            let up = n == 1 ? cutUp : Int.max
            let done = DispatchGroup()
            done.enter()
            Thread { [self] in
                if Self.pump(client, server, limit: up) { cuts.add(1, ordering: .relaxed) }
                shutdown(client, Int32(SHUT_RDWR))
                shutdown(server, Int32(SHUT_RDWR))
                done.leave()
            }.start()
            Thread { [self] in
                if Self.pump(server, client, limit: down) { cuts.add(1, ordering: .relaxed) }
                shutdown(client, Int32(SHUT_RDWR))
                shutdown(server, Int32(SHUT_RDWR))
                done.wait()
                close(client)
                close(server)
            }.start()
        }
    }

    /// Copies until end of stream or `limit` bytes; true when it stopped at the limit.
    @discardableResult
    static func pump(_ from: Int32, _ to: Int32, limit: Int) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 16384)
        var total = 0
        while true {
            let want = min(buffer.count, limit - total)
            if want <= 0 { return true }
            let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, want) }
            if n <= 0 { return false }
            var off = 0
            while off < n {
                let w = buffer.withUnsafeBytes { send(to, $0.baseAddress! + off, n - off, Int32(MSG_NOSIGNAL)) }
                if w <= 0 { return false }
                off += w
            }
            total += n
        }
    }
}

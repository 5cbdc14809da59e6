import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// NBD for one simulated host: a real nbdkit serving the host's disks on a Unix socket, and a
/// forwarder on `<host address>:10809` that enforces xapi-nbd's limit of 16 connections, refuses
/// connections when no network has an NBD purpose, and can cut connections (fault `nbd-drop`).
final class NBDServer: @unchecked Sendable {
    // @unchecked: mutable state is guarded by `state`; the process handle is only touched
    // under that mutex too.
    enum Mode: Equatable { case off, tls, plain }

    struct State {
        var mode: Mode = .off
        var process: ChildProcess?
        var connections = 0
        var dropAfter: Int64 = 0
    }

    static let port = 10809
    static let nbdkitPath = ["/usr/sbin/nbdkit", "/usr/bin/nbdkit", "/usr/local/bin/nbdkit"]
        .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/sbin/nbdkit"
    static let maxConnections = 16

    let address: String
    let socketPath: String
    let tlsDirectory: String
    let pluginPath: String
    let pluginArgs: [String]
    private let state = Mutex(State())
    private let listenFD = Atomic<Int32>(-1)

    init(address: String, directory: URL, pluginPath: String, pluginArgs: [String]) {
        self.address = address
        socketPath = directory.appendingPathComponent("nbd-\(address).sock").path
        tlsDirectory = directory.appendingPathComponent("nbd-tls-\(address)").path
        self.pluginPath = pluginPath
        self.pluginArgs = pluginArgs
    }

    func setDropAfter(_ bytes: Int64) { state.withLock { $0.dropAfter = bytes } }

    /// Starts or restarts nbdkit in the mode the network purposes ask for.
    func configure(mode: Mode) throws {
        let change: (needed: Bool, old: ChildProcess?) = state.withLock { s in
            guard s.mode != mode || (mode != .off && s.process?.isRunning != true) else { return (false, nil) }
            let p = s.process
            s.process = nil
            s.mode = mode
            return (true, p)
        }
        guard change.needed else { return }
        change.old?.stop()
        guard mode != .off else { return }
        unlink(socketPath)
        var args = ["--foreground", "--exit-with-parent", "--unix", socketPath, "--readonly", "--no-sr",
                    "--mask-handshake=1", "--threads", "16"]
        args += mode == .tls ? ["--tls=require", "--tls-certificates=\(tlsDirectory)"] : ["--tls=off"]
        args += ["--filter=blocksize-policy", "python", pluginPath, "blocksize-minimum=512", "blocksize-error-policy=error"]
        args += pluginArgs
        let p = try ChildProcess(executable: Self.nbdkitPath, arguments: args, stderrPath: socketPath + ".log")
        // Wait for the socket so the first client does not race nbdkit's start.
        for _ in 0..<200 where access(socketPath, F_OK) != 0 { usleep(10_000) }
        state.withLock { $0.process = p }
    }

    func prepareTLS(certificate: String, key: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: tlsDirectory, withIntermediateDirectories: true)
        for (name, source) in [("ca-cert.pem", certificate), ("server-cert.pem", certificate), ("server-key.pem", key)] {
            let target = "\(tlsDirectory)/\(name)"
            try? fm.removeItem(atPath: target)
            try fm.copyItem(atPath: source, toPath: target)
        }
    }

    func startForwarder() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(Self.port).bigEndian)
        inet_pton(AF_INET, address, &addr.sin_addr)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0, listen(fd, 64) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw SimError("NBD: cannot listen on \(address):\(Self.port): \(message)")
        }
        listenFD.store(fd, ordering: .sequentiallyConsistent)
        Thread { [self] in acceptLoop(fd) }.start()
    }

    func stop() {
        // Only a shutdown: the accept thread closes the descriptor when it leaves (closing here
        // could let a reused number be accepted on, or closed twice).
        let fd = listenFD.exchange(-1, ordering: .sequentiallyConsistent)
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        let p = state.withLock { s -> ChildProcess? in
            defer { s.process = nil }
            return s.process
        }
        p?.stop()
    }

    private func acceptLoop(_ listenFD: Int32) {
        defer { close(listenFD) }
        while true {
            let client = accept(listenFD, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let admitted = state.withLock { s -> (Bool, Int64) in
                guard s.mode != .off, s.process?.isRunning == true, s.connections < Self.maxConnections else { return (false, 0) }
                s.connections += 1
                return (true, s.dropAfter)
            }
            guard admitted.0 else {
                close(client)
                continue
            }
            Thread { [self] in
                relay(client, dropAfter: admitted.1)
                state.withLock { $0.connections -= 1 }
            }.start()
        }
    }

    private func relay(_ client: Int32, dropAfter: Int64) {
        let upstream = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in socketPath.utf8.prefix(raw.count - 1).enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            close(upstream)
            close(client)
            return
        }
        let done = DispatchGroup()
        done.enter()
        Thread {
            Self.pump(from: client, to: upstream, limit: 0)
            shutdown(upstream, Int32(SHUT_WR))
            done.leave()
        }.start()
        Self.pump(from: upstream, to: client, limit: dropAfter)
        // Cutting the connection: both directions end at once.
        shutdown(client, Int32(SHUT_RDWR))
        shutdown(upstream, Int32(SHUT_RDWR))
        done.wait()
        close(client)
        close(upstream)
    }

    /// Copies bytes until end of stream; with a limit, stops after that many bytes.
    private static func pump(from: Int32, to: Int32, limit: Int64) {
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        var total: Int64 = 0
        while true {
            var want = buffer.count
            if limit > 0 { want = Int(min(Int64(want), limit - total)) }
            if want <= 0 { return }
            let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, want) }
            if n <= 0 { return }
            var off = 0
            while off < n {
                let w = buffer.withUnsafeBytes { send(to, $0.baseAddress! + off, n - off, Int32(MSG_NOSIGNAL)) }
                if w <= 0 { return }
                off += w
            }
            total += Int64(n)
        }
    }
}

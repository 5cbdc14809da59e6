import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// How a mover serves: who it is, where it listens, which disks, and its limits.
public struct MoverServerConfiguration: Sendable {
    public var credentials: MoverCredentials
    /// The address to listen on (the appliance's own; also where its outbound connections leave from).
    public var host: String
    /// 0: a port the kernel picks (`MoverServer.port` says which).
    public var port: Int
    public var devices: DeviceDirectory
    /// When set, only connections from these source addresses are served; others are reset at
    /// once (a site that accepts no inbound connection from elsewhere; haven's own management
    /// address stays allowed).
    public var allowedSources: Set<String>?
    /// Told of written blocks before they are acknowledged (the simulator's change tracking).
    public var writeObserver: (any MoverWriteObserver)?
    public var maxConnections = 32
    public var maxWindow = MoverProtocol.maxWindow
    /// A connection silent this long is closed.
    public var idleTimeout: Double = 300
    public var softwareVersion = "haven"
    /// One line per refused connection, refused token and failed command: sources, job ids,
    /// codes and messages, never a token or key.
    public var log: (@Sendable (String) -> Void)?
    public var now: @Sendable () -> Date = { Date() }

    public init(credentials: MoverCredentials, host: String, port: Int = MoverProtocol.defaultPort, devices: DeviceDirectory) {
        self.credentials = credentials
        self.host = host
        self.port = port
        self.devices = devices
    }
}

/// `haven mover`'s server: TLS on the appliance's address, one thread per connection, every
/// connection authenticated by a job token before any command.
public final class MoverServer: Sendable {
    /// What the server saw, for tests and diagnostics.
    public struct Statistics: Sendable {
        public var connectionsServed = 0
        /// Connections reset because their source is not allowed.
        public var connectionsRefused = 0
        /// HELLOs whose token did not verify.
        public var tokensRefused = 0
        /// The most blocks ever sent and not yet acknowledged on one read stream.
        public var peakInFlight = 0
    }

    public let configuration: MoverServerConfiguration
    let identity: TLSServerIdentity
    private let state = Mutex(State())

    struct State {
        var listenFD: Int32 = -1
        var port = 0
        var stopped = false
        var active: [ObjectIdentifier: FrameConnection] = [:]
        var statistics = Statistics()
    }

    public init(_ configuration: MoverServerConfiguration) throws {
        self.configuration = configuration
        identity = try TLSServerIdentity(
            certificatePEM: configuration.credentials.certificatePEM, privateKeyPEM: configuration.credentials.privateKeyPEM)
    }

    public var statistics: Statistics { state.withLock { $0.statistics } }

    /// The port it listens on, once started (the configured one, or the kernel's pick for 0).
    public var port: Int { state.withLock { $0.port } }

    /// Binds and starts accepting on a thread of its own.
    public func start() throws {
        let fd = try Sockets.listen(configuration.host, configuration.port)
        let port = Sockets.boundPort(fd)
        state.withLock {
            $0.listenFD = fd
            $0.port = port
        }
        let thread = Thread { [self] in acceptLoop(fd) }
        thread.name = "mover \(configuration.host):\(port)"
        thread.start()
    }

    /// Stops listening and breaks every open connection.
    public func stop() {
        let (fd, open) = state.withLock { s -> (Int32, [FrameConnection]) in
            s.stopped = true
            defer { s.listenFD = -1 }
            return (s.listenFD, Array(s.active.values))
        }
        // Only a shutdown: the accept thread closes the descriptor as it leaves, so the number
        // cannot be reused by another socket while accept(2) may still be called on it.
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
        for c in open { c.abort() }
    }

    func record(_ change: (inout Statistics) -> Void) { state.withLock { change(&$0.statistics) } }

    private func acceptLoop(_ listenFD: Int32) {
        defer { close(listenFD) }
        while true {
            var peer = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let fd = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listenFD, $0, &len) }
            }
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var ip = [CChar](repeating: 0, count: 64)
            inet_ntop(AF_INET, &peer.sin_addr, &ip, socklen_t(ip.count))
            let source = cString(ip)
            if let allowed = configuration.allowedSources, !allowed.contains(source) {
                // A reset, as a firewall's reject would give, before any byte of TLS.
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
                close(fd)
                record { $0.connectionsRefused += 1 }
                configuration.log?("refused a connection from \(source): inbound connections are allowed only from \(allowed.sorted().joined(separator: ", "))")
                continue
            }
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let label = "\(source):\(UInt16(bigEndian: peer.sin_port))"
            let thread = Thread { [self] in serve(fd, source: label) }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    private func serve(_ fd: Int32, source: String) {
        // The handshake and HELLO must come quickly; after that the idle timeout applies.
        Sockets.setTimeout(fd, seconds: 30)
        guard let channel = identity.accept(fd) else { return }
        let conn = FrameConnection(channel, context: "client \(source)")
        let key = ObjectIdentifier(conn)
        let admitted = state.withLock { s -> Bool in
            guard !s.stopped, s.active.count < configuration.maxConnections else { return false }
            s.active[key] = conn
            s.statistics.connectionsServed += 1
            return true
        }
        defer {
            state.withLock { _ = $0.active.removeValue(forKey: key) }
            conn.close()
        }
        guard admitted else {
            conn.sendError(MoverError(.busy, "", "the mover serves \(configuration.maxConnections) connections already"))
            configuration.log?("\(source): refused, \(configuration.maxConnections) connections already")
            return
        }
        let session = MoverSession(server: self, conn: conn)
        session.run()
    }
}

import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// IPv4 TCP sockets: listen, accept, connect with a deadline. The mover speaks IPv4 only, as
/// the appliances' addresses (static lists, DHCP) are IPv4.
enum Sockets {
    static func address(_ host: String, _ port: Int) throws -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
        guard (0...65535).contains(port), inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
            throw MoverError(.invalidArgument, "\(host):\(port)", "not an IPv4 address and port")
        }
        return addr
    }

    static func errnoText() -> String { String(cString: strerror(errno)) }

    /// The port a socket is bound to (after listening on port 0).
    static func boundPort(_ fd: Int32) -> Int {
        var local = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafeMutablePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return rc == 0 ? Int(UInt16(bigEndian: local.sin_port)) : 0
    }

    /// A listening socket on `host:port` (port 0: one the kernel picks).
    static func listen(_ host: String, _ port: Int, backlog: Int32 = 64) throws -> Int32 {
        var addr = try address(host, port)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw MoverError(.internal, "\(host):\(port)", "socket: \(errnoText())") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, backlog) == 0 else {
            let text = errnoText()
            close(fd)
            throw MoverError(.internal, "\(host):\(port)", "cannot listen: \(text)")
        }
        return fd
    }

    /// Connects within `timeout` seconds; `source` binds the local end first (an appliance's
    /// outbound connections leave from its own address).
    static func connect(_ host: String, _ port: Int, source: String?, timeout: Double) throws -> Int32 {
        var addr = try address(host, port)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw MoverError(.connection, "\(host):\(port)", "socket: \(errnoText())") }
        var ok = false
        defer { if !ok { close(fd) } }
        if let source {
            var local = try address(source, 0)
            let rc = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else { throw MoverError(.connection, "\(host):\(port)", "cannot bind the source address \(source): \(errnoText())") }
        }
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            guard errno == EINPROGRESS else { throw connectError(host, port, errno) }
            var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let n = poll(&pfd, 1, Int32(max(1, timeout * 1000)))
            guard n > 0 else { throw MoverError(.connection, "\(host):\(port)", "no answer within \(Int(timeout)) s") }
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            guard err == 0 else { throw connectError(host, port, err) }
        }
        _ = fcntl(fd, F_SETFL, flags)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        ok = true
        return fd
    }

    /// Says a refusal plainly: diagnostics tell "refused" (a firewall, no mover) from "unreachable".
    static func connectError(_ host: String, _ port: Int, _ code: Int32) -> MoverError {
        let text = String(cString: strerror(code))
        switch code {
        case ECONNREFUSED: return MoverError(.connection, "\(host):\(port)", "it refused the connection (\(text)): nothing listens there, or inbound connections are denied")
        case ECONNRESET: return MoverError(.connection, "\(host):\(port)", "it refused the connection (\(text)): inbound connections denied?")
        default: return MoverError(.connection, "\(host):\(port)", "cannot connect: \(text)")
        }
    }

    /// Reads and writes that wait longer than `seconds` fail (a peer that went silent).
    static func setTimeout(_ fd: Int32, seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The peer's address of an accepted socket.
    static func peerName(_ fd: Int32) -> String {
        var peer = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let rc = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        guard rc == 0 else { return "?" }
        var ip = [CChar](repeating: 0, count: 64)
        inet_ntop(AF_INET, &peer.sin_addr, &ip, socklen_t(ip.count))
        return "\(cString(ip)):\(UInt16(bigEndian: peer.sin_port))"
    }
}

/// The text of a NUL-terminated C buffer.
func cString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

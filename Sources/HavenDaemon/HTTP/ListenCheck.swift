#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension ListenAddress {
    /// Binds the address once and lets it go, before the daemon takes its lock or reads a pool:
    /// an address in use, not on this machine or not resolvable fails at start with a sentence
    /// naming it, instead of the HTTP server's low-level error after the daemon has started.
    /// (The server binds with SO_REUSEADDR too, so a port in TIME_WAIT passes both.)
    public func checkBindable() throws {
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        hints.ai_family = AF_UNSPEC
        #if canImport(Glibc)
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        #else
        hints.ai_socktype = SOCK_STREAM
        #endif
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw DaemonError(.listen, "cannot listen on \(self): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
        guard fd >= 0 else { throw DaemonError(.listen, "cannot listen on \(self): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else {
            throw DaemonError(.listen, "cannot listen on \(self): \(String(cString: strerror(errno)))")
        }
    }
}

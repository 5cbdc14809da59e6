import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A tiny HTTP server on 127.0.0.1 that plays a broken or hostile pool: it reads each request
/// and answers with a fixed reply, an endless body, or nothing at all.
final class HostileServer: @unchecked Sendable {
    // @unchecked: `listenFD` and `port` are set in init and only read afterwards; the counters
    // are atomics; open client sockets are kept under a mutex.
    enum Behaviour: Sendable {
        /// A complete reply with this body.
        case reply(contentType: String, body: [UInt8])
        /// A 200 with `Content-Length: total` and a body of `fill` bytes streamed in 1 MiB pieces
        /// until `total` or the client hangs up.
        case stream(total: Int64, fill: UInt8)
        /// Reads the request and never answers.
        case silent
    }

    let behaviour: Behaviour
    let port: Int
    private let listenFD: Int32
    /// Requests read (a request counts once its head arrived).
    let requests = Atomic<Int>(0)
    /// Body bytes the server managed to send.
    let bytesSent = Atomic<Int64>(0)
    private let open = Mutex<[Int32]>([])
    private let stopped = Atomic<Bool>(false)

    init(_ behaviour: Behaviour) throws {
        self.behaviour = behaviour
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0, listen(fd, 16) == 0 else { throw POSIXError(.EADDRINUSE) }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        port = Int(UInt16(bigEndian: bound.sin_port))
        listenFD = fd
        let thread = Thread { [self] in acceptLoop() }
        thread.stackSize = 1 << 20
        thread.start()
    }

    var url: String { "http://127.0.0.1:\(port)" }

    /// Only shuts sockets down: the accept thread closes the listener as it leaves. Closing here
    /// (and again from deinit, after an explicit stop) closed whatever descriptor had reused the
    /// number by then — a pipe or socket of another test in the same process.
    func stop() {
        guard !stopped.exchange(true, ordering: .sequentiallyConsistent) else { return }
        shutdown(listenFD, Int32(SHUT_RDWR))
        for fd in open.withLock({ $0 }) { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    private func acceptLoop() {
        defer { close(listenFD) }
        while true {
            let client = accept(listenFD, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            open.withLock { $0.append(client) }
            let thread = Thread { [self] in serve(client) }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    private func serve(_ fd: Int32) {
        defer {
            open.withLock { $0.removeAll { $0 == fd } }
            close(fd)
        }
        // The request: a head, then Content-Length bytes of body.
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        var headEnd: Int?
        while headEnd == nil {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            pending += buffer[0..<n]
            headEnd = pending.indices.dropLast(3).first { pending[$0...].starts(with: [13, 10, 13, 10]) }
        }
        let head = String(decoding: pending[0..<headEnd!], as: UTF8.self).lowercased()
        let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
            .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
        var have = pending.count - (headEnd! + 4)
        while have < length {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            have += n
        }
        requests.add(1, ordering: .relaxed)
        switch behaviour {
        case .reply(let contentType, let body):
            let text = "HTTP/1.1 200 OK\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
            guard sendAll(fd, Array(text.utf8)) else { return }
            if sendAll(fd, body) { bytesSent.add(Int64(body.count), ordering: .relaxed) }
        case .stream(let total, let fill):
            let text = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(total)\r\nConnection: close\r\n\r\n"
            guard sendAll(fd, Array(text.utf8)) else { return }
            let piece = [UInt8](repeating: fill, count: 1 << 20)
            var sent: Int64 = 0
            while sent < total {
                let n = Int(min(Int64(piece.count), total - sent))
                guard sendAll(fd, Array(piece[0..<n])) else { return }
                sent += Int64(n)
                bytesSent.add(Int64(n), ordering: .relaxed)
            }
        case .silent:
            // Hold the connection open, saying nothing, until the client gives up or stop().
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n <= 0 { return }
            }
        }
    }

    private func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let w = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if w <= 0 { return false }
            off += w
        }
        return true
    }
}

import CSSL
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One HTTP request as the simulator reads it; the body is pulled on demand.
final class HTTPServerRequest {
    let method: String
    let target: String
    let path: String
    let query: [String: String]
    /// Lowercased names.
    let headers: [String: String]
    let version: String
    let remoteAddress: String
    private let reader: BufferedReader
    private(set) var remainingBody: Int

    init(method: String, target: String, headers: [String: String], version: String, remote: String, reader: BufferedReader) {
        self.method = method
        self.target = target
        self.headers = headers
        self.version = version
        self.remoteAddress = remote
        self.reader = reader
        let parts = target.split(separator: "?", maxSplits: 1).map(String.init)
        path = parts.first ?? "/"
        var q: [String: String] = [:]
        if parts.count > 1 {
            for pair in parts[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1).map(String.init)
                let key = kv[0].removingPercentEncoding ?? kv[0]
                let value = kv.count > 1 ? (kv[1].replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? kv[1]) : ""
                q[key] = value
            }
        }
        query = q
        remainingBody = Int(headers["content-length"] ?? "") ?? 0
    }

    var contentLength: Int? { Int(headers["content-length"] ?? "") }

    /// The `upload-cut` fault: the body ends (the link drops) after this many more bytes.
    var cutAfter: Int?
    /// True once `cutAfter` ended the body.
    private(set) var wasCut = false

    /// Reads body bytes; 0 at the end of the body.
    func readBody(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard remainingBody > 0 else { return 0 }
        var want = min(buffer.count, remainingBody)
        if let cut = cutAfter {
            guard cut > 0 else {
                wasCut = true
                return 0
            }
            want = min(want, cut)
        }
        let n = reader.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
        if n <= 0 {
            remainingBody = 0
            return 0
        }
        remainingBody -= n
        if let cut = cutAfter { cutAfter = cut - n }
        return n
    }

    func readWholeBody(limit: Int) throws -> [UInt8] {
        guard remainingBody <= limit else { throw SimError("request body of \(remainingBody) bytes exceeds \(limit)") }
        var out = [UInt8](repeating: 0, count: remainingBody)
        var filled = 0
        while filled < out.count {
            let n = out.withUnsafeMutableBytes { readBody(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled...])) }
            if n == 0 { throw SimError("request body ended early") }
            filled += n
        }
        return out
    }

    func discardBody() {
        var scratch = [UInt8](repeating: 0, count: 65536)
        while scratch.withUnsafeMutableBytes({ readBody(into: $0) }) > 0 {}
    }

    /// Cookie values, for session_id and task_id passed as cookies.
    var cookies: [String: String] {
        var out: [String: String] = [:]
        for part in (headers["cookie"] ?? "").split(separator: ";") {
            let kv = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1).map(String.init)
            if kv.count == 2 { out[kv[0]] = kv[1] }
        }
        return out
    }
}

/// Writes one reply. Without a content length the connection closes after the body, as xapi
/// does on its export handlers.
final class HTTPServerResponse {
    private let channel: ByteChannel
    private(set) var headSent = false
    private(set) var closeAfter = false
    private(set) var failed = false
    var version = "HTTP/1.1"

    init(channel: ByteChannel) { self.channel = channel }

    static let reasons: [Int: String] = [
        200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
        405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
    ]

    func head(_ status: Int, headers: [(String, String)] = [], contentLength: Int?) {
        precondition(!headSent)
        headSent = true
        var text = "\(version) \(status) \(Self.reasons[status] ?? "Status")\r\n"
        for (k, v) in headers { text += "\(k): \(v)\r\n" }
        if let contentLength {
            text += "Content-Length: \(contentLength)\r\n"
        } else {
            closeAfter = true
            text += "Connection: close\r\n"
        }
        text += "\r\n"
        if !channel.write(Array(text.utf8)) { failed = true }
    }

    func write(_ bytes: UnsafeRawBufferPointer) {
        guard !failed else { return }
        if !channel.write(bytes) { failed = true }
    }

    func write(_ bytes: [UInt8]) { bytes.withUnsafeBytes { write($0) } }

    func send(_ status: Int, _ body: [UInt8], contentType: String, extra: [(String, String)] = []) {
        head(status, headers: [("Content-Type", contentType)] + extra, contentLength: body.count)
        write(body)
    }

    func markClose() { closeAfter = true }

    /// Closes the connection without an answer (a cut link): nothing is written.
    func abort() {
        headSent = true
        failed = true
    }
}

/// Buffered reads from a channel, for header parsing and body streaming.
final class BufferedReader {
    let channel: ByteChannel
    private var pending: [UInt8] = []
    private var offset = 0
    private var scratch = [UInt8](repeating: 0, count: 65536)

    init(channel: ByteChannel) { self.channel = channel }

    /// Reads the header block (through CRLFCRLF); nil at end of stream or when it grows too large.
    func readHead(limit: Int = 65536) -> [UInt8]? {
        var searched = offset
        while true {
            if pending.count - offset >= 4 {
                var i = max(offset, searched - 3)
                while i + 3 < pending.count {
                    if pending[i] == 13, pending[i + 1] == 10, pending[i + 2] == 13, pending[i + 3] == 10 {
                        let head = Array(pending[offset..<(i + 4)])
                        offset = i + 4
                        compact()
                        return head
                    }
                    i += 1
                }
                searched = pending.count
            }
            if pending.count - offset > limit { return nil }
            let n = scratch.withUnsafeMutableBytes { channel.read(into: $0) }
            if n <= 0 { return nil }
            pending.append(contentsOf: scratch[0..<n])
        }
    }

    private func compact() {
        if offset == pending.count {
            pending.removeAll(keepingCapacity: true)
            offset = 0
        }
    }

    func read(into out: UnsafeMutableRawBufferPointer) -> Int {
        if offset < pending.count {
            let n = min(out.count, pending.count - offset)
            pending.withUnsafeBytes { src in out.baseAddress!.copyMemory(from: src.baseAddress! + offset, byteCount: n) }
            offset += n
            compact()
            return n
        }
        return channel.read(into: out)
    }
}

/// A small threaded HTTP/1.1 server: one thread per connection, keep-alive, TLS optional.
/// Enough for a simulator on loopback; it is not a general web server.
final class HTTPServer: @unchecked Sendable {
    // @unchecked: `listenFD` is written before the accept thread starts and read-only
    // afterwards; `stop()` only shuts the socket down (once, through `running`), and the accept
    // thread alone closes it, so the descriptor number is never reused under a live loop.
    typealias Handler = @Sendable (HTTPServerRequest, HTTPServerResponse) -> Void

    let address: String
    let port: Int
    let tls: TLSServerContext?
    let handler: Handler
    private var listenFD: Int32 = -1
    private let running = Atomic<Bool>(false)

    init(address: String, port: Int, tls: TLSServerContext?, handler: @escaping Handler) {
        self.address = address
        self.port = port
        self.tls = tls
        self.handler = handler
    }

    func start() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SimError("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, address, &addr.sin_addr) == 1 else {
            Glibc.close(fd)
            throw SimError("not an IPv4 address: \(address)")
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw SimError("cannot listen on \(address):\(port): \(message)")
        }
        guard listen(fd, 128) == 0 else {
            Glibc.close(fd)
            throw SimError("listen: \(String(cString: strerror(errno)))")
        }
        listenFD = fd
        running.store(true, ordering: .sequentiallyConsistent)
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "http \(address):\(port)"
        thread.start()
    }

    /// Idempotent. Closing here would let the number be reused by another socket or file while
    /// the accept thread may still call accept(2) on it, or a second stop close someone else's.
    func stop() {
        guard running.exchange(false, ordering: .sequentiallyConsistent) else { return }
        shutdown(listenFD, Int32(SHUT_RDWR))
    }

    private func acceptLoop() {
        defer { Glibc.close(listenFD) }
        while running.load(ordering: .sequentiallyConsistent) {
            var peer = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let client = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(listenFD, $0, &len) }
            }
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            var nodelay: Int32 = 1
            setsockopt(client, Int32(IPPROTO_TCP), TCP_NODELAY, &nodelay, socklen_t(MemoryLayout<Int32>.size))
            var ip = [CChar](repeating: 0, count: 64)
            inet_ntop(AF_INET, &peer.sin_addr, &ip, socklen_t(ip.count))
            let remote = String(cString: ip)
            let thread = Thread { [self] in serve(client, remote: remote) }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    private func serve(_ fd: Int32, remote: String) {
        var tlsConn: OpaquePointer?
        if let tls {
            guard let c = haven_tls_accept(tls.raw, fd) else {
                Glibc.close(fd)
                return
            }
            tlsConn = c
        }
        let channel = ByteChannel(fd: fd, tls: tlsConn)
        defer { channel.close() }
        let reader = BufferedReader(channel: channel)
        while let head = reader.readHead() {
            let text = String(decoding: head, as: UTF8.self)
            let lines = text.components(separatedBy: "\r\n")
            let requestLine = lines[0].split(separator: " ").map(String.init)
            guard requestLine.count == 3 else { return }
            var headers: [String: String] = [:]
            for line in lines.dropFirst() where !line.isEmpty {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            let request = HTTPServerRequest(
                method: requestLine[0], target: requestLine[1], headers: headers, version: requestLine[2], remote: remote, reader: reader)
            let response = HTTPServerResponse(channel: channel)
            handler(request, response)
            if !response.headSent { response.send(500, Array("no reply".utf8), contentType: "text/plain") }
            let wantsClose = headers["connection"]?.lowercased() == "close" || requestLine[2] == "HTTP/1.0"
            if response.closeAfter || response.failed || wantsClose { return }
            // The next request starts after this one's body.
            if request.remainingBody > 0 { request.discardBody() }
        }
    }
}

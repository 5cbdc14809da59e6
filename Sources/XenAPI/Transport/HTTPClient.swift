import CCurl
import Foundation
import Synchronization

/// A request for `HTTPClient`.
public struct HTTPRequest: Sendable {
    public enum Method: String, Sendable { case get = "GET", post = "POST", put = "PUT" }

    public var method: Method
    public var url: String
    public var headers: [(String, String)]
    /// Whole-request timeout in seconds; nil for streams that last as long as they need.
    public var timeout: Double?
    /// Seconds a transfer may move less than 1 byte per second before it fails; nil for the
    /// client's `stallTimeout`. Every request has one: a peer that accepts and then falls silent
    /// is given up on, long streams included (they are long, never silent for minutes).
    public var stallTimeout: Double?

    public init(method: Method, url: String, headers: [(String, String)] = [], timeout: Double? = 60, stallTimeout: Double? = nil) {
        self.method = method
        self.url = url
        self.headers = headers
        self.timeout = timeout
        self.stallTimeout = stallTimeout
    }
}

/// Status and headers of a reply; header names are lowercased. The last header block is kept when
/// there were several (a 100-continue before the real reply).
public struct HTTPResponseHead: Sendable {
    public var status: Int
    public var headers: [String: String]
}

/// Where a request body comes from.
public enum HTTPBody {
    case none
    case bytes([UInt8])
    /// A body of known length (xapi refuses chunked uploads), pulled in pieces: the closure fills
    /// the buffer and returns how many bytes it wrote, 0 at the end.
    case stream(length: Int64, read: (UnsafeMutableRawBufferPointer) throws -> Int)
}

/// Errors of the HTTP layer, before any xapi semantics: could not connect, TLS refused, timeouts.
public struct HTTPTransportError: Error, Sendable, CustomStringConvertible {
    public var curlCode: Int
    public var message: String
    public var url: String

    public var description: String { "\(message) (\(Self.redacted(url)), curl error \(curlCode))" }

    /// A session reference is as good as a password while it lives: never print one.
    static func redacted(_ url: String) -> String {
        guard var c = URLComponents(string: url), let items = c.queryItems else { return url }
        c.queryItems = items.map { $0.name == "session_id" ? URLQueryItem(name: $0.name, value: "<redacted>") : $0 }
        return c.string ?? url
    }

    /// The certificate did not match the pin or the trust store.
    public var isTLSVerificationFailure: Bool { [35, 51, 58, 60, 83, 90, 91].contains(curlCode) }
    public var isTimeout: Bool { curlCode == 28 }
}

/// HTTP(S) over libcurl with connection reuse: one easy handle per connection, kept and reused
/// for the same host, so keep-alive works and TLS handshakes are not repeated.
///
/// Calls block their thread while data moves; the async wrappers run them on a thread of their own.
public final class HTTPClient: Sendable {
    public let tls: TLSPolicy
    /// Seconds for the TCP connection and the TLS handshake.
    public let connectTimeout: Double
    /// Default seconds of near silence (under 1 byte/s) before a transfer fails.
    public let stallTimeout: Double
    private let idle = Mutex<[String: [CurlHandle]]>([:])

    private static let globalInit: Void = { curl_global_init(Int(CURL_GLOBAL_ALL)) }()

    public init(tls: TLSPolicy, connectTimeout: Double = 10, stallTimeout: Double = 120) {
        _ = Self.globalInit
        self.tls = tls
        self.connectTimeout = connectTimeout
        self.stallTimeout = stallTimeout
    }

    /// Performs a request; the reply body goes to `sink` piece by piece as it arrives (never held
    /// whole unless the sink keeps it). Throwing from the sink aborts the transfer.
    public func perform(
        _ request: HTTPRequest, body: HTTPBody = .none,
        sink: (UnsafeRawBufferPointer) throws -> Void
    ) throws -> HTTPResponseHead {
        let key = Self.hostKey(request.url)
        let handle = idle.withLock { $0[key]?.popLast() } ?? CurlHandle()
        do {
            let head = try handle.perform(
                request, body: body, tls: tls, connectTimeout: connectTimeout, stallTimeout: request.stallTimeout ?? stallTimeout, sink: sink)
            idle.withLock { pool in
                var list = pool[key] ?? []
                if list.count < 8 { list.append(handle) }
                pool[key] = list
            }
            return head
        } catch {
            // A handle whose transfer failed may hold a broken connection: let it go.
            throw error
        }
    }

    /// Performs a request and returns the whole body (RPC replies). A body larger than
    /// `maxBytes` fails the transfer as it arrives (from libcurl's write callback), so no more
    /// than `maxBytes` is ever held, whatever the peer sends or announces.
    public func fetch(_ request: HTTPRequest, body: HTTPBody = .none, maxBytes: Int = .max) throws -> (HTTPResponseHead, [UInt8]) {
        var data: [UInt8] = []
        let head = try perform(request, body: body) { piece in
            guard piece.count <= maxBytes - data.count else {
                throw ReplyLimitError(.replyTooLarge, limit: maxBytes, context: HTTPTransportError.redacted(request.url))
            }
            data.append(contentsOf: piece)
        }
        return (head, data)
    }

    static func hostKey(_ url: String) -> String {
        guard let u = URL(string: url) else { return url }
        return "\(u.scheme ?? "")://\(u.host ?? ""):\(u.port ?? 0)"
    }
}

/// Runs blocking work on a thread of its own so the cooperative pool is never blocked.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            continuation.resume(with: Result { try body() })
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// One libcurl easy handle, i.e. one (reusable) connection.
///
/// `@unchecked Sendable` because a handle moves between threads only through `HTTPClient`'s
/// mutex-guarded idle list, which hands each handle to exactly one caller at a time; libcurl
/// allows an easy handle to be used from any thread as long as it is not used concurrently.
final class CurlHandle: @unchecked Sendable {
    let curl: UnsafeMutableRawPointer

    init() {
        curl = curl_easy_init()
    }

    deinit { curl_easy_cleanup(curl) }

    /// State the C callbacks reach through their user-data pointer.
    final class Transfer {
        var sink: (UnsafeRawBufferPointer) throws -> Void
        var read: ((UnsafeMutableRawBufferPointer) throws -> Int)?
        var upload: [UInt8] = []
        var uploadOffset = 0
        var headerLines: [String] = []
        var failure: (any Error)?
        var pin: [UInt8] = []

        init(sink: @escaping (UnsafeRawBufferPointer) throws -> Void) { self.sink = sink }
    }

    func perform(
        _ request: HTTPRequest, body: HTTPBody, tls: TLSPolicy, connectTimeout: Double, stallTimeout: Double,
        sink: (UnsafeRawBufferPointer) throws -> Void
    ) throws -> HTTPResponseHead {
        try withoutActuallyEscaping(sink) { sink in
            let transfer = Transfer(sink: sink)
            let context = Unmanaged.passRetained(transfer)
            defer { context.release() }
            let opaque = context.toOpaque()

            curl_easy_reset(curl)
            var failures: [CURLcode] = []
            func set(_ r: CURLcode) { if r != CURLE_OK { failures.append(r) } }
            set(haven_curl_setopt_string(curl, CURLOPT_URL, request.url))
            set(haven_curl_setopt_long(curl, CURLOPT_NOSIGNAL, 1))
            set(haven_curl_setopt_long(curl, CURLOPT_TCP_KEEPALIVE, 1))
            set(haven_curl_setopt_long(curl, CURLOPT_CONNECTTIMEOUT_MS, Int(connectTimeout * 1000)))
            // Only loopback and the declared pool are ever contacted: no proxies from the environment.
            set(haven_curl_setopt_string(curl, CURLOPT_NOPROXY, "*"))
            if let t = request.timeout {
                set(haven_curl_setopt_long(curl, CURLOPT_TIMEOUT_MS, Int(t * 1000)))
            }
            // libcurl counts the low-speed window in whole seconds; at least 1.
            set(haven_curl_setopt_long(curl, CURLOPT_LOW_SPEED_LIMIT, 1))
            set(haven_curl_setopt_long(curl, CURLOPT_LOW_SPEED_TIME, max(1, Int(stallTimeout.rounded(.up)))))
            switch tls {
            case .system:
                break
            case .caFile(let path):
                set(haven_curl_setopt_string(curl, CURLOPT_CAINFO, path))
            case .pinnedSHA256(let fp):
                transfer.pin = fp
                set(transfer.pin.withUnsafeBufferPointer { haven_curl_pin_sha256(curl, $0.baseAddress) })
            case .insecure:
                set(haven_curl_setopt_long(curl, CURLOPT_SSL_VERIFYPEER, 0))
                set(haven_curl_setopt_long(curl, CURLOPT_SSL_VERIFYHOST, 0))
            }

            var headers: UnsafeMutablePointer<curl_slist>?
            for (name, value) in request.headers { headers = curl_slist_append(headers, "\(name): \(value)") }
            // xapi refuses chunked uploads and 100-continue only costs a round trip.
            headers = curl_slist_append(headers, "Expect:")
            defer { curl_slist_free_all(headers) }

            switch request.method {
            case .get: set(haven_curl_setopt_long(curl, CURLOPT_HTTPGET, 1))
            case .post: set(haven_curl_setopt_long(curl, CURLOPT_POST, 1))
            case .put: set(haven_curl_setopt_long(curl, CURLOPT_UPLOAD, 1))
            }
            switch body {
            case .none:
                if request.method == .post { set(haven_curl_setopt_long(curl, CURLOPT_POSTFIELDSIZE, 0)) }
                if request.method == .put { set(haven_curl_setopt_off(curl, CURLOPT_INFILESIZE_LARGE, 0)) }
            case .bytes(let b):
                transfer.upload = b
                if request.method == .post {
                    set(haven_curl_setopt_off(curl, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(b.count)))
                } else {
                    set(haven_curl_setopt_off(curl, CURLOPT_INFILESIZE_LARGE, curl_off_t(b.count)))
                }
                set(haven_curl_setopt_datacb(curl, CURLOPT_READFUNCTION, curlRead))
                set(haven_curl_setopt_pointer(curl, CURLOPT_READDATA, opaque))
                // A body held in memory can be sent again: when a reused connection turns out
                // closed by the peer, libcurl rewinds it and retries on a new connection (without
                // this it fails with "rewinding of the data stream failed", curl error 65).
                set(haven_curl_setopt_seekcb(curl, CURLOPT_SEEKFUNCTION, curlSeek))
                set(haven_curl_setopt_pointer(curl, CURLOPT_SEEKDATA, opaque))
            case .stream(let length, let read):
                transfer.read = read
                if request.method == .post {
                    set(haven_curl_setopt_off(curl, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(length)))
                } else {
                    set(haven_curl_setopt_off(curl, CURLOPT_INFILESIZE_LARGE, curl_off_t(length)))
                }
                set(haven_curl_setopt_datacb(curl, CURLOPT_READFUNCTION, curlRead))
                set(haven_curl_setopt_pointer(curl, CURLOPT_READDATA, opaque))
            }
            set(haven_curl_setopt_slist(curl, CURLOPT_HTTPHEADER, headers))
            set(haven_curl_setopt_datacb(curl, CURLOPT_WRITEFUNCTION, curlWrite))
            set(haven_curl_setopt_pointer(curl, CURLOPT_WRITEDATA, opaque))
            set(haven_curl_setopt_datacb(curl, CURLOPT_HEADERFUNCTION, curlHeader))
            set(haven_curl_setopt_pointer(curl, CURLOPT_HEADERDATA, opaque))
            if let bad = failures.first {
                throw HTTPTransportError(curlCode: Int(bad.rawValue), message: String(cString: curl_easy_strerror(bad)), url: request.url)
            }

            let rc = curl_easy_perform(curl)
            if let failure = transfer.failure { throw failure }
            guard rc == CURLE_OK else {
                throw HTTPTransportError(curlCode: Int(rc.rawValue), message: String(cString: curl_easy_strerror(rc)), url: request.url)
            }
            var status = 0
            _ = haven_curl_getinfo_long(curl, CURLINFO_RESPONSE_CODE, &status)
            var fields: [String: String] = [:]
            for line in transfer.headerLines {
                guard let colon = line.firstIndex(of: ":") else { continue }
                let name = line[..<colon].lowercased()
                let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
                fields[name] = value
            }
            return HTTPResponseHead(status: status, headers: fields)
        }
    }
}

private func transfer(_ p: UnsafeMutableRawPointer?) -> CurlHandle.Transfer {
    Unmanaged<CurlHandle.Transfer>.fromOpaque(p!).takeUnretainedValue()
}

private let curlWrite: haven_curl_data_cb = { ptr, size, count, user in
    let t = transfer(user)
    let n = size * count
    do {
        try t.sink(UnsafeRawBufferPointer(start: ptr, count: n))
        return n
    } catch {
        t.failure = error
        return 0
    }
}

private let curlRead: haven_curl_data_cb = { ptr, size, count, user in
    let t = transfer(user)
    let capacity = size * count
    guard let ptr else { return 0 }
    if let read = t.read {
        do {
            return try read(UnsafeMutableRawBufferPointer(start: ptr, count: capacity))
        } catch {
            t.failure = error
            return Int(CURL_READFUNC_ABORT)
        }
    }
    let n = min(capacity, t.upload.count - t.uploadOffset)
    if n > 0 {
        t.upload.withUnsafeBytes { src in
            UnsafeMutableRawPointer(ptr).copyMemory(from: src.baseAddress! + t.uploadOffset, byteCount: n)
        }
        t.uploadOffset += n
    }
    return n
}

/// Rewinds an in-memory upload (a streamed one cannot be: it says so and libcurl gives up).
private let curlSeek: haven_curl_seek_cb = { user, offset, origin in
    let t = transfer(user)
    guard t.read == nil, origin == SEEK_SET, offset >= 0, Int(offset) <= t.upload.count else { return Int32(CURL_SEEKFUNC_CANTSEEK) }
    t.uploadOffset = Int(offset)
    return Int32(CURL_SEEKFUNC_OK)
}

private let curlHeader: haven_curl_data_cb = { ptr, size, count, user in
    let t = transfer(user)
    let n = size * count
    let line = String(decoding: UnsafeRawBufferPointer(start: ptr, count: n), as: UTF8.self)
    // A new status line starts a new header block (after a 100 Continue, or a redirect).
    if line.hasPrefix("HTTP/") { t.headerLines.removeAll() }
    t.headerLines.append(line)
    return n
}

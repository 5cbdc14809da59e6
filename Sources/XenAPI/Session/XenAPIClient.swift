import CrashPoints
import Foundation
import Synchronization

/// Who logs in. The password never appears in descriptions, logs or errors.
public struct XenCredentials: Sendable, CustomStringConvertible {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }

    public var description: String { "\(username) (password redacted)" }
}

/// What a client waits for and holds. A pool answers RPCs in seconds with replies of at most tens
/// of MiB (get_all_records of a large pool); these bounds stop a broken or hostile one from
/// hanging haven or exhausting its memory.
public struct XenAPILimits: Sendable, Hashable {
    /// TCP connection and TLS handshake.
    public var connectTimeout: Double
    /// A whole RPC exchange (xapi answers synchronous calls when they are done).
    public var replyTimeout: Double
    /// Near silence (under 1 byte/s) tolerated on any transfer, data-path streams included.
    public var stallTimeout: Double
    /// Largest RPC reply held; refused while it arrives.
    public var maxReplyBytes: Int
    /// Waits before resending a call refused with `TOO_BUSY`; one resend per entry.
    public var busyRetryDelays: [Double]

    public init(
        connectTimeout: Double = 10, replyTimeout: Double = 120, stallTimeout: Double = 120, maxReplyBytes: Int = 512 << 20,
        busyRetryDelays: [Double] = [0.5, 1, 2, 4]
    ) {
        self.connectTimeout = connectTimeout
        self.replyTimeout = replyTimeout
        self.stallTimeout = stallTimeout
        self.maxReplyBytes = maxReplyBytes
        self.busyRetryDelays = busyRetryDelays
    }
}

/// A login refused by the client itself, before anything is sent.
public struct XenCredentialsError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable { case emptyPassword = "EMPTY_PASSWORD" }
    public var code: Code
    /// The pool's address.
    public var context: String

    public var description: String {
        "\(code.rawValue): the password for \(context) is empty; haven does not send an empty password as a login attempt"
    }
}

/// Which wire protocol a client speaks.
public enum WireProtocol: String, Sendable { case jsonrpc, xmlrpc }

/// What the pool supports, learned at login.
public struct PoolCapabilities: Sendable, Hashable {
    public var apiMajor: Int64
    public var apiMinor: Int64
    /// `pool.restrictions` (`restrict_cbt` = "false" means CBT is licensed; a missing key counts as restricted).
    public var restrictions: [String: String]
    public var softwareVersion: [String: String]

    /// API 2.8 (XenServer 7.3) brought CBT, NBD and network purposes.
    public var hasCBTAPI: Bool { (apiMajor, apiMinor) >= (2, 8) }
    public var cbtLicensed: Bool { restrictions["restrict_cbt"] == "false" }
    public var canUseCBT: Bool { hasCBTAPI && cbtLicensed }
    /// `VM.snapshot(…, ignore_vdis)` arrived with xapi 21.4 (API 2.21 era; absent on the 1.249 line, API 2.15).
    public var snapshotTakesIgnoreVDIs: Bool { (apiMajor, apiMinor) >= (2, 16) }
    public var apiVersion: String { "\(apiMajor).\(apiMinor)" }
}

/// A logged-in connection to one pool. Follows `HOST_IS_SLAVE` to the master, logs in again on
/// `SESSION_INVALID`, prefers JSON-RPC and falls back to XML-RPC.
public actor XenAPIClient {
    public nonisolated let credentials: XenCredentials
    public nonisolated let http: HTTPClient
    public nonisolated let limits: XenAPILimits
    public let originator: String
    public private(set) var baseURL: String
    public private(set) var wire: WireProtocol
    public private(set) var session: String?
    public private(set) var capabilities: PoolCapabilities?
    private var requestID = 0
    private let preferred: WireProtocol

    /// `url` is any host of the pool (`https://host[:port]`); the path is ignored.
    public init(
        url: String, credentials: XenCredentials, tls: TLSPolicy, wire: WireProtocol = .jsonrpc, originator: String = "haven",
        limits: XenAPILimits = XenAPILimits()
    ) {
        self.baseURL = Self.origin(of: url)
        self.credentials = credentials
        self.limits = limits
        self.http = HTTPClient(tls: tls, connectTimeout: limits.connectTimeout, stallTimeout: limits.stallTimeout)
        self.preferred = wire
        self.wire = wire
        self.originator = originator
    }

    static func origin(of url: String) -> String {
        guard let u = URL(string: url), let scheme = u.scheme, let host = u.host else { return url }
        let h = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        return "\(scheme)://\(h)" + (u.port.map { ":\($0)" } ?? "")
    }

    /// Logs in (following the master) and learns the pool's capabilities. A session already open
    /// is logged out first: xapi keeps at most 500 sessions per originator and drops the oldest.
    @discardableResult
    public func login() async throws -> PoolCapabilities {
        if session != nil { await logout() }
        var hops = 0
        while true {
            do {
                let ref = try await rawLogin()
                session = ref
                break
            } catch let e as XenAPIError where e.code == XenAPIError.Code.hostIsSlave && hops < 3 {
                hops += 1
                baseURL = Self.replacingHost(of: baseURL, with: e.parameters.first ?? "")
            }
        }
        let pools = try await records(PoolRecord.self)
        guard let pool = pools.values.first else { throw XenAPIError(code: "INTERNAL_ERROR", parameters: ["pool has no pool object"]) }
        let master = HostRecord(try await call(.hostGetRecord, [pool.master.value]).structValue ?? [:])
        let caps = PoolCapabilities(
            apiMajor: master.apiVersionMajor, apiMinor: master.apiVersionMinor, restrictions: pool.restrictions,
            softwareVersion: master.softwareVersion)
        capabilities = caps
        return caps
    }

    static func replacingHost(of base: String, with host: String) -> String {
        guard var c = URLComponents(string: base), !host.isEmpty else { return base }
        c.host = host.contains(":") ? "[\(host)]" : host
        return c.string ?? base
    }

    private func rawLogin() async throws -> String {
        // xapi would answer SESSION_AUTHENTICATION_FAILED after its deliberate 5 s delay, and a
        // login attempt with an empty password is noise in the pool's audit log: refuse here.
        guard !credentials.password.isEmpty else { throw XenCredentialsError(code: .emptyPassword, context: baseURL) }
        let params: [XenValue] = [.string(credentials.username), .string(credentials.password), "1.1", .string(originator)]
        do {
            return try await send(.sessionLogin, params).stringValue ?? ""
        } catch let e as WireFallback {
            guard wire == .jsonrpc else { throw e.underlying }
            // Old hosts without /jsonrpc: speak XML-RPC from now on.
            wire = .xmlrpc
            return try await send(.sessionLogin, params).stringValue ?? ""
        }
    }

    /// A login under way: concurrent first calls wait for it instead of each opening a session
    /// of its own (all but the last would be left open on the pool).
    private var pendingLogin: Task<PoolCapabilities, any Error>?

    /// Logs in when there is no session, joining a login already under way.
    @discardableResult
    func ensureSession() async throws -> PoolCapabilities? {
        if session != nil { return capabilities }
        if let p = pendingLogin { return try await p.value }
        let t = Task { try await self.login() }
        pendingLogin = t
        defer { pendingLogin = nil }
        return try await t.value
    }

    public func logout() async {
        guard let s = session else { return }
        _ = try? await send(.sessionLogout, [.string(s)])
        session = nil
    }

    /// Calls a method with the session prepended; logs in again once on `SESSION_INVALID` and
    /// follows a master change (`HOST_IS_SLAVE`) once.
    public func call(_ method: XenMethod, _ params: [XenValue]) async throws -> XenValue {
        try await ensureSession()
        let changes = method.changesPool
        if changes { CrashPoints.hit("before xapi \(method.name)") }
        var attempt = 0
        while true {
            attempt += 1
            // SESSION_INVALID is answered by logging in again twice: the fresh session can end too
            // before the retried call lands (a pool ending idle sessions aggressively, a heavily
            // loaded client); a third refusal is the answer.
            do {
                let reply = try await send(method, [.string(session ?? "")] + params)
                if changes { CrashPoints.hit("after xapi \(method.name)") }
                return reply
            } catch let e as XenAPIError where attempt <= 2 && e.code == XenAPIError.Code.sessionInvalid {
                session = nil
                try await login()
            } catch let e as XenAPIError where attempt == 1 && e.code == XenAPIError.Code.hostIsSlave {
                baseURL = Self.replacingHost(of: baseURL, with: e.parameters.first ?? "")
                session = nil
                try await login()
            }
        }
    }

    /// Starts `Async.<method>` and returns the task.
    public func callAsync(_ method: XenMethod, _ params: [XenValue]) async throws -> XenRef<TaskRecord> {
        try await ensureSession()
        if method.changesPool { CrashPoints.hit("before xapi Async.\(method.name)") }
        let v = try await send(method, [.string(session ?? "")] + params, async: true)
        if method.changesPool { CrashPoints.hit("after xapi Async.\(method.name)") }
        return XenRef(v.stringValue ?? "")
    }

    struct WireFallback: Error { var underlying: any Error }

    /// Sends one call. `TOO_BUSY` means xapi refused the call before running any of it, so every
    /// method may be sent again: it is, after each of `limits.busyRetryDelays`. Only the login
    /// may fall back to XML-RPC (`WireFallback`); other calls throw the underlying error.
    private func send(_ method: XenMethod, _ params: [XenValue], async: Bool = false, timeout: Double? = nil) async throws -> XenValue {
        var delays = limits.busyRetryDelays[...]
        while true {
            do {
                return try await sendOnce(method, params, async: async, timeout: timeout ?? limits.replyTimeout)
            } catch let e as XenAPIError where e.code == "TOO_BUSY" && !delays.isEmpty {
                try await Task.sleep(for: .seconds(delays.removeFirst()))
            } catch let e as WireFallback where method.name != XenMethod.sessionLogin.name {
                throw e.underlying
            }
        }
    }

    private func sendOnce(_ method: XenMethod, _ params: [XenValue], async: Bool, timeout: Double) async throws -> XenValue {
        let name = async ? method.asyncName : method.name
        requestID += 1
        let id = requestID
        let wire = self.wire
        let url = baseURL + (wire == .jsonrpc ? "/jsonrpc" : "/")
        let body = wire == .jsonrpc ? JSONRPC.request(method: name, params: params, id: id) : XMLRPC.request(method: name, params: params)
        let contentType = wire == .jsonrpc ? "application/json" : "text/xml"
        let http = self.http
        let maxBytes = limits.maxReplyBytes
        // A long-poll (event.from) may stay silent as long as its own timeout.
        let stall = max(limits.stallTimeout, timeout)
        let (head, data) = try await runBlocking {
            try http.fetch(
                HTTPRequest(method: .post, url: url, headers: [("Content-Type", contentType)], timeout: timeout, stallTimeout: stall),
                body: .bytes(body), maxBytes: maxBytes)
        }
        if head.status != 200 {
            let err = XenAPIError(code: "HTTP_\(head.status)", parameters: [name, url])
            if wire == .jsonrpc, head.status == 404 || head.status == 500 { throw WireFallback(underlying: err) }
            throw err
        }
        let outcome: Result<XenValue, XenAPIError>
        do {
            outcome = wire == .jsonrpc ? try JSONRPC.parseResponse(data) : try XMLRPC.parseResponse(data)
        } catch let e as ReplyLimitError {
            // A hostile reply is no sign of an old host: never a reason to switch protocols.
            throw e
        } catch {
            if wire == .jsonrpc { throw WireFallback(underlying: error) }
            throw error
        }
        return try outcome.get()
    }

    /// The event.from call needs a reply timeout longer than its own wait.
    func sendLong(_ method: XenMethod, _ params: [XenValue], timeout: Double) async throws -> XenValue {
        if session == nil { try await login() }
        do {
            return try await send(method, [.string(session ?? "")] + params, timeout: timeout)
        } catch let e as XenAPIError where e.code == XenAPIError.Code.sessionInvalid {
            session = nil
            try await login()
            return try await send(method, [.string(session ?? "")] + params, timeout: timeout)
        }
    }

    /// `get_all_records` of one class: one call, whatever the number of objects.
    public func records<R: XenRecord>(_ type: R.Type) async throws -> [XenRef<R>: R] {
        let v = try await call(XenMethod.getAllRecords(R.className), [])
        var out: [XenRef<R>: R] = [:]
        for (ref, fields) in v.structValue ?? [:] {
            out[XenRef(ref)] = R(fields.structValue ?? [:])
        }
        return out
    }

    public func record<R: XenRecord>(_ ref: XenRef<R>) async throws -> R {
        R(try await call(XenMethod.getRecord(R.className), [ref.value]).structValue ?? [:])
    }

    /// The session reference, for HTTP data paths and NBD export names.
    public func sessionReference() async throws -> String {
        try await ensureSession()
        return session ?? ""
    }
}

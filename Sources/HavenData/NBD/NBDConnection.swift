import CNBD
import Foundation

/// One libnbd connection: many reads in flight (libnbd's asynchronous API), reused for the
/// lifetime of a transfer. Not shared between threads.
///
/// libnbd writes a read's data into the caller's buffer whenever its reply arrives, up to the
/// moment the command completes or the handle is closed (`nbd_shutdown` still reads replies). The
/// owner of the buffers must therefore call `finish()` before letting any of them go; `deinit`
/// closes without waiting when commands are still in flight, never reading another reply.
final class NBDConnection {
    /// nil once closed.
    private var handle: OpaquePointer?
    let endpoint: NBDEndpoint
    let size: Int64
    private var certDirectory: String?

    init(_ endpoint: NBDEndpoint, writable: Bool = false) throws {
        guard let h = nbd_create() else { throw DataError(.nbd, endpoint.description, Self.lastError()) }
        handle = h
        self.endpoint = endpoint
        func check(_ rc: Int32) throws {
            if rc == -1 { throw DataError(.nbd, endpoint.description, Self.lastError()) }
        }
        do {
            try check(nbd_set_export_name(h, endpoint.exportName))
            // xapi-nbd has no structured replies; do not ask.
            try check(nbd_set_request_structured_replies(h, false))
            // Read buffers are always filled by the server's reply (or the read fails): libnbd
            // need not zero each one first.
            try check(nbd_set_pread_initialize(h, false))
            switch endpoint.tls {
            case .off:
                try check(nbd_set_tls(h, Int32(LIBNBD_TLS_DISABLE)))
            case .certificate(let pem):
                let dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-nbd-\(UUID().uuidString)")
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                try pem.write(to: dir.appendingPathComponent("ca-cert.pem"), atomically: true, encoding: .utf8)
                certDirectory = dir.path
                try check(nbd_set_tls(h, Int32(LIBNBD_TLS_REQUIRE)))
                try check(nbd_set_tls_certificates(h, dir.path))
            case .certificateDirectory(let dir):
                try check(nbd_set_tls(h, Int32(LIBNBD_TLS_REQUIRE)))
                try check(nbd_set_tls_certificates(h, dir))
            }
            try check(nbd_connect_tcp(h, endpoint.address, String(endpoint.port)))
            let s = nbd_get_size(h)
            if s < 0 { throw DataError(.nbd, endpoint.description, Self.lastError()) }
            if writable, nbd_is_read_only(h) == 1 {
                throw DataError(.nbd, endpoint.description, "the export is read-only")
            }
            // Last: once every property is set, a throw would also run deinit, closing `h` twice.
            size = s
        } catch {
            nbd_close(h)
            if let d = certDirectory { try? FileManager.default.removeItem(atPath: d) }
            throw error
        }
    }

    deinit {
        finish(drain: false)
        if let d = certDirectory { try? FileManager.default.removeItem(atPath: d) }
    }

    /// Ends the connection so that libnbd never touches a buffer it was given again. With
    /// `drain`, waits (up to `drainSeconds`) for the commands still in flight to complete and
    /// says goodbye to the server; otherwise, or when the connection is broken or slow, closes it
    /// at once (`nbd_close` abandons what is in flight without reading another reply). Idempotent.
    func finish(drain: Bool = true, drainSeconds: Double = 10) {
        guard let h = handle else { return }
        var idle = nbd_aio_in_flight(h) == 0
        if drain && !idle {
            let deadline = Date().addingTimeInterval(drainSeconds)
            // nbd_poll: 1 progress, 0 timed out, -1 the connection failed.
            while nbd_aio_in_flight(h) > 0, Date() < deadline, nbd_poll(h, 1_000) >= 0 {}
            idle = nbd_aio_in_flight(h) == 0
        }
        // A disconnect reads replies to whatever is still in flight: only when nothing is.
        if idle { _ = nbd_shutdown(h, 0) }
        nbd_close(h)
        handle = nil
    }

    /// The open handle; a closed connection fails like a dropped one.
    private func open() throws -> OpaquePointer {
        guard let handle else { throw DataError(.nbd, endpoint.description, "the connection is closed") }
        return handle
    }

    static func lastError() -> String {
        guard let e = nbd_get_error() else { return "unknown libnbd error" }
        return String(cString: e)
    }

    var noCompletion: nbd_completion_callback { nbd_completion_callback(callback: nil, user_data: nil, free: nil) }

    /// Starts a read into `buffer`; returns its cookie.
    func startRead(into buffer: UnsafeMutableRawPointer, count: Int, offset: Int64) throws -> Int64 {
        let cookie = nbd_aio_pread(try open(), buffer, count, UInt64(offset), noCompletion, 0)
        if cookie < 0 { throw DataError(.nbd, endpoint.description, Self.lastError()) }
        return cookie
    }

    func startWrite(from buffer: UnsafeRawPointer, count: Int, offset: Int64) throws -> Int64 {
        let cookie = nbd_aio_pwrite(try open(), buffer, count, UInt64(offset), noCompletion, 0)
        if cookie < 0 { throw DataError(.nbd, endpoint.description, Self.lastError()) }
        return cookie
    }

    /// Waits for any progress on the socket (up to `timeoutMs`).
    func poll(timeoutMs: Int32) throws {
        if nbd_poll(try open(), timeoutMs) == -1 { throw DataError(.nbd, endpoint.description, Self.lastError()) }
    }

    /// 1 done, 0 not yet; throws when the command failed (the cookie is retired either way).
    func completed(_ cookie: Int64) throws -> Bool {
        let rc = nbd_aio_command_completed(try open(), UInt64(cookie))
        if rc == -1 { throw DataError(.nbd, endpoint.description, Self.lastError()) }
        return rc == 1
    }

    func flush() throws {
        let h = try open()
        if nbd_can_flush(h) == 1, nbd_flush(h, 0) == -1 {
            throw DataError(.nbd, endpoint.description, Self.lastError())
        }
    }
}

import CSSL
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One TLS connection over a socket: read some bytes, write all bytes, close. Used by one
/// thread at a time; `abort()` may come from another thread to unblock it.
final class TLSChannel: @unchecked Sendable {
    // @unchecked: the SSL object is used by one thread at a time (the connection's owner);
    // `abort()` only calls shutdown(2) on the descriptor, which is safe from any thread.
    let fd: Int32
    private var conn: OpaquePointer?
    private let closed = Atomic<Bool>(false)

    init(fd: Int32, conn: OpaquePointer) {
        self.fd = fd
        self.conn = conn
    }

    deinit { close() }

    /// Bytes read (> 0), 0 at end of stream, -1 on error.
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        guard let conn, !closed.load(ordering: .relaxed) else { return -1 }
        return haven_tls_read(conn, buffer.baseAddress, buffer.count)
    }

    func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let conn, !closed.load(ordering: .relaxed) else { return false }
        if bytes.isEmpty { return true }
        return haven_tls_write_all(conn, bytes.baseAddress, bytes.count) == 0
    }

    /// Breaks the connection so a blocked read or write returns (cancellation).
    func abort() { shutdown(fd, Int32(SHUT_RDWR)) }

    func close() {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        if let conn { haven_tls_close(conn) }
        conn = nil
        Glibc.close(fd)
    }

    /// SHA-256 of the peer's certificate (client side).
    func peerCertificateSHA256() -> [UInt8]? {
        guard let conn else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        return haven_tls_peer_sha256(conn, &out) == 0 ? out : nil
    }
}

/// The server's TLS context, made from the appliance's certificate and key (PEM in memory).
final class TLSServerIdentity: @unchecked Sendable {
    // @unchecked: an SSL_CTX is immutable after set-up and OpenSSL allows SSL_new from any thread.
    let raw: OpaquePointer

    init(certificatePEM: String, privateKeyPEM: String) throws {
        var error = [CChar](repeating: 0, count: 256)
        guard let ctx = haven_tls_server_new_pem(certificatePEM, privateKeyPEM, &error, error.count) else {
            throw MoverError(.invalidArgument, "mover credentials", cString(error))
        }
        raw = ctx
    }

    deinit { haven_tls_server_free(raw) }

    /// The handshake on an accepted socket; nil when it fails (the socket is closed then).
    func accept(_ fd: Int32) -> TLSChannel? {
        guard let c = haven_tls_accept(raw, fd) else {
            Glibc.close(fd)
            return nil
        }
        return TLSChannel(fd: fd, conn: c)
    }
}

/// The client's TLS context: no chain validation, the certificate pin decides.
final class TLSClientContext: @unchecked Sendable {
    // @unchecked: as TLSServerIdentity, immutable after creation.
    let raw: OpaquePointer

    static let shared: TLSClientContext = {
        var error = [CChar](repeating: 0, count: 256)
        guard let ctx = haven_tls_client_new(&error, error.count) else { fatalError("OpenSSL: \(cString(error))") }
        return TLSClientContext(raw: ctx)
    }()

    private init(raw: OpaquePointer) { self.raw = raw }

    /// Connects, runs the handshake and checks the pin before anything else is sent.
    func connect(host: String, port: Int, pin: CertificatePin, source: String?, timeout: Double, ioTimeout: Double) throws -> TLSChannel {
        let context = "mover \(host):\(port)"
        let fd = try Sockets.connect(host, port, source: source, timeout: timeout)
        Sockets.setTimeout(fd, seconds: timeout)
        var reason: Int32 = 0
        guard let c = haven_tls_connect(raw, fd, &reason) else {
            Glibc.close(fd)
            if reason == ECONNRESET || reason == EPIPE {
                throw MoverError(.connection, context, "it refused the connection (reset before TLS): inbound connections denied?")
            }
            let why = reason == 0 ? "" : ": \(String(cString: strerror(reason)))"
            throw MoverError(.connection, context, "the TLS handshake failed (not a mover?)\(why)")
        }
        let channel = TLSChannel(fd: fd, conn: c)
        guard let seen = channel.peerCertificateSHA256(), seen == pin.sha256 else {
            channel.close()
            throw MoverError(.pinMismatch, context, "the certificate does not match the pinned \(pin)")
        }
        Sockets.setTimeout(fd, seconds: ioTimeout)
        return channel
    }
}

import CSSL
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A connected socket, plain or TLS: read some bytes, write all bytes.
final class ByteChannel {
    let fd: Int32
    private var tls: OpaquePointer?
    private var closed = false

    init(fd: Int32, tls: OpaquePointer?) {
        self.fd = fd
        self.tls = tls
    }

    deinit { close() }

    /// Bytes read (> 0), 0 at end of stream, -1 on error.
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        if let tls { return haven_tls_read(tls, buffer.baseAddress, buffer.count) }
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n < 0, errno == EINTR { continue }
            return n
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if bytes.isEmpty { return true }
        if let tls { return haven_tls_write_all(tls, bytes.baseAddress, bytes.count) == 0 }
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    func write(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { write($0) } }

    func close() {
        guard !closed else { return }
        closed = true
        if let tls {
            haven_tls_close(tls)
            self.tls = nil
        }
        Glibc.close(fd)
    }
}

/// A TLS server context loaded from the host's certificate and key.
final class TLSServerContext: @unchecked Sendable {
    // @unchecked: the OpenSSL SSL_CTX is immutable after creation and OpenSSL documents it as
    // safe to share between threads for SSL_new.
    let raw: OpaquePointer

    init(certificate: String, key: String) throws {
        var error = [CChar](repeating: 0, count: 512)
        guard let ctx = haven_tls_server_new(certificate, key, &error, error.count) else {
            throw SimError("TLS: \(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
        }
        raw = ctx
    }

    deinit { haven_tls_server_free(raw) }
}

/// An error of the simulator itself (not a XenAPI error, which the simulator answers with).
public struct SimError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

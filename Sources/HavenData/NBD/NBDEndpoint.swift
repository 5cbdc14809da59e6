import Foundation

/// Where a disk is read over NBD: an address, a port, an export name, and how TLS is checked.
public struct NBDEndpoint: Sendable, Hashable, CustomStringConvertible {
    public enum TLS: Sendable, Hashable {
        case off
        /// TLS required, trusting this PEM certificate (`VDI.get_nbd_info`'s `cert`) as the anchor.
        case certificate(String)
        /// TLS required, trusting the certificates in this directory (`ca-cert.pem`).
        case certificateDirectory(String)
    }

    public var address: String
    public var port: Int
    public var exportName: String
    public var tls: TLS

    public init(address: String, port: Int = 10809, exportName: String, tls: TLS) {
        self.address = address
        self.port = port
        self.exportName = exportName
        self.tls = tls
    }

    /// The export name hides its session in descriptions and errors.
    public var description: String {
        let shown = exportName.split(separator: "?").first.map(String.init) ?? exportName
        return "nbd\(tls == .off ? "" : "s")://\(address):\(port)/\(shown)"
    }
}

import Foundation

/// The one place the engine meets `haven mover` (module HavenMover): the credentials made for a
/// new appliance and the client haven speaks to it with. Everything else in the engine sees
/// only these values.
struct ApplianceCredentials: Sendable {
    /// `vm-data/haven/…` keys the mover reads its certificate, key and token key from.
    var xenstoreData: [String: String]
    /// The pin of the mover's certificate (not a secret): recorded in the catalog.
    var pin: String
    /// The key haven signs job tokens with: kept only in a 0600 file of the state directory.
    var tokenKey: [UInt8]
}

/// What an appliance's mover says about itself.
public struct MoverIdentity: Sendable, Hashable {
    public var name: String
    public var version: String

    public init(name: String, version: String) {
        self.name = name
        self.version = version
    }
}

enum MoverSeam {
    /// The data port of an appliance.
    static let port = 2811

    /// A check the mover protocol cannot make yet: reported as skipped, with why.
    struct NotOffered: Error {
        var message: String
    }

    // Placeholder until HavenMover lands: no credentials are made and nothing can be identified.
    static func newCredentials(name: String) throws -> ApplianceCredentials {
        ApplianceCredentials(xenstoreData: [:], pin: "", tokenKey: [])
    }

    static func identify(host: String, port: Int, pin: String, tokenKey: [UInt8]) async throws -> MoverIdentity {
        throw EngineError(.connect, "\(host):\(port)", "the mover client is not built into this haven")
    }
}

extension MoverSeam {
    /// Asks the appliance's mover to open a connection back to haven.
    static func probeBack(host: String, port: Int, pin: String, tokenKey: [UInt8]) async throws -> String {
        throw NotOffered(message: "not checked: the mover protocol offers no connection back to haven yet")
    }

    /// Asks the appliance's mover to reach a peer appliance's mover.
    static func probePeer(host: String, port: Int, pin: String, tokenKey: [UInt8], peer: String, peerPin: String) async throws -> String {
        throw NotOffered(message: "not checked: the mover protocol offers no peer probe yet")
    }

    /// What a failed connection means, and what to fix.
    static func explain(_ error: any Error, host: String, port: Int, from: String) -> (String, String?) {
        let text = "\(error)"
        if text.contains("refused") {
            return ("\(host):\(port) refused the connection from \(from): inbound connections to it are denied (a firewall) or its mover does not run",
                    "open TCP \(port) from \(from) to \(host), or use direction: pull where the target site only connects outward")
        }
        return ("\(host):\(port) from \(from): \(text)", "check the network between \(from) and \(host)")
    }
}

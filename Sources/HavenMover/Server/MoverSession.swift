import Foundation

/// One client connection on the server: HELLO with a valid token first, then commands until
/// the client leaves. A command's failure is answered with an ERROR frame; a protocol
/// violation or a broken stream also ends the connection.
final class MoverSession {
    let server: MoverServer
    let conn: FrameConnection
    var config: MoverServerConfiguration { server.configuration }
    private var token: MoverToken?
    /// Set once a stream's READY went out: an error after that leaves the connection unusable.
    var inStream = false

    init(server: MoverServer, conn: FrameConnection) {
        self.server = server
        self.conn = conn
    }

    func run() {
        do {
            try hello()
            Sockets.setTimeout(conn.channel.fd, seconds: config.idleTimeout)
            while true {
                let frame: Frame
                do {
                    frame = try conn.receive()
                } catch let e as MoverError where e.code == .connection {
                    return
                }
                do {
                    inStream = false
                    try handle(frame)
                } catch let e as MoverError where e.code == .connection {
                    return
                } catch let e as MoverError {
                    conn.sendError(e)
                    config.log?("\(conn.context): \(frame.type) failed: \(e.code): \(e.message)")
                    // After a refused command the connection stays usable; after a broken
                    // stream or a bad frame nothing it says can be trusted.
                    if inStream || ![MoverError.Code.forbidden, .noSuchDisk, .outOfRange, .invalidArgument].contains(e.code) { return }
                }
            }
        } catch let e as MoverError {
            if e.code != .connection {
                conn.sendError(e)
                config.log?("\(conn.context): \(e.code): \(e.message)")
            }
        } catch {
            conn.sendError(MoverError(.internal, "", "\(error)"))
        }
    }

    private func hello() throws {
        let f = try conn.receive()
        guard f.type == .hello else { throw MoverError(.unauthorized, "", "the first frame must be HELLO with a token") }
        var r = WireReader(f.payload)
        guard try r.raw(MoverProtocol.magic.count) == MoverProtocol.magic else { throw MoverError(.badFrame, "", "not a mover client") }
        let low = try r.u16()
        let high = try r.u16()
        let text = try r.string(limit: 2048)
        try r.finish()
        guard low <= MoverProtocol.version, high >= MoverProtocol.version else {
            throw MoverError(.unsupportedVersion, "", "this mover speaks version \(MoverProtocol.version), the client \(low)...\(high)")
        }
        do {
            token = try MoverToken.verify(text, key: config.credentials.tokenKey, now: config.now())
        } catch {
            server.record { $0.tokensRefused += 1 }
            throw error
        }
        try conn.send(.welcome) { w in
            w.u16(MoverProtocol.version)
            w.string(config.credentials.name)
        }
    }

    /// The token must still be valid and carry `scope`.
    private func authorize(_ scope: MoverToken.Scope, _ what: String) throws {
        guard let token else { throw MoverError(.unauthorized, "", "no token") }
        guard token.expires > config.now() else { throw MoverError(.unauthorized, "", "the token for job \(token.jobID) expired") }
        guard token.scope.isSuperset(of: scope) else {
            throw MoverError(.forbidden, "", "the token for job \(token.jobID) allows \(token.scope), \(what) needs \(scope)")
        }
    }

    private func handle(_ frame: Frame) throws {
        var r = WireReader(frame.payload)
        switch frame.type {
        case .ack:
            // Late acknowledgements of a stream that has ended.
            return
        case .identify:
            try authorize([], "identify")
            try conn.send(.identity) { w in
                w.string(config.credentials.name)
                w.string(config.softwareVersion)
                w.u16(MoverProtocol.version)
                w.u32(UInt32(MoverProtocol.blockSize))
                w.string("\(config.host):\(server.port)")
            }
        case .listDisks:
            try authorize([], "listing disks")
            let disks = config.devices.list()
            try conn.send(.diskList) { w in
                w.u16(UInt16(min(disks.count, Int(UInt16.max))))
                for d in disks.prefix(Int(UInt16.max)) {
                    w.string(d.name)
                    w.i64(d.size)
                }
            }
        case .read:
            try authorize(.read, "read")
            let request = try StreamRequest.decode(&r)
            try r.finish()
            try serveRead(request)
        case .write:
            try authorize(.write, "write")
            let request = try StreamRequest.decode(&r)
            try r.finish()
            try serveWrite(request)
        case .hash:
            try authorize(.read, "hash")
            let disk = try r.string(limit: 64)
            let range = BlockRange(first: try r.i64(), count: try r.i64())
            let per = Int(try r.u32())
            try r.finish()
            try serveHash(disk: disk, range: range, blocksPerHash: per)
        case .push:
            try authorize(.read, "push")
            let request = try StreamRequest.decode(&r)
            let peer = try PeerRequest.decode(&r)
            try r.finish()
            try servePush(request, peer: peer)
        case .pull:
            try authorize(.write, "pull")
            let request = try StreamRequest.decode(&r)
            let peer = try PeerRequest.decode(&r)
            try r.finish()
            try servePull(request, peer: peer)
        case .probe:
            try authorize([], "probe")
            let host = try r.string(limit: 255)
            let port = Int(try r.u16())
            guard let pin = CertificatePin(sha256: try r.raw(32)) else { throw MoverError(.badFrame, "", "a bad pin") }
            let text = try r.string(limit: 2048)
            try r.finish()
            let peer = try connectPeer(PeerRequest(host: host, port: port, pin: pin, token: text, disk: ""))
            defer { peer.close() }
            let id = try peerCall(peer) { try $0.identify() }
            try conn.send(.identity) { w in
                w.string(id.name)
                w.string(id.softwareVersion)
                w.u16(id.protocolVersion)
                w.u32(UInt32(id.blockSize))
                w.string(id.address)
            }
        default:
            throw MoverError(.badFrame, "", "\(frame.type) is not a command")
        }
    }
}

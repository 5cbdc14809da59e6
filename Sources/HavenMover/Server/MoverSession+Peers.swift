import Foundation

/// PUSH, PULL and PROBE: the mover connects to another one, from its own address.
extension MoverSession {
    func connectPeer(_ peer: PeerRequest) throws -> MoverConnection {
        var options = MoverClient.Options()
        options.sourceAddress = config.host == "0.0.0.0" ? nil : config.host
        options.connectTimeout = 10
        options.ioTimeout = config.idleTimeout
        let endpoint = MoverEndpoint(host: peer.host, port: peer.port, pin: peer.pin)
        do {
            return try MoverConnection.open(endpoint, token: peer.token, options: options)
        } catch let e as MoverError {
            throw peerError(e, endpoint)
        }
    }

    func peerError(_ e: MoverError, _ endpoint: MoverEndpoint) -> MoverError {
        if [.peerFailed, .peerUnreachable].contains(e.code) { return e }
        let reachable = ![.connection, .pinMismatch].contains(e.code)
        return MoverError(reachable ? .peerFailed : .peerUnreachable, "", "peer \(endpoint.host):\(endpoint.port): \(e.code): \(e.message)")
    }

    /// Runs a call on the peer connection, naming the peer in its errors.
    func peerCall<T>(_ peer: MoverConnection, _ body: (MoverConnection) throws -> T) throws -> T {
        do {
            return try body(peer)
        } catch let e as MoverError {
            throw peerError(e, peer.endpoint)
        }
    }

    func servePush(_ request: StreamRequest, peer: PeerRequest) throws {
        let device = try open(request, writable: false)
        let window = window(request.window)
        let target = try connectPeer(peer)
        defer { target.close() }
        try sendReady(window)
        let forward = StreamRequest(disk: peer.disk, range: request.range, window: window, bitmap: request.bitmap, targetZeroed: request.targetZeroed)
        var clientGone: MoverError?
        let sent: TransferSummary
        do {
            sent = try target.write(forward, produce: produce(device)) { [conn] upTo in
                guard clientGone == nil else { return }
                do {
                    try conn.send(.progress) { $0.i64(upTo) }
                } catch let e as MoverError {
                    clientGone = e
                    target.conn.abort()
                } catch {}
            }
        } catch let e as MoverError {
            if let clientGone { throw clientGone }
            throw peerError(e, target.endpoint)
        }
        try conn.send(.end) { BlockStream.encodeEnd(sent, into: &$0) }
    }

    func servePull(_ request: StreamRequest, peer: PeerRequest) throws {
        let device = try open(request, writable: true)
        let window = window(request.window)
        let source = try connectPeer(peer)
        defer { source.close() }
        try sendReady(window)
        let writer = TrackedWriter(device: device, observer: config.writeObserver)
        let fetch = StreamRequest(disk: peer.disk, range: request.range, window: window, bitmap: request.bitmap)
        var localFailure: MoverError?
        var clientGone: MoverError?
        let got: TransferSummary
        do {
            try source.conn.send(.read) { fetch.encode(into: &$0) }
            var r = try source.conn.expect(.ready)
            let granted = Int(try r.u32())
            got = try BlockStream.receive(source.conn, range: request.range, window: granted, consume: { index, bytes in
                do {
                    if bytes == nil, request.targetZeroed { return }
                    try writer.write(index, bytes)
                } catch let e as MoverError {
                    localFailure = e
                    throw e
                }
            }, beforeAck: {
                do { try writer.flush() } catch let e as MoverError {
                    localFailure = e
                    throw e
                }
            }, acked: { [conn] last, _ in
                do {
                    try conn.send(.progress) { $0.i64(last) }
                } catch let e as MoverError {
                    clientGone = e
                    throw e
                }
            })
        } catch let e as MoverError {
            if let clientGone { throw clientGone }
            if let localFailure { throw localFailure }
            throw peerError(e, source.endpoint)
        }
        try writer.flush()
        try device.sync()
        try conn.send(.end) { BlockStream.encodeEnd(got, into: &$0) }
    }
}

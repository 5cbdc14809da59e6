import Foundation

/// One authenticated connection to a mover, used by one thread: the blocking core of
/// `MoverClient`, and what a mover uses to reach its peer.
final class MoverConnection {
    let conn: FrameConnection
    let endpoint: MoverEndpoint
    let version: UInt16
    let peerName: String

    private init(conn: FrameConnection, endpoint: MoverEndpoint, version: UInt16, peerName: String) {
        self.conn = conn
        self.endpoint = endpoint
        self.version = version
        self.peerName = peerName
    }

    /// Connects, checks the certificate pin, then presents the token.
    static func open(_ endpoint: MoverEndpoint, token: String, options: MoverClient.Options, cancel: CancelHook? = nil) throws -> MoverConnection {
        let channel = try TLSClientContext.shared.connect(
            host: endpoint.host, port: endpoint.port, pin: endpoint.pin, source: options.sourceAddress, timeout: options.connectTimeout,
            ioTimeout: options.ioTimeout)
        let conn = FrameConnection(channel, context: "mover \(endpoint.host):\(endpoint.port)")
        cancel?.attach(conn)
        do {
            try conn.send(.hello) { w in
                w.raw(MoverProtocol.magic)
                w.u16(1)
                w.u16(MoverProtocol.version)
                w.string(token)
            }
            var r = try conn.expect(.welcome)
            let version = try r.u16()
            let name = try r.string()
            return MoverConnection(conn: conn, endpoint: endpoint, version: version, peerName: name)
        } catch {
            conn.close()
            throw error
        }
    }

    func close() { conn.close() }

    func identify() throws -> MoverIdentity {
        try conn.send(.identify)
        var r = try conn.expect(.identity)
        let id = MoverIdentity(
            name: try r.string(), softwareVersion: try r.string(), protocolVersion: try r.u16(), blockSize: Int(try r.u32()),
            address: try r.string())
        return id
    }

    func probe(_ peer: PeerRequest) throws -> MoverIdentity {
        try conn.send(.probe) { w in
            w.string(peer.host)
            w.u16(UInt16(peer.port))
            w.raw(peer.pin.sha256)
            w.string(peer.token)
        }
        var r = try conn.expect(.identity)
        return MoverIdentity(
            name: try r.string(), softwareVersion: try r.string(), protocolVersion: try r.u16(), blockSize: Int(try r.u32()),
            address: try r.string())
    }

    func disks() throws -> [MoverDisk] {
        try conn.send(.listDisks)
        var r = try conn.expect(.diskList)
        let n = Int(try r.u16())
        var out: [MoverDisk] = []
        for _ in 0..<n { out.append(MoverDisk(name: try r.string(), size: try r.i64())) }
        return out
    }

    func read(_ request: StreamRequest, consume: BlockConsumer) throws -> TransferSummary {
        try conn.send(.read) { request.encode(into: &$0) }
        var r = try conn.expect(.ready)
        let window = Int(try r.u32())
        return try BlockStream.receive(conn, range: request.range, window: window, consume: consume)
    }

    func write(_ request: StreamRequest, produce: BlockProducer, acked: ((Int64) -> Void)? = nil) throws -> TransferSummary {
        try conn.send(.write) { request.encode(into: &$0) }
        var r = try conn.expect(.ready)
        let window = max(1, Int(try r.u32()))
        var sent = try BlockStream.send(conn, selection: request.selection, window: window, skipZeros: request.targetZeroed, produce: produce, acked: acked)
        try conn.send(.endWrite)
        while true {
            let f = try conn.receive()
            switch f.type {
            case .ack:
                var a = WireReader(f.payload)
                let upTo = try a.i64()
                sent.lastAcknowledged = max(sent.lastAcknowledged, upTo)
                acked?(upTo)
            case .end:
                var e = WireReader(f.payload)
                let done = try BlockStream.decodeEnd(&e)
                sent.lastAcknowledged = max(sent.lastAcknowledged, done.lastAcknowledged)
                guard done.blocks == sent.blocks else {
                    throw MoverError(.internal, conn.context, "sent \(sent.blocks) blocks, the mover wrote \(done.blocks)")
                }
                return sent
            case .error: throw conn.decodeError(f.payload)
            default: throw MoverError(.badFrame, conn.context, "expected ack or end, got \(f.type)")
            }
        }
    }

    func hashes(disk: String, range: BlockRange, blocksPerHash: Int) throws -> [RangeHash] {
        try conn.send(.hash) { w in
            w.string(disk)
            w.i64(range.first)
            w.i64(range.count)
            w.u32(UInt32(blocksPerHash))
        }
        _ = try conn.expect(.ready)
        var out: [RangeHash] = []
        while true {
            let f = try conn.receive()
            switch f.type {
            case .hashes:
                var r = WireReader(f.payload)
                var start = try r.i64()
                let per = Int64(try r.u32())
                let n = Int(try r.u32())
                guard per > 0, n <= MoverProtocol.hashesPerFrame else { throw MoverError(.badFrame, conn.context, "a bad hashes frame") }
                for _ in 0..<n {
                    let count = min(per, range.end - start)
                    guard count > 0 else { throw MoverError(.badFrame, conn.context, "hashes beyond \(range)") }
                    out.append(RangeHash(range: BlockRange(first: start, count: count), sha256: try r.raw(32)))
                    start += count
                }
                try r.finish()
            case .end: return out
            case .error: throw conn.decodeError(f.payload)
            default: throw MoverError(.badFrame, conn.context, "expected hashes, got \(f.type)")
            }
        }
    }

    /// PUSH or PULL: the mover does the transfer with its peer and reports progress.
    func relay(_ type: FrameType, _ request: StreamRequest, peer: PeerRequest, progress: (Int64) -> Void) throws -> TransferSummary {
        try conn.send(type) { w in
            request.encode(into: &w)
            peer.encode(into: &w)
        }
        _ = try conn.expect(.ready)
        var last: Int64 = -1
        while true {
            let f = try conn.receive()
            switch f.type {
            case .progress:
                var r = WireReader(f.payload)
                last = max(last, try r.i64())
                progress(last)
            case .end:
                var r = WireReader(f.payload)
                var s = try BlockStream.decodeEnd(&r)
                s.lastAcknowledged = max(s.lastAcknowledged, last)
                return s
            case .error: throw conn.decodeError(f.payload)
            default: throw MoverError(.badFrame, conn.context, "expected progress or end, got \(f.type)")
            }
        }
    }
}

/// Lets a cancelled task break the connection its thread is blocked on.
final class CancelHook: @unchecked Sendable {
    // @unchecked: `current` and `cancelled` are only touched under `lock`.
    private let lock = NSLock()
    private var current: FrameConnection?
    private var cancelled = false

    func attach(_ conn: FrameConnection) {
        lock.lock()
        current = conn
        let stop = cancelled
        lock.unlock()
        if stop { conn.abort() }
    }

    func cancel() {
        lock.lock()
        cancelled = true
        let c = current
        lock.unlock()
        c?.abort()
    }

    var isCancelled: Bool {
        lock.lock()
        defer { lock.unlock() }
        return cancelled
    }
}

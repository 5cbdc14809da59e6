import Crypto
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
    private var inStream = false

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
                    // After a refused command the connection stays usable; after a broken
                    // stream or a bad frame nothing it says can be trusted.
                    if inStream || ![MoverError.Code.forbidden, .noSuchDisk, .outOfRange, .invalidArgument].contains(e.code) { return }
                }
            }
        } catch let e as MoverError {
            if e.code != .connection { conn.sendError(e) }
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
                w.string("\(config.host):\(config.port)")
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

    // MARK: streams

    private func open(_ request: StreamRequest, writable: Bool) throws -> BlockDevice {
        let device = try config.devices.open(request.disk, writable: writable)
        guard request.range.end <= device.blockCount else {
            throw MoverError(.outOfRange, "disk \(request.disk)", "\(request.range) is beyond the disk's \(device.blockCount) blocks")
        }
        return device
    }

    private func sendReady(_ window: Int) throws {
        try conn.send(.ready) { $0.u32(UInt32(window)) }
        inStream = true
    }

    private func window(_ asked: Int) -> Int { min(max(1, asked), config.maxWindow) }

    private func produce(_ device: BlockDevice) -> BlockProducer {
        { index, buffer in
            let n = try device.read(index, into: buffer)
            return UnsafeRawBufferPointer(rebasing: buffer[0..<n]).isAllZero ? nil : n
        }
    }

    private func serveRead(_ request: StreamRequest) throws {
        let device = try open(request, writable: false)
        let window = window(request.window)
        try sendReady(window)
        let sent = try BlockStream.send(
            conn, selection: request.selection, window: window, skipZeros: false, produce: produce(device),
            inFlightPeak: { n in self.server.record { $0.peakInFlight = max($0.peakInFlight, n) } })
        try conn.send(.end) { BlockStream.encodeEnd(sent, into: &$0) }
    }

    private func serveWrite(_ request: StreamRequest) throws {
        let device = try open(request, writable: true)
        let window = window(request.window)
        try sendReady(window)
        let writer = TrackedWriter(device: device, observer: config.writeObserver)
        let ackEvery = max(1, window / 2)
        var summary = TransferSummary()
        var last = request.range.first - 1
        var unacked = 0
        func ack() throws {
            try writer.flush()
            try conn.send(.ack) { $0.i64(last) }
            summary.lastAcknowledged = last
            unacked = 0
        }
        while true {
            let f = try conn.receive()
            switch f.type {
            case .block:
                guard f.payload.count >= 9 else { throw MoverError(.badFrame, "", "a short block frame") }
                var h = WireReader(Array(f.payload[0..<9]))
                let index = try h.i64()
                let kind = try h.u8()
                guard index > last, request.selects(index) else {
                    throw MoverError(.outOfRange, "disk \(request.disk)", "block \(index) is out of order or outside \(request.range)")
                }
                guard kind == 0 || (kind == 1 && f.payload.count == 9) else { throw MoverError(.badFrame, "", "block \(index): bad kind") }
                if kind == 1 {
                    try writer.write(index, nil)
                    summary.zeroBlocks += 1
                } else {
                    try f.payload.withUnsafeBytes { try writer.write(index, UnsafeRawBufferPointer(rebasing: $0[9...])) }
                    summary.bytes += Int64(f.payload.count - 9)
                }
                summary.blocks += 1
                last = index
                unacked += 1
                if unacked >= ackEvery { try ack() }
            case .endWrite:
                try writer.flush()
                try device.sync()
                if unacked > 0 { try ack() }
                summary.lastAcknowledged = last
                try conn.send(.end) { BlockStream.encodeEnd(summary, into: &$0) }
                return
            default:
                throw MoverError(.badFrame, "", "expected a block or the end of the write, got \(f.type)")
            }
        }
    }

    private func serveHash(disk: String, range: BlockRange, blocksPerHash: Int) throws {
        guard (1...4096).contains(blocksPerHash) else { throw MoverError(.invalidArgument, "disk \(disk)", "blocks per hash must be 1...4096") }
        guard range.first >= 0, range.count >= 0 else { throw MoverError(.outOfRange, "disk \(disk)", "a negative range") }
        let device = try open(StreamRequest(disk: disk, range: range, window: 1), writable: false)
        try sendReady(0)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: MoverProtocol.blockSize, alignment: 4096)
        defer { buffer.deallocate() }
        var batch = WireWriter(capacity: 32 * MoverProtocol.hashesPerFrame + 16)
        var batchStart: Int64 = range.first
        var inBatch = 0
        func flush() throws {
            guard inBatch > 0 else { return }
            var w = WireWriter(capacity: batch.bytes.count + 16)
            w.i64(batchStart)
            w.u32(UInt32(blocksPerHash))
            w.u32(UInt32(inBatch))
            w.raw(batch.bytes)
            try conn.send(.hashes, w.bytes)
            batch = WireWriter(capacity: 32 * MoverProtocol.hashesPerFrame + 16)
            inBatch = 0
        }
        var start = range.first
        while start < range.end {
            if inBatch == 0 { batchStart = start }
            let count = min(Int64(blocksPerHash), range.end - start)
            var hasher = SHA256Stream()
            for index in start..<(start + count) {
                let n = try device.read(index, into: buffer)
                hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            }
            batch.raw(hasher.finish())
            inBatch += 1
            if inBatch == MoverProtocol.hashesPerFrame { try flush() }
            start += count
        }
        try flush()
        try conn.send(.end) { BlockStream.encodeEnd(TransferSummary(), into: &$0) }
    }

    // MARK: push and pull

    private func connectPeer(_ peer: PeerRequest) throws -> MoverConnection {
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

    private func peerError(_ e: MoverError, _ endpoint: MoverEndpoint) -> MoverError {
        if [.peerFailed, .peerUnreachable].contains(e.code) { return e }
        let reachable = ![.connection, .pinMismatch].contains(e.code)
        return MoverError(reachable ? .peerFailed : .peerUnreachable, "", "peer \(endpoint.host):\(endpoint.port): \(e.code): \(e.message)")
    }

    /// Runs a call on the peer connection, naming the peer in its errors.
    private func peerCall<T>(_ peer: MoverConnection, _ body: (MoverConnection) throws -> T) throws -> T {
        do {
            return try body(peer)
        } catch let e as MoverError {
            throw peerError(e, peer.endpoint)
        }
    }

    private func servePush(_ request: StreamRequest, peer: PeerRequest) throws {
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

    private func servePull(_ request: StreamRequest, peer: PeerRequest) throws {
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
        var summary = got
        summary.lastAcknowledged = got.lastAcknowledged
        try conn.send(.end) { BlockStream.encodeEnd(summary, into: &$0) }
    }
}

/// Writes blocks and tells the observer which, in runs, before each acknowledgement.
final class TrackedWriter {
    let device: BlockDevice
    let observer: (any MoverWriteObserver)?
    private var run: BlockRange?

    init(device: BlockDevice, observer: (any MoverWriteObserver)?) {
        self.device = device
        self.observer = observer
    }

    func write(_ index: Int64, _ bytes: UnsafeRawBufferPointer?) throws {
        try device.write(index, bytes)
        guard observer != nil else { return }
        if let r = run, r.end == index {
            run = BlockRange(first: r.first, count: r.count + 1)
        } else {
            try flush()
            run = BlockRange(first: index, count: 1)
        }
    }

    func flush() throws {
        guard let r = run, let observer else { return }
        run = nil
        try observer.wrote(disk: device.name, blocks: r)
    }
}

/// SHA-256 over several buffers.
struct SHA256Stream {
    private var hasher = Crypto.SHA256()
    mutating func update(_ bytes: UnsafeRawBufferPointer) { hasher.update(bufferPointer: bytes) }
    func finish() -> [UInt8] { Array(hasher.finalize()) }
}

import Foundation

/// Where a mover listens and the certificate it must present.
public struct MoverEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var pin: CertificatePin

    public init(host: String, port: Int = MoverProtocol.defaultPort, pin: CertificatePin) {
        self.host = host
        self.port = port
        self.pin = pin
    }

    public var description: String { "mover \(host):\(port)" }
}

/// The other mover of a push or pull: where it is, the token haven issued for it, and its disk.
public struct MoverPeer: Sendable {
    public var endpoint: MoverEndpoint
    public var token: MoverToken
    public var disk: String

    public init(endpoint: MoverEndpoint, token: MoverToken, disk: String) {
        self.endpoint = endpoint
        self.token = token
        self.disk = disk
    }
}

/// haven's side of the mover protocol. Every call opens its own TLS connection (pin checked
/// before the token is sent), and streams go on from the last acknowledged block when the
/// connection breaks (`Options.resumeAttempts` times). The async calls run the blocking I/O on a
/// thread of their own; the `…Blocking` variants are for callers already on such a thread.
public final class MoverClient: Sendable {
    public struct Options: Sendable {
        /// Blocks in flight per stream (the server may grant fewer).
        public var window = 16
        /// How many times a broken stream is taken up again from its last acknowledged block.
        public var resumeAttempts = 3
        public var connectTimeout: Double = 10
        /// A read or write that waits longer fails (a peer gone silent).
        public var ioTimeout: Double = 300
        /// The local address outbound connections leave from (an appliance's own).
        public var sourceAddress: String?

        public init() {}
    }

    public let endpoint: MoverEndpoint
    public let token: MoverToken
    public let options: Options

    public init(endpoint: MoverEndpoint, token: MoverToken, options: Options = Options()) {
        self.endpoint = endpoint
        self.token = token
        self.options = options
    }

    // MARK: async

    public func identify() async throws -> MoverIdentity { try await run { hook in try self.identifyBlocking(hook) } }

    public func disks() async throws -> [MoverDisk] { try await run { hook in try self.disksBlocking(hook) } }

    /// Reads the blocks of `disk` in `range` (default: the whole disk), or only those set in
    /// `bitmap`, in ascending order; `sink` gets each exactly once, even across resumes.
    public func readBlocks(
        disk: String, range: BlockRange? = nil, bitmap: ChangedBlocks? = nil, into sink: @escaping @Sendable (MoverBlock) throws -> Void
    ) async throws -> TransferSummary {
        try await run { hook in try self.readBlocksBlocking(disk: disk, range: range, bitmap: bitmap, hook: hook, into: sink) }
    }

    /// Writes blocks of `range` (or those set in `bitmap`) to `disk`: `source` gives each
    /// block's bytes (64 KiB; the last block of the disk may be shorter), or nil for zeros. With
    /// `targetIsZeroed`, zero blocks are not sent at all.
    public func writeBlocks(
        disk: String, range: BlockRange? = nil, bitmap: ChangedBlocks? = nil, targetIsZeroed: Bool = false,
        from source: @escaping @Sendable (Int64) throws -> [UInt8]?
    ) async throws -> TransferSummary {
        try await run { hook in
            try self.writeBlocksBlocking(disk: disk, range: range, bitmap: bitmap, targetIsZeroed: targetIsZeroed, hook: hook, from: source)
        }
    }

    /// SHA-256 of each run of `blocksPerHash` blocks of `range` (the last run may be shorter).
    public func hashRanges(disk: String, range: BlockRange? = nil, blocksPerHash: Int = 16) async throws -> [RangeHash] {
        try await run { hook in try self.hashRangesBlocking(disk: disk, range: range, blocksPerHash: blocksPerHash, hook: hook) }
    }

    /// This mover sends its disk's blocks to `peer`'s disk (the peer must accept inbound
    /// connections). `progress` gets the last block the peer acknowledged.
    public func push(
        disk: String, range: BlockRange? = nil, bitmap: ChangedBlocks? = nil, to peer: MoverPeer, targetIsZeroed: Bool = false,
        progress: (@Sendable (Int64) -> Void)? = nil
    ) async throws -> TransferSummary {
        try await run { hook in
            try self.relayBlocking(.push, disk: disk, range: range, bitmap: bitmap, peer: peer, targetIsZeroed: targetIsZeroed, hook: hook, progress: progress)
        }
    }

    /// This mover fetches `peer`'s disk's blocks into its own disk (only this mover connects
    /// out). `progress` gets the last block written here.
    public func pull(
        disk: String, range: BlockRange? = nil, bitmap: ChangedBlocks? = nil, from peer: MoverPeer, targetIsZeroed: Bool = false,
        progress: (@Sendable (Int64) -> Void)? = nil
    ) async throws -> TransferSummary {
        try await run { hook in
            try self.relayBlocking(.pull, disk: disk, range: range, bitmap: bitmap, peer: peer, targetIsZeroed: targetIsZeroed, hook: hook, progress: progress)
        }
    }

    /// Asks this mover to connect to `peer` and identify it: whether the two appliances can talk
    /// in that direction (diagnostics). `peer.disk` is not used.
    public func probe(_ peer: MoverPeer) async throws -> MoverIdentity {
        try await run { hook in try self.probeBlocking(peer, hook: hook) }
    }

    // MARK: blocking

    public func probeBlocking(_ peer: MoverPeer) throws -> MoverIdentity { try probeBlocking(peer, hook: nil) }

    func probeBlocking(_ peer: MoverPeer, hook: CancelHook?) throws -> MoverIdentity {
        let c = try MoverConnection.open(endpoint, token: token.text, options: options, cancel: hook)
        defer { c.close() }
        return try c.probe(PeerRequest(host: peer.endpoint.host, port: peer.endpoint.port, pin: peer.endpoint.pin, token: peer.token.text, disk: ""))
    }

    public func identifyBlocking() throws -> MoverIdentity { try identifyBlocking(nil) }
    public func disksBlocking() throws -> [MoverDisk] { try disksBlocking(nil) }

    func identifyBlocking(_ hook: CancelHook?) throws -> MoverIdentity {
        let c = try MoverConnection.open(endpoint, token: token.text, options: options, cancel: hook)
        defer { c.close() }
        return try c.identify()
    }

    func disksBlocking(_ hook: CancelHook?) throws -> [MoverDisk] {
        let c = try MoverConnection.open(endpoint, token: token.text, options: options, cancel: hook)
        defer { c.close() }
        return try c.disks()
    }

    public func readBlocksBlocking(
        disk: String, range: BlockRange? = nil, bitmap: ChangedBlocks? = nil, into sink: (MoverBlock) throws -> Void
    ) throws -> TransferSummary {
        try readBlocksBlocking(disk: disk, range: range, bitmap: bitmap, hook: nil, into: sink)
    }

    func readBlocksBlocking(
        disk: String, range: BlockRange?, bitmap: ChangedBlocks?, hook: CancelHook?, into sink: (MoverBlock) throws -> Void
    ) throws -> TransferSummary {
        var total = TransferSummary()
        var lastConsumed: Int64 = -1
        var resumes = 0
        try resumable(disk: disk, range: range, hook: hook, lastDone: { lastConsumed }) { c, part in
            for piece in Self.pieces(part, bitmap: bitmap) {
                let request = StreamRequest(disk: disk, range: piece, window: options.window, bitmap: bitmap?.slice(piece))
                _ = try c.read(request) { index, bytes in
                    try sink(bytes.map { MoverBlock(index: index, bytes: Array($0)) } ?? MoverBlock(zeroBlock: index))
                    lastConsumed = index
                    total.blocks += 1
                    if let bytes { total.bytes += Int64(bytes.count) } else { total.zeroBlocks += 1 }
                }
            }
        } resumed: { resumes += 1 }
        total.resumes = resumes
        total.lastAcknowledged = lastConsumed
        return total
    }

    public func writeBlocksBlocking(
        disk: String, range: BlockRange? = nil, bitmap: ChangedBlocks? = nil, targetIsZeroed: Bool = false, from source: (Int64) throws -> [UInt8]?
    ) throws -> TransferSummary {
        try writeBlocksBlocking(disk: disk, range: range, bitmap: bitmap, targetIsZeroed: targetIsZeroed, hook: nil, from: source)
    }

    func writeBlocksBlocking(
        disk: String, range: BlockRange?, bitmap: ChangedBlocks?, targetIsZeroed: Bool, hook: CancelHook?, from source: (Int64) throws -> [UInt8]?
    ) throws -> TransferSummary {
        var total = TransferSummary()
        var lastAcked: Int64 = -1
        var resumes = 0
        try resumable(disk: disk, range: range, hook: hook, lastDone: { lastAcked }) { c, part in
            for piece in Self.pieces(part, bitmap: bitmap) {
                let request = StreamRequest(disk: disk, range: piece, window: options.window, bitmap: bitmap?.slice(piece), targetZeroed: targetIsZeroed)
                let s = try c.write(request, produce: { index, buffer in
                    guard let bytes = try source(index) else { return nil }
                    guard bytes.count <= buffer.count else {
                        throw MoverError(.invalidArgument, "disk \(disk)", "block \(index) has \(bytes.count) bytes, more than a block")
                    }
                    bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
                    return bytes.count
                }, acked: { lastAcked = max(lastAcked, $0) })
                total.blocks += s.blocks
                total.zeroBlocks += s.zeroBlocks
                total.bytes += s.bytes
            }
        } resumed: { resumes += 1 }
        total.resumes = resumes
        total.lastAcknowledged = lastAcked
        return total
    }

    public func hashRangesBlocking(disk: String, range: BlockRange? = nil, blocksPerHash: Int = 16) throws -> [RangeHash] {
        try hashRangesBlocking(disk: disk, range: range, blocksPerHash: blocksPerHash, hook: nil)
    }

    func hashRangesBlocking(disk: String, range: BlockRange?, blocksPerHash: Int, hook: CancelHook?) throws -> [RangeHash] {
        guard (1...4096).contains(blocksPerHash) else {
            throw MoverError(.invalidArgument, "disk \(disk)", "blocksPerHash must be 1...4096, not \(blocksPerHash)")
        }
        var out: [RangeHash] = []
        // Runs arrive whole, so a resumed request starts where the last complete run ended and
        // the runs line up with those of an unbroken one.
        try resumable(disk: disk, range: range, hook: hook, lastDone: { out.last.map { $0.range.end - 1 } ?? -1 }) { c, part in
            out += try c.hashes(disk: disk, range: part, blocksPerHash: blocksPerHash)
        } resumed: {}
        return out
    }

    public func pushBlocking(
        disk: String, range: BlockRange? = nil, bitmap: ChangedBlocks? = nil, to peer: MoverPeer, targetIsZeroed: Bool = false,
        progress: ((Int64) -> Void)? = nil
    ) throws -> TransferSummary {
        try relayBlocking(.push, disk: disk, range: range, bitmap: bitmap, peer: peer, targetIsZeroed: targetIsZeroed, hook: nil, progress: progress)
    }

    public func pullBlocking(
        disk: String, range: BlockRange? = nil, bitmap: ChangedBlocks? = nil, from peer: MoverPeer, targetIsZeroed: Bool = false,
        progress: ((Int64) -> Void)? = nil
    ) throws -> TransferSummary {
        try relayBlocking(.pull, disk: disk, range: range, bitmap: bitmap, peer: peer, targetIsZeroed: targetIsZeroed, hook: nil, progress: progress)
    }

    func relayBlocking(
        _ type: FrameType, disk: String, range: BlockRange?, bitmap: ChangedBlocks?, peer: MoverPeer, targetIsZeroed: Bool, hook: CancelHook?,
        progress: ((Int64) -> Void)?
    ) throws -> TransferSummary {
        var total = TransferSummary()
        var lastAcked: Int64 = -1
        var resumes = 0
        let peerRequest = PeerRequest(host: peer.endpoint.host, port: peer.endpoint.port, pin: peer.endpoint.pin, token: peer.token.text, disk: peer.disk)
        // The range is the source's: this mover's disk for a push, the peer's for a pull.
        try resumable(disk: disk, range: range, hook: hook, lastDone: { lastAcked }, sizeFrom: type == .pull ? peer : nil) { c, part in
            for piece in Self.pieces(part, bitmap: bitmap) {
                let request = StreamRequest(disk: disk, range: piece, window: options.window, bitmap: bitmap?.slice(piece), targetZeroed: targetIsZeroed)
                let s = try c.relay(type, request, peer: peerRequest) { last in
                    lastAcked = max(lastAcked, last)
                    progress?(last)
                }
                lastAcked = max(lastAcked, s.lastAcknowledged)
                total.blocks += s.blocks
                total.zeroBlocks += s.zeroBlocks
                total.bytes += s.bytes
            }
        } resumed: { resumes += 1 }
        total.resumes = resumes
        total.lastAcknowledged = lastAcked
        return total
    }

    // MARK: plumbing

    /// Splits a range so that each request's bitmap fits in one frame.
    static func pieces(_ range: BlockRange, bitmap: ChangedBlocks?) -> [BlockRange] {
        guard bitmap != nil, range.count > MoverProtocol.maxBitmapBlocks else { return [range] }
        var out: [BlockRange] = []
        var first = range.first
        while first < range.end {
            let n = min(MoverProtocol.maxBitmapBlocks, range.end - first)
            out.append(BlockRange(first: first, count: n))
            first += n
        }
        return out
    }

    /// Runs `body` over the range (the whole disk when nil), and after a broken connection
    /// again from the block after `lastDone()`, at most `resumeAttempts` times.
    private func resumable(
        disk: String, range: BlockRange?, hook: CancelHook?, lastDone: () -> Int64, sizeFrom peer: MoverPeer? = nil,
        _ body: (MoverConnection, BlockRange) throws -> Void, resumed: () -> Void
    ) throws {
        var full = range
        var attempt = 0
        while true {
            do {
                let c = try MoverConnection.open(endpoint, token: token.text, options: options, cancel: hook)
                defer { c.close() }
                if full == nil {
                    full = try diskRange(disk, on: c, peer: peer)
                }
                let part = full!.from(lastDone() + 1)
                if part.count == 0, attempt > 0 { return }
                try body(c, part)
                return
            } catch let e as MoverError {
                if hook?.isCancelled == true { throw MoverError(.cancelled, endpoint.description, "the transfer was cancelled") }
                guard [.connection, .peerUnreachable].contains(e.code), attempt < options.resumeAttempts, full != nil else { throw e }
                attempt += 1
                resumed()
                Thread.sleep(forTimeInterval: min(2, 0.1 * Double(1 << attempt)))
            }
        }
    }

    /// The whole of `disk`: asked of this mover, or of the peer for a pull.
    private func diskRange(_ disk: String, on c: MoverConnection, peer: MoverPeer?) throws -> BlockRange {
        let (list, name, context): ([MoverDisk], String, String)
        if let peer {
            let p = try MoverConnection.open(peer.endpoint, token: peer.token.text, options: options)
            defer { p.close() }
            (list, name, context) = (try p.disks(), peer.disk, peer.endpoint.description)
        } else {
            (list, name, context) = (try c.disks(), disk, endpoint.description)
        }
        guard let d = list.first(where: { $0.name == name }) else {
            throw MoverError(.noSuchDisk, "\(context) disk \(name)", "no such disk is attached")
        }
        return BlockRange(diskSize: d.size)
    }

    private func run<T: Sendable>(_ body: @escaping @Sendable (CancelHook) throws -> T) async throws -> T {
        let hook = CancelHook()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let thread = Thread {
                    continuation.resume(with: Result { try body(hook) })
                }
                thread.stackSize = 1 << 20
                thread.start()
            }
        } onCancel: {
            hook.cancel()
        }
    }
}

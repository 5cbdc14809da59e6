import Foundation

/// What to read for one chunk: the chunk's index and the ranges of the disk within it (all of
/// it for a full read, the changed blocks for an incremental one).
public struct ReadJob: Sendable {
    public var chunk: Int
    public var ranges: [ByteRange]
    public var bytes: Int { ranges.reduce(0) { $0 + $1.length } }

    public init(chunk: Int, ranges: [ByteRange]) {
        self.chunk = chunk
        self.ranges = ranges
    }
}

/// A readable disk. `read` fills, for each job, a chunk-sized buffer (the job's ranges at their
/// offsets within the chunk) and hands it to `deliver`, from several threads at once; `deliver`
/// may keep the buffer (it is the caller's from then on).
public protocol DiskSource: Sendable {
    var size: Int64 { get }
    var label: String { get }
    func read(_ jobs: [ReadJob], buffers: BufferPool, deliver: @escaping @Sendable (ReadJob, ChunkBuffer) throws -> Void) throws
    /// True for a source that itself knows what changed since a base (a VHD delta): it ignores
    /// the jobs and delivers only the changed ranges.
    var deliversChangesOnly: Bool { get }
}

extension DiskSource {
    public var deliversChangesOnly: Bool { false }
}

/// A chunk-sized buffer handed between threads; freed when the last owner lets go.
public final class ChunkBuffer: @unchecked Sendable {
    // @unchecked: a buffer is filled by one reader thread, then handed over through a queue to
    // one worker thread; never touched by two threads at once.
    public let memory: UnsafeMutableRawBufferPointer

    public init(size: Int) {
        memory = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
    }

    deinit { memory.deallocate() }
}

/// A disk read through libnbd over several connections, each with many reads in flight. A
/// connection that drops is opened again and its unfinished reads are issued again; nothing is
/// skipped.
public final class NBDDiskSource: DiskSource, @unchecked Sendable {
    // @unchecked: immutable after init, but for `spare`, guarded by `spareLock`.
    public let endpoint: NBDEndpoint
    public let size: Int64
    public let connections: Int
    public let depth: Int
    public let maxRetries: Int
    public var label: String { endpoint.description }
    /// What connections use: a PEM certificate is written once, to a directory of this source's
    /// own, rather than once per connection.
    private let connectTo: NBDEndpoint
    private let certDirectory: String?
    /// The connection that learned the size, kept for the first reader (no second handshake).
    private var spare: NBDConnection?
    private let spareLock = NSLock()

    /// `size`, when the caller knows it (the VDI's virtual_size), is checked by the reading
    /// connections; without it the first connection asks, and then reads too.
    public init(_ endpoint: NBDEndpoint, size: Int64? = nil, connections: Int = 4, depth: Int = 8, maxRetries: Int = 5) throws {
        self.endpoint = endpoint
        self.connections = max(1, connections)
        self.depth = max(1, depth)
        self.maxRetries = maxRetries
        if case .certificate(let pem) = endpoint.tls {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("haven-nbd-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try pem.write(toFile: dir + "/ca-cert.pem", atomically: false, encoding: .utf8)
            certDirectory = dir
            var e = endpoint
            e.tls = .certificateDirectory(dir)
            connectTo = e
        } else {
            certDirectory = nil
            connectTo = endpoint
        }
        if let size {
            self.size = size
        } else {
            do {
                let probe = try NBDConnection(connectTo)
                self.size = probe.size
                spare = probe
            } catch {
                if let certDirectory { try? FileManager.default.removeItem(atPath: certDirectory) }
                throw error
            }
        }
    }

    deinit {
        spare?.finish()
        if let certDirectory { try? FileManager.default.removeItem(atPath: certDirectory) }
    }

    public func read(_ jobs: [ReadJob], buffers: BufferPool, deliver: @escaping @Sendable (ReadJob, ChunkBuffer) throws -> Void) throws {
        guard !jobs.isEmpty else { return }
        // Connections take jobs from a shared list in order, so the disk is read front to back.
        let cursor = JobCursor(jobs)
        let count = min(connections, jobs.count)
        try runThreads(count, name: "nbd-read") { [self] _ in
            try readLoop(cursor: cursor, buffers: buffers, deliver: deliver)
        }
    }

    /// Opens a connection, trying again (with backoff) when the server or the network hiccups.
    private func connectWithRetry() throws -> NBDConnection {
        var attempt = 0
        while true {
            if let c = spareLock.withLock({ () -> NBDConnection? in
                defer { spare = nil }
                return spare
            }) {
                return c
            }
            do {
                return try NBDConnection(connectTo)
            } catch let e as DataError where e.code == .nbd {
                attempt += 1
                if attempt > maxRetries { throw e }
                Thread.sleep(forTimeInterval: min(2, 0.1 * Double(1 << attempt)))
            }
        }
    }

    private func readLoop(cursor: JobCursor, buffers: BufferPool, deliver: (ReadJob, ChunkBuffer) throws -> Void) throws {
        let chunkSize = buffers.size
        struct InFlight {
            var job: ReadJob
            var buffer: ChunkBuffer
            var cookies: [Int64]
        }
        var connection = try connectWithRetry()
        // Buffers given to libnbd and not yet delivered. However this loop ends (a write failing
        // behind `deliver`, a dropped connection, anything), the connection is finished first, so
        // that no reply can land in a buffer any more, and only then are the buffers handed back.
        var inFlight: [InFlight] = []
        defer {
            connection.finish()
            for item in inFlight { buffers.release(item.buffer) }
        }
        guard connection.size >= size else {
            throw DataError(.nbd, endpoint.description, "the export has \(connection.size) bytes, \(size) were expected")
        }
        var retries = 0
        func issue(_ item: inout InFlight) throws {
            item.cookies = []
            let chunkStart = Int64(item.job.chunk) * Int64(chunkSize)
            for r in item.job.ranges {
                let at = item.buffer.memory.baseAddress! + Int(r.offset - chunkStart)
                item.cookies.append(try connection.startRead(into: at, count: r.length, offset: r.offset))
            }
        }
        while true {
            do {
                while inFlight.count < depth {
                    // Wait for a buffer only when holding none: the buffers waited for may all be
                    // held, undelivered, by readers waiting the same way (issue 14).
                    let next = inFlight.isEmpty ? buffers.acquireUnlessClosed() : buffers.tryAcquire()
                    guard let buffer = next else {
                        if buffers.isClosed { throw DataError(.cancelled, endpoint.description, "the transfer was stopped") }
                        break
                    }
                    guard let job = cursor.next() else {
                        buffers.release(buffer)
                        break
                    }
                    // In the list before the reads are issued, so that a failure in between still
                    // finishes the connection before the buffer goes back.
                    inFlight.append(InFlight(job: job, buffer: buffer, cookies: []))
                    try issue(&inFlight[inFlight.count - 1])
                }
                if inFlight.isEmpty { return }
                try connection.poll(timeoutMs: 30_000)
                var i = 0
                while i < inFlight.count {
                    var done = true
                    var remaining: [Int64] = []
                    for c in inFlight[i].cookies {
                        if try connection.completed(c) { continue }
                        done = false
                        remaining.append(c)
                    }
                    inFlight[i].cookies = remaining
                    if done {
                        // Its reads are complete: libnbd no longer refers to the buffer, which
                        // belongs to `deliver` from here on (even when it throws).
                        let item = inFlight.remove(at: i)
                        do {
                            try deliver(item.job, item.buffer)
                        } catch {
                            // Not this connection's failure (it may even be another reader's
                            // NBD error): no reconnecting for it.
                            throw DeliveryFailed(error: error)
                        }
                        retries = 0
                    } else {
                        i += 1
                    }
                }
            } catch let f as DeliveryFailed {
                throw f.error
            } catch let e as DataError where e.code == .nbd {
                // The connection (or a read) failed: close it at once (no reply may land in a
                // buffer about to be read into again), reconnect, and read the unfinished jobs again.
                connection.finish(drain: false)
                retries += 1
                if retries > maxRetries { throw e }
                Thread.sleep(forTimeInterval: min(2, 0.1 * Double(1 << retries)))
                connection = try connectWithRetry()
                for i in inFlight.indices { try issue(&inFlight[i]) }
            }
        }
    }
}

/// An error thrown by `deliver`, carried past the reconnecting catch of the read loop.
private struct DeliveryFailed: Error {
    var error: any Error
}

/// Hands out jobs in order to several threads.
final class JobCursor: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private let jobs: [ReadJob]
    private var nextIndex = 0

    init(_ jobs: [ReadJob]) { self.jobs = jobs }

    func next() -> ReadJob? {
        lock.lock()
        defer { lock.unlock() }
        guard nextIndex < jobs.count else { return nil }
        defer { nextIndex += 1 }
        return jobs[nextIndex]
    }
}

/// A disk image file read with pread (tests, and backing up an image haven can see directly).
public final class FileDiskSource: DiskSource, @unchecked Sendable {
    // @unchecked: immutable after init; pread is safe from several threads.
    public let path: String
    public let size: Int64
    public let threads: Int
    public var label: String { path }
    private let fd: Int32

    public init(path: String, threads: Int = 2) throws {
        self.path = path
        self.threads = max(1, threads)
        fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw DataError(.io, path, String(cString: strerror(errno))) }
        var st = stat()
        fstat(fd, &st)
        size = Int64(st.st_size)
    }

    deinit { close(fd) }

    public func read(_ jobs: [ReadJob], buffers: BufferPool, deliver: @escaping @Sendable (ReadJob, ChunkBuffer) throws -> Void) throws {
        let cursor = JobCursor(jobs)
        try runThreads(min(threads, max(1, jobs.count)), name: "file-read") { [self] _ in
            let chunkSize = buffers.size
            while let job = cursor.next() {
                guard let buffer = buffers.acquireUnlessClosed() else {
                    throw DataError(.cancelled, path, "the transfer was stopped")
                }
                let chunkStart = Int64(job.chunk) * Int64(chunkSize)
                do {
                    for r in job.ranges {
                        var done = 0
                        while done < r.length {
                            let n = pread(fd, buffer.memory.baseAddress! + Int(r.offset - chunkStart) + done, r.length - done, off_t(r.offset) + off_t(done))
                            guard n > 0 else { throw DataError(.io, path, "short read at \(r.offset + Int64(done))") }
                            done += n
                        }
                    }
                } catch {
                    // Back to the pool, or the other readers may wait for it forever.
                    buffers.release(buffer)
                    throw error
                }
                try deliver(job, buffer)
            }
        }
    }
}

import Foundation
import Synchronization

/// Progress of a transfer, reported as bytes are processed.
public struct TransferProgress: Sendable {
    public var bytesDone: Int64
    public var bytesTotal: Int64
}

/// Backs up one disk into a repository: a full read, or an incremental one that reads only the
/// changed 64 KiB blocks and patches them into the affected chunks of the previous version
/// (the rest of each chunk comes from the repository, not the network). Either way the result is
/// a complete index: no chains.
public struct DiskBackup: Sendable {
    public let repository: BackupRepository
    /// Threads hashing, compressing and storing beside the readers.
    public let workers: Int

    public init(repository: BackupRepository, workers: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.repository = repository
        self.workers = max(1, workers)
    }

    public struct Request: Sendable {
        public var key: String
        public var name: String
        public var vdiUUID: String
        public var sourceSnapshotVDI: String
        public var source: any DiskSource
        /// For an incremental: the version to patch and the blocks changed since it.
        public var previous: DiskVersion?
        public var changed: ChangedBlocks?

        public init(key: String, name: String, vdiUUID: String, sourceSnapshotVDI: String, source: any DiskSource,
                    previous: DiskVersion? = nil, changed: ChangedBlocks? = nil) {
            self.key = key
            self.name = name
            self.vdiUUID = vdiUUID
            self.sourceSnapshotVDI = sourceSnapshotVDI
            self.source = source
            self.previous = previous
            self.changed = changed
        }
    }

    /// Reads, stores and indexes the disk; does not commit (the caller writes the manifest once
    /// every disk of the VM is stored). `isStopped` is asked before each chunk is handed on: when it
    /// says yes the transfer stops there (a cancelled run must not read a whole disk first) and
    /// throws `DataError(.cancelled)`.
    public func run(_ request: Request, isStopped: (@Sendable () -> Bool)? = nil,
                    progress: (@Sendable (TransferProgress) -> Void)? = nil) throws -> DiskVersion {
        let chunkSize = repository.config.chunkSize
        let size = request.source.size
        let chunks = Int((size + Int64(chunkSize) - 1) / Int64(chunkSize))
        var entries = [ChunkID](repeating: .zero, count: chunks)
        var jobs: [ReadJob] = []
        var isIncremental = false
        if let previous = request.previous, request.changed != nil || request.source.deliversChangesOnly {
            guard previous.chunkSize == chunkSize else {
                throw DataError(.unsupported, request.name, "the previous version used \(previous.chunkSize)-byte chunks; the repository now uses \(chunkSize)")
            }
            if let changed = request.changed, changed.diskSize != size {
                throw DataError(.badBitmap, request.name, "the changed-block bitmap is for \(changed.diskSize) bytes, the disk has \(size)")
            }
            let old = try DiskIndex.read(previous.index, from: repository)
            for i in 0..<min(old.count, chunks) { entries[i] = old[i] }
            // A disk that grew: the new area counts as changed only where the bitmap (or the
            // delta) says so, and is zero otherwise, which the zero entries already say.
            if let changed = request.changed {
                var byChunk: [Int: [ByteRange]] = [:]
                for r in changed.ranges(within: chunkSize) { byChunk[Int(r.offset / Int64(chunkSize)), default: []].append(r) }
                jobs = byChunk.keys.sorted().map { ReadJob(chunk: $0, ranges: byChunk[$0]!) }
            }
            isIncremental = true
        } else {
            guard !request.source.deliversChangesOnly else {
                throw DataError(.unsupported, request.name, "a delta source (\(request.source.label)) needs the previous version to patch")
            }
            jobs = (0..<chunks).map { c in
                let start = Int64(c) * Int64(chunkSize)
                return ReadJob(chunk: c, ranges: [ByteRange(offset: start, length: Int(min(Int64(chunkSize), size - start)))])
            }
        }
        // A delta source finds its jobs as it reads: the disk's size is the most it can read.
        let incremental = isIncremental
        let total = request.source.deliversChangesOnly && isIncremental ? size : jobs.reduce(Int64(0)) { $0 + Int64($1.bytes) }
        let state = Mutex(Shared(entries: entries))
        let queue = BoundedQueue<(ReadJob, ChunkBuffer)>(capacity: workers * 2 + 2)
        // Readers keep up to 8 reads in flight per connection; the rest wait in the queue.
        let pool = BufferPool(size: chunkSize, limit: max(16, workers * 4) + 32)
        let failure = FirstError()
        let repo = repository

        // After a failure: drop what waits in the queue (its buffers go back to the pool), and
        // close the pool so that a reader waiting for a buffer stops instead of waiting forever.
        @Sendable func stop() {
            for (_, buffer) in queue.close(discard: true) { pool.release(buffer) }
            pool.close()
        }

        // Workers: patch (incremental), detect zeros, hash, compress, store.
        let workerGroup = DispatchGroup()
        for w in 0..<workers {
            workerGroup.enter()
            let t = Thread {
                defer { workerGroup.leave() }
                let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 4096)
                defer { scratch.deallocate() }
                let codec = ChunkCodec(chunkSize: chunkSize)
                while let (job, buffer) = queue.pop() {
                    defer { pool.release(buffer) }
                    do {
                        let start = Int64(job.chunk) * Int64(chunkSize)
                        let length = Int(min(Int64(chunkSize), size - start))
                        var data = UnsafeRawBufferPointer(rebasing: buffer.memory[0..<length])
                        if incremental && job.bytes < length {
                            let oldID = state.withLock { $0.entries[job.chunk] }
                            let whole = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<length])
                            if oldID.isZero {
                                whole.initializeMemory(as: UInt8.self, repeating: 0)
                            } else {
                                let n = try repo.getChunk(oldID, into: whole, codec: codec)
                                if n < length { (whole.baseAddress! + n).initializeMemory(as: UInt8.self, repeating: 0, count: length - n) }
                            }
                            for r in job.ranges {
                                let at = Int(r.offset - start)
                                (whole.baseAddress! + at).copyMemory(from: buffer.memory.baseAddress! + at, byteCount: r.length)
                            }
                            data = UnsafeRawBufferPointer(whole)
                        }
                        var id = ChunkID.zero
                        var stored = 0
                        if !data.isZero {
                            id = repo.chunkID(of: data)
                            stored = try repo.putChunk(id, data, codec: codec)
                        }
                        let done = state.withLock { s -> Int64 in
                            s.entries[job.chunk] = id
                            s.stored += Int64(stored)
                            s.read += Int64(job.bytes)
                            return s.read
                        }
                        progress?(TransferProgress(bytesDone: done, bytesTotal: total))
                    } catch {
                        failure.set(error)
                        stop()
                    }
                }
            }
            t.name = "chunk-worker-\(w)"
            t.stackSize = 1 << 20
            t.start()
        }
        do {
            try request.source.read(jobs, buffers: pool) { job, buffer in
                if let e = failure.value {
                    pool.release(buffer)
                    throw e
                }
                if isStopped?() == true {
                    pool.release(buffer)
                    throw DataError(.cancelled, request.name, "the transfer was stopped")
                }
                if !queue.push((job, buffer)) { pool.release(buffer) }
            }
        } catch {
            failure.set(error)
            stop()
        }
        queue.close()
        workerGroup.wait()
        if let e = failure.value { throw e }
        let final = state.withLock { $0 }
        let (root, indexBytes) = try DiskIndex.write(final.entries, to: repository)
        return DiskVersion(
            key: request.key, name: request.name, vdiUUID: request.vdiUUID, size: size, chunkSize: chunkSize, index: root,
            sourceSnapshotVDI: request.sourceSnapshotVDI, readBytes: final.read, storedBytes: final.stored + Int64(indexBytes),
            zeroChunks: final.entries.filter(\.isZero).count)
    }

    struct Shared {
        var entries: [ChunkID]
        var stored: Int64 = 0
        var read: Int64 = 0
    }
}

import Foundation
import HavenData
import XenAPI

/// A disk read as one stream (`/export_raw_vdi?format=raw`): the fallback when no network has an
/// NBD purpose. The stream is cut into chunk jobs as it arrives.
final class ExportDiskSource: DiskSource, @unchecked Sendable {
    // @unchecked: immutable; the stream state lives inside `read`, on the transfer thread.
    let size: Int64
    let label: String
    let client: XenAPIClient
    let vdi: VDIRef

    init(client: XenAPIClient, vdi: VDIRef, size: Int64, label: String) {
        self.client = client
        self.vdi = vdi
        self.size = size
        self.label = label
    }

    final class Chunker: @unchecked Sendable {
        // @unchecked: used only by the curl transfer thread, one call at a time.
        let buffers: BufferPool
        let deliver: @Sendable (ReadJob, ChunkBuffer) throws -> Void
        let size: Int64
        var index = 0
        var filled = 0
        var current: ChunkBuffer?

        init(buffers: BufferPool, size: Int64, deliver: @escaping @Sendable (ReadJob, ChunkBuffer) throws -> Void) {
            self.buffers = buffers
            self.size = size
            self.deliver = deliver
        }

        func feed(_ bytes: UnsafeRawBufferPointer) throws {
            var offset = 0
            while offset < bytes.count {
                if current == nil { current = buffers.acquire() }
                let chunkStart = Int64(index) * Int64(buffers.size)
                let want = Int(min(Int64(buffers.size), size - chunkStart)) - filled
                let n = min(want, bytes.count - offset)
                (current!.memory.baseAddress! + filled).copyMemory(from: bytes.baseAddress! + offset, byteCount: n)
                filled += n
                offset += n
                if filled == Int(min(Int64(buffers.size), size - chunkStart)) { try flush() }
            }
        }

        func flush() throws {
            guard let buffer = current, filled > 0 else { return }
            let start = Int64(index) * Int64(buffers.size)
            try deliver(ReadJob(chunk: index, ranges: [ByteRange(offset: start, length: filled)]), buffer)
            current = nil
            index += 1
            filled = 0
        }
    }

    func read(_ jobs: [ReadJob], buffers: BufferPool, deliver: @escaping @Sendable (ReadJob, ChunkBuffer) throws -> Void) throws {
        let chunker = Chunker(buffers: buffers, size: size, deliver: deliver)
        let client = self.client
        let vdi = self.vdi
        try runBlocking {
            try await client.exportRawVDI(vdi, format: .raw) { try chunker.feed($0) }
            try chunker.flush()
        }
        guard Int64(chunker.index) * Int64(buffers.size) >= size || chunker.index == jobs.count else {
            throw DataError(.io, label, "the export ended after \(chunker.index) of \(jobs.count) chunks")
        }
    }

}

/// Runs an async transfer from a data-plane thread (which must not return before it ends) and
/// waits for it.
func runBlocking(_ operation: @escaping @Sendable () async throws -> Void) throws {
    final class Failure: @unchecked Sendable {
        // @unchecked: written by the task before it signals, read after the wait.
        var error: (any Error)?
    }
    let done = DispatchSemaphore(value: 0)
    let failure = Failure()
    Task {
        do { try await operation() } catch { failure.error = error }
        done.signal()
    }
    done.wait()
    if let e = failure.error { throw e }
}

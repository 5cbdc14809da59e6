import Foundation

/// Chunk buffers reused across a transfer: no page faults on fresh memory for every chunk, and a
/// hard bound on how many exist (acquire waits when all are in use).
///
/// A reader must never wait for a buffer while it holds buffers it has not delivered yet: every
/// buffer may be held that way, and then nobody delivers (issue 14). Readers with reads in flight
/// use `tryAcquire`; only a reader holding nothing waits. Once a transfer fails, `close` wakes
/// every waiter so readers stop instead of waiting for buffers that will not come back.
public final class BufferPool: @unchecked Sendable {
    // @unchecked: `free`, `created` and `closed` are guarded by `condition`.
    private let condition = NSCondition()
    private var free: [ChunkBuffer] = []
    private var created = 0
    private var closed = false
    public let size: Int
    public let limit: Int

    public init(size: Int, limit: Int) {
        self.size = size
        self.limit = max(1, limit)
    }

    /// Waits for a buffer. After `close`, returns a new buffer beyond the limit instead of
    /// waiting (callers that cannot stop here learn of the failure when they deliver it).
    public func acquire() -> ChunkBuffer {
        condition.lock()
        defer { condition.unlock() }
        while free.isEmpty && created >= limit && !closed { condition.wait() }
        return takeLocked() ?? ChunkBuffer(size: size)
    }

    /// Waits for a buffer; nil once the pool is closed (the transfer failed: stop reading).
    public func acquireUnlessClosed() -> ChunkBuffer? {
        condition.lock()
        defer { condition.unlock() }
        while free.isEmpty && created >= limit && !closed { condition.wait() }
        return closed ? nil : takeLocked()
    }

    /// A buffer if one is free (or may be made) now; nil otherwise, or once closed.
    public func tryAcquire() -> ChunkBuffer? {
        condition.lock()
        defer { condition.unlock() }
        return closed ? nil : takeLocked()
    }

    private func takeLocked() -> ChunkBuffer? {
        if let b = free.popLast() { return b }
        guard created < limit else { return nil }
        created += 1
        return ChunkBuffer(size: size)
    }

    public func release(_ buffer: ChunkBuffer) {
        condition.lock()
        free.append(buffer)
        condition.signal()
        condition.unlock()
    }

    /// The transfer is over (it failed): wake every waiter; no buffer is handed out any more
    /// except by `acquire`, which cannot say no.
    public func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    public var isClosed: Bool {
        condition.lock()
        defer { condition.unlock() }
        return closed
    }
}

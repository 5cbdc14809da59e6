import Foundation

/// Chunk buffers reused across a transfer: no page faults on fresh memory for every chunk, and a
/// hard bound on how many exist (acquire waits when all are in use).
public final class BufferPool: @unchecked Sendable {
    // @unchecked: `free` and `created` are guarded by `condition`.
    private let condition = NSCondition()
    private var free: [ChunkBuffer] = []
    private var created = 0
    public let size: Int
    public let limit: Int

    public init(size: Int, limit: Int) {
        self.size = size
        self.limit = max(1, limit)
    }

    public func acquire() -> ChunkBuffer {
        condition.lock()
        defer { condition.unlock() }
        while free.isEmpty && created >= limit { condition.wait() }
        if let b = free.popLast() { return b }
        created += 1
        return ChunkBuffer(size: size)
    }

    public func release(_ buffer: ChunkBuffer) {
        condition.lock()
        free.append(buffer)
        condition.signal()
        condition.unlock()
    }
}

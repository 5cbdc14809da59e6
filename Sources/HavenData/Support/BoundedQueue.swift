import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A blocking queue of bounded size between producer and consumer threads: producers wait when
/// it is full (so memory stays bounded), consumers wait when it is empty. Each side waits on a
/// condition of its own and is woken one at a time (no broadcast per element: a full backup
/// hands over tens of thousands of chunks, and every broadcast woke every thread).
final class BoundedQueue<Element>: @unchecked Sendable {
    // @unchecked: every access to `items`, `head` and `closed` holds `mutex`.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let notEmpty = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private let notFull = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var items: [Element] = []
    private var head = 0
    private var closed = false
    let capacity: Int

    init(capacity: Int) {
        self.capacity = max(1, capacity)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(notEmpty, nil)
        pthread_cond_init(notFull, nil)
    }

    deinit {
        pthread_cond_destroy(notEmpty)
        pthread_cond_destroy(notFull)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        notEmpty.deallocate()
        notFull.deallocate()
    }

    /// Returns false when the queue was closed (the element is dropped).
    @discardableResult
    func push(_ item: Element) -> Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while items.count - head >= capacity && !closed { pthread_cond_wait(notFull, mutex) }
        if closed { return false }
        items.append(item)
        pthread_cond_signal(notEmpty)
        return true
    }

    /// The next element, or nil once closed and drained.
    func pop() -> Element? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while items.count == head && !closed { pthread_cond_wait(notEmpty, mutex) }
        if items.count == head { return nil }
        let item = items[head]
        head += 1
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        pthread_cond_signal(notFull)
        return item
    }

    /// No more pushes; consumers drain what is left. With `discard`, what is left is dropped and
    /// returned (so that the caller can give back what the elements hold).
    @discardableResult
    func close(discard: Bool = false) -> [Element] {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        closed = true
        var dropped: [Element] = []
        if discard {
            dropped = Array(items[head...])
            items.removeAll()
            head = 0
        }
        pthread_cond_broadcast(notEmpty)
        pthread_cond_broadcast(notFull)
        return dropped
    }
}

func runThreads(_ count: Int, name: String, _ body: @escaping @Sendable (Int) throws -> Void) throws {
    let group = DispatchGroup()
    let failure = FirstError()
    for i in 0..<count {
        group.enter()
        let t = Thread {
            defer { group.leave() }
            do { try body(i) } catch { failure.set(error) }
        }
        t.name = "\(name)-\(i)"
        t.stackSize = 1 << 20
        t.start()
    }
    group.wait()
    if let e = failure.value { throw e }
}

/// Keeps the first error reported from any thread.
final class FirstError: @unchecked Sendable {
    // @unchecked: guarded by `lock`.
    private let lock = NSLock()
    private var error: (any Error)?

    func set(_ e: any Error) {
        lock.lock()
        if error == nil { error = e }
        lock.unlock()
    }

    var value: (any Error)? {
        lock.lock()
        defer { lock.unlock() }
        return error
    }
}

extension UnsafeRawBufferPointer {
    /// Whether every byte is zero (memcmp against itself shifted by one: glibc's vectorised compare).
    var isZero: Bool {
        guard let base = baseAddress, count > 0 else { return true }
        if base.load(as: UInt8.self) != 0 { return false }
        return memcmp(base, base + 1, count - 1) == 0
    }
}

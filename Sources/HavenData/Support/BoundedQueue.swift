import Foundation

/// A blocking queue of bounded size between producer and consumer threads: producers wait when
/// it is full (so memory stays bounded), consumers wait when it is empty.
final class BoundedQueue<Element>: @unchecked Sendable {
    // @unchecked: every access to `items` and `closed` holds `condition`.
    private let condition = NSCondition()
    private var items: [Element] = []
    private var head = 0
    private var closed = false
    let capacity: Int

    init(capacity: Int) { self.capacity = max(1, capacity) }

    /// Returns false when the queue was closed (the element is dropped).
    @discardableResult
    func push(_ item: Element) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while items.count - head >= capacity && !closed { condition.wait() }
        if closed { return false }
        items.append(item)
        condition.broadcast()
        return true
    }

    /// The next element, or nil once closed and drained.
    func pop() -> Element? {
        condition.lock()
        defer { condition.unlock() }
        while items.count == head && !closed { condition.wait() }
        if items.count == head { return nil }
        let item = items[head]
        head += 1
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        condition.broadcast()
        return item
    }

    /// No more pushes; consumers drain what is left. With `discard`, what is left is dropped and
    /// returned (so that the caller can give back what the elements hold).
    @discardableResult
    func close(discard: Bool = false) -> [Element] {
        condition.lock()
        defer { condition.unlock() }
        closed = true
        var dropped: [Element] = []
        if discard {
            dropped = Array(items[head...])
            items.removeAll()
            head = 0
        }
        condition.broadcast()
        return dropped
    }
}

/// Runs `count` threads and waits for all of them; the first error thrown is rethrown.
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

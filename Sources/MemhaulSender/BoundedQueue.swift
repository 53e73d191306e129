import Foundation

/// A blocking FIFO with a fixed capacity: the pipeline's back-pressure.
///
/// `push` blocks while full and `pop` while empty; `close()` wakes everyone:
/// pushes then fail and pops drain what is left, then return nil. A stage that
/// fails calls `fail(_:)` so the other stages stop at their next call.
public final class BoundedQueue<Element>: @unchecked Sendable {  // all state under `condition`
    private var items: [Element] = []
    private var head = 0
    private let capacity: Int
    private var closed = false
    private var failure: Error?
    private let condition = NSCondition()

    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// Adds `item`, waiting for room. Returns false if the queue was closed.
    @discardableResult
    public func push(_ item: Element) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while items.count - head >= capacity && !closed { condition.wait() }
        if closed { return false }
        items.append(item)
        condition.broadcast()
        return true
    }

    /// Takes the next item, waiting for one; nil once closed and drained or failed.
    public func pop() -> Element? {
        condition.lock()
        defer { condition.unlock() }
        while items.count == head && !closed { condition.wait() }
        if failure != nil || items.count == head { return nil }
        let item = items[head]
        head += 1
        if head > 64 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        condition.broadcast()
        return item
    }

    /// No more pushes; consumers drain what is queued.
    public func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    /// Stops everyone now; `error` is kept for whoever asks.
    public func fail(_ error: Error) {
        condition.lock()
        if failure == nil { failure = error }
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    /// Takes whatever is still queued (after `fail`, to give buffers back).
    public func drainAll() -> [Element] {
        condition.lock()
        defer { condition.unlock() }
        let rest = Array(items[head...])
        items.removeAll()
        head = 0
        condition.broadcast()
        return rest
    }

    public var error: Error? {
        condition.lock()
        defer { condition.unlock() }
        return failure
    }
}

import Synchronization

/// Reuses the stores' large buffers (8 MiB journal/read windows, 1 MiB zero
/// blocks) across stores instead of mapping them fresh for each: a receiver
/// opens a store per connection, and every fresh 8 MiB mapping is paid again
/// in page faults as it is touched (under ASan in the fuzz harness, ~35% of
/// the time). At most `keep` buffers per size wait in the pool; the rest are
/// freed. Zero blocks are only ever read, so they stay zero in the pool.
enum BufferPool {
    private struct Free: @unchecked Sendable {  // raw pointers owned by the pool while listed
        var buffers: [Int: [UnsafeMutableRawBufferPointer]] = [:]
        var zeroed: [Int: [UnsafeMutableRawBufferPointer]] = [:]
    }
    private static let free = Mutex(Free())
    static let keep = 8

    /// A buffer of `count` bytes, 4096-aligned, contents undefined.
    static func take(_ count: Int) -> UnsafeMutableRawBufferPointer {
        free.withLock { $0.buffers[count]?.popLast() } ?? .allocate(byteCount: count, alignment: 4096)
    }

    /// A buffer of `count` zero bytes that the caller never writes.
    static func takeZeroed(_ count: Int) -> UnsafeMutableRawBufferPointer {
        if let b = free.withLock({ $0.zeroed[count]?.popLast() }) { return b }
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 4096)
        b.initializeMemory(as: UInt8.self, repeating: 0)
        return b
    }

    static func give(_ b: UnsafeMutableRawBufferPointer) {
        let kept = free.withLock { f -> Bool in
            guard (f.buffers[b.count]?.count ?? 0) < keep else { return false }
            f.buffers[b.count, default: []].append(b)
            return true
        }
        if !kept { b.deallocate() }
    }

    static func giveZeroed(_ b: UnsafeMutableRawBufferPointer) {
        let kept = free.withLock { f -> Bool in
            guard (f.zeroed[b.count]?.count ?? 0) < keep else { return false }
            f.zeroed[b.count, default: []].append(b)
            return true
        }
        if !kept { b.deallocate() }
    }
}

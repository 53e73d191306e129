#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Pauses the writer and churn threads at a safe point (between two writes).
///
/// `pause()` returns once every participant is parked; pauses nest. Rate-limit
/// sleeps wait on the same condition so a pause never waits a sleep out.
final class Gate: @unchecked Sendable {  // every field but `requested` is guarded by `mutex`
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Read lock-free by participants on every write.
    let requested = Atomic<Bool>(false)
    private var parked = 0
    private var participants = 0
    private var depth = 0

    init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    /// A thread that will park on pauses; call before it starts writing.
    func join() {
        pthread_mutex_lock(mutex)
        participants += 1
        pthread_mutex_unlock(mutex)
    }

    /// A participant that stops writing for good (its thread ends).
    func leave() {
        pthread_mutex_lock(mutex)
        participants -= 1
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }

    /// Called by a participant that saw `requested`: waits out the pause.
    func park() {
        pthread_mutex_lock(mutex)
        parked += 1
        pthread_cond_broadcast(cond)
        while requested.load(ordering: .acquiring) { pthread_cond_wait(cond, mutex) }
        parked -= 1
        pthread_mutex_unlock(mutex)
    }

    /// Stops every participant at a safe point; nests.
    func pause() {
        pthread_mutex_lock(mutex)
        depth += 1
        if depth == 1 {
            requested.store(true, ordering: .releasing)
            pthread_cond_broadcast(cond)
        }
        while parked < participants { pthread_cond_wait(cond, mutex) }
        pthread_mutex_unlock(mutex)
    }

    func resume() {
        pthread_mutex_lock(mutex)
        if depth > 0 {
            depth -= 1
            if depth == 0 {
                requested.store(false, ordering: .releasing)
                pthread_cond_broadcast(cond)
            }
        }
        pthread_mutex_unlock(mutex)
    }

    var isPaused: Bool {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return depth > 0
    }

    /// Sleeps until `deadline` (CLOCK_MONOTONIC ns) or a pause request.
    func sleep(untilNanoseconds deadline: UInt64) {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_mutex_lock(mutex)
        while !requested.load(ordering: .acquiring) && nowNanoseconds() < deadline {
            pthread_cond_timedwait(cond, mutex, &ts)
        }
        pthread_mutex_unlock(mutex)
    }
}

@inline(__always) func nowNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

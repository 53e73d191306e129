#if canImport(Glibc)
import Glibc
#endif

/// What the calling thread has asked of the CPUs so far: time on a CPU and time
/// runnable but waiting for one, from `/proc/thread-self/schedstat` (fields 1
/// and 2, nanoseconds). Their sum over a wall interval is how busy the thread
/// would have been: a thread starved by other processes on a shared machine
/// still counts as the bottleneck it is.
public struct ThreadDemand: Sendable, Equatable {
    public var cpuNanoseconds: UInt64
    public var waitNanoseconds: UInt64
    public var totalNanoseconds: UInt64 { cpuNanoseconds &+ waitNanoseconds }

    public init(cpuNanoseconds: UInt64, waitNanoseconds: UInt64) {
        self.cpuNanoseconds = cpuNanoseconds
        self.waitNanoseconds = waitNanoseconds
    }

    /// The calling thread's. Each thread keeps its schedstat open and re-reads
    /// it with `pread(2)` (a few µs; open+read+close costs ~10× that, and the
    /// pipelines ask per batch). Without schedstat (a kernel without
    /// CONFIG_SCHED_INFO), its CPU time alone (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`).
    public static func current() -> ThreadDemand {
        if let fd = schedstat() {
            var buffer = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))  // 64 bytes
            let fields: [UInt64]? = withUnsafeMutableBytes(of: &buffer) { raw in
                guard let n = try? Syscall.run("pread(/proc/thread-self/schedstat)", { pread(fd, raw.baseAddress, raw.count, 0) }), n > 0 else { return nil }
                return raw[0..<n].split(whereSeparator: { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") })
                    .compactMap { UInt64(String(decoding: $0, as: UTF8.self)) }
            }
            if let fields, fields.count >= 2 { return ThreadDemand(cpuNanoseconds: fields[0], waitNanoseconds: fields[1]) }
        }
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return ThreadDemand(cpuNanoseconds: UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec), waitNanoseconds: 0)
    }

    /// The calling thread's open `/proc/thread-self/schedstat` (closed when the
    /// thread exits), or nil if it cannot be opened (then never tried again on this thread).
    private static func schedstat() -> Int32? {
        let stored = Int(bitPattern: pthread_getspecific(key))
        if stored > 0 { return Int32(stored - 1) }
        if stored < 0 { return nil }
        let fd = try? Syscall.run("open(/proc/thread-self/schedstat)") { open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC) }
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: fd.map { Int($0) + 1 } ?? -1))
        return fd
    }

    /// Per thread: fd + 1, or -1 when schedstat could not be opened.
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, { value in
            let stored = Int(bitPattern: value)
            if stored > 0 { close(Int32(stored - 1)) }
        }) == 0, "pthread_key_create")
        return key
    }()
}

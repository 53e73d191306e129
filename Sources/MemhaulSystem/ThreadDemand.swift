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

    /// The calling thread's; without schedstat (a kernel without
    /// CONFIG_SCHED_INFO), its CPU time alone (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`).
    public static func current() -> ThreadDemand {
        if let text = try? ProcFS.readString("/proc/thread-self/schedstat") {
            let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }
            if fields.count >= 2 { return ThreadDemand(cpuNanoseconds: fields[0], waitNanoseconds: fields[1]) }
        }
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return ThreadDemand(cpuNanoseconds: UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec), waitNanoseconds: 0)
    }
}

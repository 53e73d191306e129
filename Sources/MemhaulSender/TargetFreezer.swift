import MemhaulSession
#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// Stops and resumes every thread of a target with group stop (SIGSTOP/SIGCONT).
///
/// Group stop reaches every thread, including ones cloned while the stop is in
/// flight (a new thread inherits the pending stop), so "frozen" is reached once
/// every task under /proc/PID/task reports state `T` and the task set is stable.
public struct TargetFreezer: Sendable {
    public let pid: Int32

    public init(pid: Int32) { self.pid = pid }

    /// `kill(pid, SIGSTOP)`, then waits until every thread is stopped.
    /// Returns the nanoseconds it took to reach a full stop.
    @discardableResult
    public func freeze(timeoutSeconds: Double = 10) throws -> UInt64 {
        let start = MonotonicClock.nanoseconds()
        _ = try Syscall.run("kill(SIGSTOP)") { kill(pid, SIGSTOP) }
        var spins = 0
        while true {
            let tasks = try ProcFS.threadStates(pid: pid)
            if tasks.isEmpty { throw MigrationError.targetExited(pid: pid) }
            if tasks.allSatisfy({ $0.state == "T" || $0.state == "t" || $0.state == "Z" || $0.state == "X" }) {
                // Re-read once: a clone racing the stop shows up here.
                let again = try ProcFS.threadStates(pid: pid)
                if again.map(\.tid) == tasks.map(\.tid),
                   again.allSatisfy({ $0.state == "T" || $0.state == "t" || $0.state == "Z" || $0.state == "X" }) {
                    return MonotonicClock.nanoseconds() - start
                }
            }
            if Double(MonotonicClock.nanoseconds() - start) / 1e9 > timeoutSeconds {
                throw MigrationError.freezeTimeout(pid: pid)
            }
            spins += 1
            if spins > 64 { usleep(50) } else { sched_yield() }
        }
    }

    /// `kill(pid, SIGCONT)`.
    public func thaw() throws {
        _ = try Syscall.run("kill(SIGCONT)") { kill(pid, SIGCONT) }
    }
}


import MemhaulSession
#if canImport(Glibc)
import Glibc
#endif
import MemhaulKernel
import MemhaulSystem
import Synchronization

/// Holds every thread of a target still at cutover with a ptrace-stop that no
/// third party can end (see ``ThreadGroupHold``): a SIGCONT from anyone, or the
/// kernel's SIGHUP+SIGCONT to an orphaned process group when the target's parent
/// exits, leaves it frozen. If the agent dies, the kernel drops the hold and the
/// target runs on: never frozen without an owner.
///
/// `thaw()` resumes it; ``detachKeepingStopped()`` hands it over to a SIGSTOP
/// group stop that outlives us (`--after stop`, CRIU). While frozen it is
/// registered with ``TargetRelease`` so a shutdown can thaw it from any thread.
public final class TargetFreezer: @unchecked Sendable {  // `hold` behind the mutex
    public let pid: Int32
    private let hold = Mutex<ThreadGroupHold?>(nil)

    public init(pid: Int32) { self.pid = pid }

    public var isFrozen: Bool { hold.withLock { $0 != nil } }

    /// Seizes and interrupts every thread; returns the nanoseconds until all had stopped.
    @discardableResult
    public func freeze(timeoutSeconds: Double = 10) throws -> UInt64 {
        let start = MonotonicClock.nanoseconds()
        let h: ThreadGroupHold
        do {
            h = try ThreadGroupHold.seize(pid: pid, timeoutSeconds: timeoutSeconds)
        } catch AttachError.noSuchProcess {
            throw MigrationError.targetExited(pid: pid)
        } catch AttachError.targetExited {
            throw MigrationError.targetExited(pid: pid)
        } catch is HoldTimeout {
            throw MigrationError.freezeTimeout(pid: pid)
        }
        let ns = MonotonicClock.nanoseconds() - start
        hold.withLock { $0 = h }
        TargetRelease.shared.add(self)
        return ns
    }

    /// Releases the hold: the target runs again (signals sent to it meanwhile are
    /// delivered now). Idempotent; any thread.
    public func thaw() throws {
        guard let h = take() else { return }
        try h.release()
    }

    /// Ends our hold with the target in a SIGSTOP group stop, which outlives this
    /// process: what `--after stop` leaves, and the state to hand to CRIU (one
    /// tracer per task: CRIU's own PTRACE_SEIZE can only come after ours is gone).
    /// From then on a SIGCONT resumes it, as after any SIGSTOP.
    public func detachKeepingStopped(timeoutSeconds: Double = 5) throws {
        guard let h = take() else { return }
        try h.releaseIntoGroupStop()
        // The threads enter the group stop as they leave our trace stops: wait
        // for it, so whoever runs next (an orchestrator, CRIU) finds it stopped.
        let deadline = MonotonicClock.seconds() + timeoutSeconds
        while MonotonicClock.seconds() < deadline {
            let states = try ProcFS.threadStates(pid: pid)
            if states.allSatisfy({ $0.state == "T" || $0.state == "Z" || $0.state == "X" }) { return }
            usleep(100)
        }
        throw MigrationError.freezeTimeout(pid: pid)
    }

    /// SIGKILL while frozen (no thread runs again), then drops the hold.
    public func kill() {
        guard let h = take() else { _ = Glibc.kill(pid, SIGKILL); return }
        h.kill()
    }

    private func take() -> ThreadGroupHold? {
        let h = hold.withLock { h -> ThreadGroupHold? in defer { h = nil }; return h }
        if h != nil { TargetRelease.shared.remove(self) }
        return h
    }

    deinit { try? thaw() }
}

/// The previous freezer, kept for comparison (tests, freeze-time figures): a
/// SIGSTOP group stop, which any SIGCONT ends.
public struct SignalStopFreezer: Sendable {
    public let pid: Int32

    public init(pid: Int32) { self.pid = pid }

    /// `kill(pid, SIGSTOP)`, then waits until every thread is stopped.
    @discardableResult
    public func freeze(timeoutSeconds: Double = 10) throws -> UInt64 {
        let start = MonotonicClock.nanoseconds()
        _ = try Syscall.run("kill(SIGSTOP)") { Glibc.kill(pid, SIGSTOP) }
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
        _ = try Syscall.run("kill(SIGCONT)") { Glibc.kill(pid, SIGCONT) }
    }
}

/// Everything in this process that keeps a target from running (freezers while
/// frozen, throttles while cycling), so a shutdown can let every target go from
/// any thread, even while a migration thread is stuck: ``releaseAll()``.
public final class TargetRelease: @unchecked Sendable {  // sets behind the mutex
    public static let shared = TargetRelease()
    private struct Holders {
        var freezers: [ObjectIdentifier: TargetFreezer] = [:]
        var throttles: [ObjectIdentifier: any TargetThrottle] = [:]
    }
    private let holders = Mutex(Holders())

    func add(_ f: TargetFreezer) { holders.withLock { $0.freezers[ObjectIdentifier(f)] = f } }
    func remove(_ f: TargetFreezer) { holders.withLock { _ = $0.freezers.removeValue(forKey: ObjectIdentifier(f)) } }
    func add(_ t: any TargetThrottle) { holders.withLock { $0.throttles[ObjectIdentifier(t)] = t } }
    func remove(_ t: any TargetThrottle) { holders.withLock { _ = $0.throttles.removeValue(forKey: ObjectIdentifier(t)) } }

    /// PIDs held or throttled right now.
    public var heldPIDs: [Int32] {
        holders.withLock { h in h.freezers.values.map(\.pid) + h.throttles.values.map(\.pid) }
    }

    /// Ends every throttle (SIGCONT, or the cgroup put back) and thaws every frozen target.
    /// Returns the PIDs released.
    @discardableResult
    public func releaseAll() -> [Int32] {
        let (freezers, throttles) = holders.withLock { h in (Array(h.freezers.values), Array(h.throttles.values)) }
        for t in throttles { t.stop() }
        for f in freezers { try? f.thaw() }
        return throttles.map(\.pid) + freezers.map(\.pid)
    }
}

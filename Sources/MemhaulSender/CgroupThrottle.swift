#if canImport(Glibc)
import Glibc
#endif
import MemhaulKernel
import MemhaulSystem
import Synchronization

/// Auto-converge through the CFS bandwidth controller of a cgroup that holds
/// the target alone: `percent`% throttle = a quota of (100 − percent)% of the
/// CPUs the target can use (min(threads, online CPUs)) per 100 ms period. The
/// kernel just does not schedule the target's threads once the quota is spent:
/// no signal, no EINTR, no thread of ours.
///
/// Which cgroup (decided by ``prepare(pid:)``, before anything is changed):
/// - the target is alone in a non-root cgroup: that one; its bandwidth is
///   saved and put back;
/// - otherwise a child `memhaul-throttle-PID` of the target's cgroup, with the
///   target's thread group moved in on the first `set` and every process in
///   it moved back by `stop` (children the target forked meanwhile too), then
///   removed. On cgroup v2 the no-internal-process rule allows this only under
///   the root cgroup (a non-root cgroup holding processes cannot give its
///   children the cpu controller); elsewhere ``prepare`` refuses and the
///   caller falls back to signals.
///
/// Before the first change a record goes to ``ThrottleLeftovers`` and `stop`
/// removes it, so an agent killed by SIGKILL while the quota is low is undone
/// by the next `memhaul migrate` or `memhaul sender` start.
public final class CgroupThrottle: TargetThrottle, @unchecked Sendable {  // state behind the mutex
    public let pid: Int32
    public var mechanism: ThrottleMechanism { .cgroup }
    /// What was changed and how to undo it.
    let record: ThrottleLeftovers.Record
    static let periodMicros: Int64 = 100_000

    private struct State {
        var percent = 0
        /// The record is written and the target is (or may be) in `used`.
        var active = false
        var ended = false
    }
    private let state = Mutex(State())

    private init(pid: Int32, record: ThrottleLeftovers.Record) {
        self.pid = pid
        self.record = record
    }

    /// Decides which cgroup would throttle `pid`; changes nothing. Throws
    /// ``CPUCgroup/Unavailable`` when there is none to use.
    public static func prepare(pid: Int32) throws -> CgroupThrottle {
        let home = try CPUCgroup.of(pid: pid)
        let others = try home.processes().filter { $0 != pid }
        let used: CPUCgroup
        let created: Bool
        if !home.isRoot && others.isEmpty {
            (used, created) = (home, false)
        } else if home.hierarchy == .v1 || home.isRoot {
            (used, created) = (home.child("memhaul-throttle-\(pid)"), true)
        } else {
            throw CPUCgroup.Unavailable(description:
                "PID \(pid) shares \(home) with \(others.count) other process(es), and cgroup v2's no-internal-process rule lets a non-root cgroup that holds processes give no child the cpu controller: put the target in a cgroup of its own")
        }
        try ThrottleLeftovers.prepareDirectory()
        let saved = created ? nil : try used.bandwidth()
        let record = ThrottleLeftovers.Record(
            pid: pid, owner: getpid(), ownerStart: ThrottleLeftovers.startTime(of: getpid()) ?? 0,
            home: home, used: used, created: created, saved: saved)
        return CgroupThrottle(pid: pid, record: record)
    }

    public var percent: Int { state.withLock { $0.percent } }

    /// Where the quota is applied.
    public var cgroup: CPUCgroup { record.used }

    /// `nr_throttled` of the cgroup in use (periods the target ran out of quota).
    public func throttledPeriods() -> UInt64? { try? record.used.throttledPeriods() }

    /// The bandwidth for `percent`: (100 − percent)% of min(threads, CPUs), at least 1 ms.
    static func bandwidth(percent: Int, threads: Int, cpus: Int) -> CPUCgroup.Bandwidth {
        let n = Int64(max(1, min(threads, cpus)))
        let quota = periodMicros * n * Int64(100 - percent) / 100
        return CPUCgroup.Bandwidth(quotaMicros: max(1000, quota), periodMicros: periodMicros)
    }

    public func set(percent: Int) throws {
        let p = max(0, min(99, percent))
        try state.withLock { (s: inout State) throws in
            guard !s.ended else { return }
            s.percent = p
            if !s.active {
                guard p > 0 else { return }
                try ThrottleLeftovers.write(record)
                s.active = true
                TargetRelease.shared.add(self)
                if record.created {
                    try record.used.create()
                    try record.used.move(pid: pid)
                }
            }
            let threads = (try? Directory.entries("/proc/\(pid)/task").count) ?? 1
            let cpus = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
            let b = p == 0 ? (record.saved ?? CPUCgroup.Bandwidth(quotaMicros: nil, periodMicros: Self.periodMicros))
                : Self.bandwidth(percent: p, threads: threads, cpus: cpus)
            try record.used.setBandwidth(b)
        }
    }

    @discardableResult
    public func stop() -> String? {
        state.withLock { (s: inout State) -> String? in
            s.ended = true
            s.percent = 0
            guard s.active else { return nil }
            s.active = false
            TargetRelease.shared.remove(self)
            return ThrottleLeftovers.undo(record)
        }
    }

    deinit { stop() }
}

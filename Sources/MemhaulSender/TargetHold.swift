#if canImport(Glibc)
import Glibc
#endif
import MemhaulKernel
import MemhaulSystem

/// How the hold stops and resumes the target: ``TargetFreezer`` (whatever its
/// mechanism), or a test's stand-in.
protocol TargetFreezing {
    func stopTarget() throws -> UInt64
    func resumeTarget() throws
    /// Completed with `--after stop`: from our hold (which ends with us) to a
    /// plain group stop, so the source stays stopped after memhaul exits.
    func leaveTargetStopped() throws
    /// Completed with `--after kill`.
    func killTarget()
}

extension TargetFreezer: TargetFreezing {
    func stopTarget() throws -> UInt64 { try freeze() }
    func resumeTarget() throws { try thaw() }
    func leaveTargetStopped() throws { try detachKeepingStopped() }
    func killTarget() { kill() }
}

/// Everything memhaul does to the target, and the one way to let go of it.
///
/// The rule (README "Safety"): from the moment memhaul tracks, throttles or
/// stops the target, every path out of the migration ends with the target
/// running and untracked — unless the migration completed and `--after` is
/// `stop` (left frozen, untracked) or `kill`. ``SenderMigration/run()`` makes
/// one hold before it touches the target and releases it in a `defer`, so no
/// thrown error, cancel or early return skips the release; nothing else
/// thaws, detaches or kills.
///
/// Used from the migration's thread only (the freezer may be one whose
/// thaw must come from the thread that froze).
final class TargetHold {
    enum Outcome: Equatable {
        case completed(AfterAction)
        case failed
        case cancelled
    }

    /// What the release did.
    struct Release {
        /// SIGSTOP sent → the target let go, seconds; nil if never frozen.
        var frozenSeconds: Double?
        /// `resumed`, `left stopped`, `killed`, `running` (never frozen).
        var action: String
        /// Steps that failed (thaw, detach); empty when clean.
        var problems: [String]
        /// Monotonic seconds when the frozen window ended (the end of `frozenSeconds`); nil if never frozen.
        var endedAt: Double?
    }

    let pid: Int32
    private let freezer: TargetFreezing
    /// Which throttle the first `setThrottle` makes (none until then).
    private let throttleBackend: ThrottleBackend
    private var throttle: TargetThrottle?
    /// Why `auto` throttles by signals (the cgroup could not be used); nil otherwise.
    private(set) var throttleFallback: String?
    private(set) var process: AttachedProcess?
    /// Monotonic seconds when the freeze began (set before the freeze
    /// starts, so a freeze that fails half-way is still undone).
    private(set) var frozenAt: Double?
    private(set) var released: Release?

    init(pid: Int32, freezer: TargetFreezing? = nil, throttle: ThrottleBackend = .auto) {
        self.pid = pid
        self.freezer = freezer ?? TargetFreezer(pid: pid)
        self.throttleBackend = throttle
    }

    var isFrozen: Bool { frozenAt != nil }
    var throttlePercent: Int { throttle?.percent ?? 0 }
    /// The throttle mechanism chosen at the first throttle; nil before.
    var throttleMechanism: ThrottleMechanism? { throttle?.mechanism }
    /// What undoing the throttle could not put back (kept for the release).
    private var throttleProblems: [String] = []

    private func endThrottle() {
        if let problem = throttle?.stop() { throttleProblems.append(problem) }
    }

    /// Registers the target for tracking (uffd-wp). A failed attach holds nothing.
    func attach() throws -> AttachedProcess {
        precondition(released == nil && process == nil)
        // The freeze is a ptrace hold, but the throttle, `--after stop|kill` and
        // the SIGCONT after a CRIU hand-over are signals: find out now, before
        // anything is done to the target, rather than at the end (CAP_KILL for
        // another user's process).
        _ = try Syscall.run("kill(\(pid), 0)") { kill(pid, 0) }
        let attached = try AttachedProcess.attach(pid: pid)
        process = attached
        return attached
    }

    /// Freezes the target; returns the nanoseconds the freeze took.
    func freeze() throws -> UInt64 {
        precondition(released == nil)
        endThrottle()
        frozenAt = MonotonicClock.seconds()
        return try freezer.stopTarget()
    }

    /// Ends a freeze without ending the migration (an aborted cutover under
    /// `--strict`): the target runs again, still tracked. Returns the seconds
    /// it was frozen. A later ``freeze()`` freezes it again.
    @discardableResult
    func thaw() throws -> Double {
        precondition(released == nil && !handedOver)
        guard let since = frozenAt else { return 0 }
        try freezer.resumeTarget()
        frozenAt = nil
        return MonotonicClock.seconds() - since
    }

    func setThrottle(percent: Int) throws {
        precondition(released == nil)
        if throttle == nil {
            (throttle, throttleFallback) = try TargetThrottles.make(pid: pid, backend: throttleBackend)
            do {
                try throttle!.set(percent: percent)
            } catch where throttleBackend == .auto && throttle!.mechanism == .cgroup {
                // The cgroup refused (read-only cgroupfs, no permission): undo and use signals.
                endThrottle()
                throttleFallback = "\(error)"
                throttle = DutyCycleThrottle(pid: pid)
                try throttle!.set(percent: percent)
            }
            return
        }
        try throttle!.set(percent: percent)
    }

    /// Ends the throttle; the target runs.
    func stopThrottle() { endThrottle() }

    /// Lets go of a frozen target for a tool that seizes it itself (CRIU: a
    /// task has one tracer): untracked, in a SIGSTOP group stop, no tracer.
    /// The release still ends it: SIGCONT on failure, SIGKILL for `kill`.
    func handOver() throws {
        precondition(released == nil && isFrozen)
        endThrottle()
        try process?.detach()
        process = nil
        try freezer.leaveTargetStopped()
        handedOver = true
    }
    private var handedOver = false

    /// Lets go of the target: throttle off, thawed (unless completed with
    /// `stop` or `kill`), untracked, killed for `kill`. Every step runs even
    /// if an earlier one failed. Idempotent: a second call returns the first
    /// result.
    @discardableResult
    func release(_ outcome: Outcome) -> Release {
        if let released { return released }
        var problems: [String] = []
        // Ends with SIGCONT or the cgroup put back, so a throttled target runs again.
        endThrottle()
        problems += throttleProblems
        let keepStopped = outcome == .completed(.stop) || outcome == .completed(.kill)
        var action = isFrozen ? "left stopped" : "running"
        if isFrozen && !keepStopped {
            do {
                // Handed over: no hold of ours is left, a SIGCONT ends the group stop.
                if handedOver { _ = try Syscall.run("kill(SIGCONT)") { kill(pid, SIGCONT) } } else { try freezer.resumeTarget() }
                action = "resumed"
            } catch {
                problems.append("thaw failed: \(error)")
            }
        }
        let letGo = MonotonicClock.seconds()
        do { try process?.detach() } catch { problems.append("untrack failed: \(error)") }
        var end = isFrozen && !keepStopped ? letGo : MonotonicClock.seconds()
        if outcome == .completed(.stop) && isFrozen && !handedOver {
            do { try freezer.leaveTargetStopped() } catch { problems.append("hand-over to a group stop failed: \(error)") }
            end = MonotonicClock.seconds()
        }
        if outcome == .completed(.kill) {
            if isFrozen && !handedOver { freezer.killTarget() } else if kill(pid, SIGKILL) != 0 { problems.append("kill failed: errno \(errno)") }
            action = "killed"
            end = MonotonicClock.seconds()
        }
        let release = Release(frozenSeconds: frozenAt.map { end - $0 }, action: action, problems: problems,
                              endedAt: frozenAt.map { _ in end })
        released = release
        return release
    }

    deinit {
        // run() always releases; this only guards a hold dropped by a future caller.
        if released == nil { release(.failed) }
    }
}

/// How auto-converge slows the target: the ops table both backends implement.
///
/// - ``CgroupThrottle``: CFS bandwidth of the target's own cgroup (`cpu.max`,
///   or cgroup v1 `cpu.cfs_quota_us`). No signal reaches the target, so no
///   blocking call in it fails with EINTR.
/// - ``DutyCycleThrottle``: SIGSTOP/SIGCONT duty cycling, for any target; each
///   stop makes calls such as `epoll_wait` and `sigtimedwait` return EINTR
///   (signal(7), "Interruption of system calls … by stop signals").
///
/// A throttle is created idle; `set(percent:)` starts or changes it, `stop()`
/// undoes everything it did (idempotent, any thread). While active it is
/// registered with ``TargetRelease`` so a shutdown can undo it.
public protocol TargetThrottle: AnyObject, Sendable {
    var pid: Int32 { get }
    var mechanism: ThrottleMechanism { get }
    /// The throttle now applied, 0…99.
    var percent: Int { get }
    /// Applies `percent` (0 = none, at most 99).
    func set(percent: Int) throws
    /// Ends the throttle and puts back what it changed; returns what could not
    /// be put back (nil when clean).
    @discardableResult func stop() -> String?
}

/// The throttle that acted, as the status reports it (`throttle_mechanism`).
public enum ThrottleMechanism: String, Sendable, Codable {
    case cgroup, signals
}

/// Which throttle a migration may use (`--throttle`, control `throttle`).
public enum ThrottleBackend: String, Sendable, Codable, CaseIterable {
    /// The cgroup where the target has or can be given one, else signals.
    case auto
    /// Only the cgroup: a throttle that cannot use it fails the migration.
    case cgroup
    /// Only SIGSTOP duty cycling (the behaviour before cgroup throttling).
    case signals
}

enum TargetThrottles {
    /// The throttle for `pid` under `backend`, and why the cgroup was not used
    /// when `auto` fell back to signals.
    static func make(pid: Int32, backend: ThrottleBackend) throws -> (throttle: TargetThrottle, fallback: String?) {
        switch backend {
        case .signals:
            return (DutyCycleThrottle(pid: pid), nil)
        case .cgroup:
            return (try CgroupThrottle.prepare(pid: pid), nil)
        case .auto:
            do {
                return (try CgroupThrottle.prepare(pid: pid), nil)
            } catch {
                return (DutyCycleThrottle(pid: pid), "\(error)")
            }
        }
    }
}

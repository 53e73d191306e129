import CMemhaulLinux
import Dispatch
import MemhaulSystem
import MemhaulTLS
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The longest a test waits for one thing it needs (a child's exit, a peer's
/// bytes, another thread's result). Past it the test fails, naming what never
/// came, instead of hanging until CI's limit. A safety net, never a judge of
/// speed: far above any such wait on a loaded 2-core machine.
///
/// 300 s, or `MEMHAUL_TEST_SAFETY_BOUND_S` (to see a hang fail quickly);
/// `SafetyBound.$seconds.withValue(n) { … }` for one test's own task.
public enum SafetyBound {
    @TaskLocal public static var seconds: Int = defaultSeconds

    private static let defaultSeconds: Int = {
        guard let raw = getenv("MEMHAUL_TEST_SAFETY_BOUND_S"), let s = Int(String(cString: raw)), s > 0 else { return 300 }
        return s
    }()

    public static var duration: Duration { .seconds(seconds) }

    /// Fails the running test: it was still waiting for `what` when the bound passed.
    public static func recordHang(_ what: String, bound: Int = seconds, sourceLocation: SourceLocation = #_sourceLocation) {
        Issue.record("still waiting for \(what) after the \(bound) s safety bound (a hang, not a slow run)", sourceLocation: sourceLocation)
    }

    /// Sets SO_RCVTIMEO on a socket the test reads from itself, so a read
    /// with no byte for the bound fails (EAGAIN) instead of blocking.
    public static func boundReads(fd: Int32) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Blocks until process `pid` (a child of ours) has exited, without
    /// reaping it: `pidfd_open` + `poll`. False, the test failed and the
    /// process killed (SIGKILL, SIGCONT for a stopped one), when it did not
    /// exit within the bound; the caller's waitpid then reaps it at once.
    @discardableResult
    public static func awaitExit(of pid: pid_t, _ what: @autoclosure () -> String,
                                 sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        let pidfd = cmh_pidfd_open(pid, 0)
        guard pidfd >= 0 else { return true }  // already reaped (ESRCH): waitpid answers at once
        defer { close(pidfd) }
        let deadline = MonotonicClock.seconds() + Double(seconds)
        while true {
            var pfd = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            let left = Int32(max(0, (deadline - MonotonicClock.seconds()) * 1000))
            let ready = poll(&pfd, 1, left)
            if ready > 0 { return true }
            if ready < 0 && errno == EINTR { continue }
            if ready < 0 { return true }  // cannot tell: the blocking waitpid decides, as before
            recordHang("the exit of \(what()) (PID \(pid)); killed it", sourceLocation: sourceLocation)
            kill(pid, SIGKILL)
            kill(pid, SIGCONT)
            return false
        }
    }

    /// Polls `condition` every `interval` µs until it holds: false, and the
    /// test failed naming `what`, when it did not within the bound.
    @discardableResult
    public static func eventually(_ what: @autoclosure () -> String, every interval: useconds_t = 10_000,
                                  sourceLocation: SourceLocation = #_sourceLocation, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = MonotonicClock.seconds() + Double(seconds)
        while try !condition() {
            guard MonotonicClock.seconds() < deadline else {
                recordHang(what(), sourceLocation: sourceLocation)
                return false
            }
            usleep(interval)
        }
        return true
    }

    /// `waitpid(pid, &status, 0)` after ``awaitExit(of:_:sourceLocation:)``: the pid, or -1.
    public static func waitpid(_ pid: pid_t, _ status: inout Int32, _ what: @autoclosure () -> String,
                               sourceLocation: SourceLocation = #_sourceLocation) -> pid_t {
        awaitExit(of: pid, what(), sourceLocation: sourceLocation)
        while true {
            let r = Glibc.waitpid(pid, &status, 0)
            if r < 0 && errno == EINTR { continue }
            return r
        }
    }
}

extension SafetyBound {
    /// Kills process `pid` (SIGKILL, then SIGCONT for a stopped one) if it is
    /// still running when the bound passes, for waits the test cannot bound
    /// itself (Foundation's `Process.waitUntilExit`, a blocking read of its
    /// pipe): the kill ends them. ``end(sourceLocation:)``, on the test's
    /// thread, disarms it and fails the test if it fired.
    public final class Watchdog {
        private final class Fired: Sendable { let flag = Mutex(false) }
        private let fired = Fired()
        private let item: DispatchWorkItem
        private let what: String
        private let bound = SafetyBound.seconds

        public init(pid: pid_t, _ what: String) {
            self.what = what
            let fired = self.fired
            item = DispatchWorkItem {
                fired.flag.withLock { $0 = true }
                kill(pid, SIGKILL)
                kill(pid, SIGCONT)
            }
            DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(bound), execute: item)
        }

        public func end(sourceLocation: SourceLocation = #_sourceLocation) {
            item.cancel()
            if fired.flag.withLock({ $0 }) { SafetyBound.recordHang("\(what); killed it", bound: bound, sourceLocation: sourceLocation) }
        }
    }
}

extension DispatchSemaphore {
    /// `wait()` within ``SafetyBound``: false, and the test failed naming
    /// `what`, when nothing signalled it.
    @discardableResult
    public func waitBounded(_ what: @autoclosure () -> String, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        if wait(timeout: .now() + .seconds(SafetyBound.seconds)) == .success { return true }
        SafetyBound.recordHang(what(), sourceLocation: sourceLocation)
        return false
    }
}

extension TCPStream {
    /// A read timeout of ``SafetyBound`` unless one is set, for a stream the
    /// test reads from itself (a hand-made sender or peer): a read then fails
    /// (`NetworkError` timeout) instead of blocking forever.
    @discardableResult
    public func boundingReads() throws -> TCPStream {
        if options.readTimeout == nil { try setTimeouts(read: SafetyBound.duration, write: options.writeTimeout) }
        return self
    }
}

extension TLSStream {
    /// ``TCPStream/boundingReads()`` on the stream under the TLS.
    @discardableResult
    public func boundingReads() throws -> TLSStream {
        try transport.boundingReads()
        return self
    }
}

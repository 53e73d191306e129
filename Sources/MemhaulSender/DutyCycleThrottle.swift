#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Auto-converge by CPU duty cycling: in every `periodMs`, the target is stopped
/// (SIGSTOP) for `percent`% and running (SIGCONT) for the rest.
///
/// Works for any target without cgroup setup; the cost is two signals per period.
/// The throttle never leaves the target stopped: `stop()` always ends with SIGCONT,
/// and while cycling it is registered with ``TargetRelease`` so a shutdown ends it
/// from any thread. (A SIGKILL of the agent inside a stopped slice cannot run
/// code: the target then stays stopped until someone sends SIGCONT.)
public final class DutyCycleThrottle: @unchecked Sendable {  // state behind Mutex; thread owned here
    public let pid: Int32
    private let periodMs: Int
    private let state = Mutex<(percent: Int, running: Bool)>((0, true))
    /// The cycling thread; start and stop are serialised on this lock (a shutdown
    /// and the migration may both stop the throttle: both return once it ended).
    private let thread = Mutex<pthread_t?>(nil)

    public init(pid: Int32, periodMs: Int = 50) {
        self.pid = pid
        self.periodMs = periodMs
    }

    public var percent: Int { state.withLock { $0.percent } }

    /// Sets the stopped share (0 = no throttle, at most 99) and starts the cycle.
    public func set(percent: Int) {
        let p = max(0, min(99, percent))
        state.withLock { $0.percent = p }
        guard p > 0 else { return }
        thread.withLock { t in
            guard t == nil, state.withLock({ $0.running }) else { return }
            TargetRelease.shared.add(self)
            let box = Unmanaged.passRetained(self)
            var tid = pthread_t()
            pthread_create(&tid, nil, { arg in
                let me = Unmanaged<DutyCycleThrottle>.fromOpaque(arg!).takeRetainedValue()
                me.loop()
                return nil
            }, box.toOpaque())
            t = tid
        }
    }

    private func loop() {
        while true {
            let (p, running) = state.withLock { ($0.percent, $0.running) }
            if !running { break }
            let stopped = periodMs * 1000 * p / 100
            if stopped > 0 {
                kill(pid, SIGSTOP)
                usleep(useconds_t(stopped))
                kill(pid, SIGCONT)
            }
            usleep(useconds_t(periodMs * 1000 - stopped))
        }
        kill(pid, SIGCONT)
    }

    /// Ends the cycle and leaves the target running. Idempotent, any thread; no
    /// throttle can start after it.
    public func stop() {
        state.withLock { $0.running = false }
        thread.withLock { t in
            if let tid = t {
                pthread_join(tid, nil)
                t = nil
                TargetRelease.shared.remove(self)
            }
        }
    }

    deinit { stop() }
}

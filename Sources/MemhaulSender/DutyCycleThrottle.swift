#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Auto-converge by CPU duty cycling: in every `periodMs`, the target is stopped
/// (SIGSTOP) for `percent`% and running (SIGCONT) for the rest.
///
/// Works for any target without cgroup setup; the cost is two signals per period.
/// The throttle never leaves the target stopped: `stop()` always ends with SIGCONT.
public final class DutyCycleThrottle: @unchecked Sendable {  // state behind Mutex; thread owned here
    private let pid: Int32
    private let periodMs: Int
    private let state = Mutex<(percent: Int, running: Bool)>((0, true))
    private var thread: pthread_t?

    public init(pid: Int32, periodMs: Int = 50) {
        self.pid = pid
        self.periodMs = periodMs
    }

    public var percent: Int { state.withLock { $0.percent } }

    /// Sets the stopped share (0 = no throttle, at most 99) and starts the cycle.
    public func set(percent: Int) {
        let p = max(0, min(99, percent))
        state.withLock { $0.percent = p }
        if thread == nil && p > 0 { start() }
    }

    private func start() {
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        pthread_create(&tid, nil, { arg in
            let me = Unmanaged<DutyCycleThrottle>.fromOpaque(arg!).takeRetainedValue()
            me.loop()
            return nil
        }, box.toOpaque())
        thread = tid
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

    /// Ends the cycle and leaves the target running.
    public func stop() {
        state.withLock { $0.running = false }
        if let t = thread {
            pthread_join(t, nil)
            thread = nil
        }
    }

    deinit { stop() }
}

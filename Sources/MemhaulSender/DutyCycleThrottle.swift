#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem
import Synchronization

/// Auto-converge by CPU duty cycling: in every `periodMs`, the target is stopped
/// (SIGSTOP) for `percent`% and running (SIGCONT) for the rest.
///
/// Works for any target without cgroup setup; the cost is two signals per period.
/// The throttle never leaves the target stopped: `stop()` always ends with SIGCONT.
public final class DutyCycleThrottle: @unchecked Sendable {  // state behind Mutex; thread owned here
    private let pid: Int32
    private let periodMs: Int
    private let state = Mutex<(percent: Int, running: Bool, failure: SystemError?)>((0, true, nil))
    private var thread: pthread_t?

    public init(pid: Int32, periodMs: Int = 50) {
        self.pid = pid
        self.periodMs = periodMs
    }

    public var percent: Int { state.withLock { $0.percent } }

    /// Sets the stopped share (0 = no throttle, at most 99) and starts the cycle.
    /// Throws if the cycle cannot run: its thread could not be created, or a
    /// signal to the target failed (the cycle then ended, target running).
    public func set(percent: Int) throws(SystemError) {
        let p = max(0, min(99, percent))
        if let failure = state.withLock({ $0.percent = p; return $0.failure }) { throw failure }
        if thread == nil && p > 0 { try start() }
    }

    private func start() throws(SystemError) {
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        do {
            _ = try Syscall.runNegated("pthread_create(throttle)") {
                -pthread_create(&tid, nil, { arg in
                    let me = Unmanaged<DutyCycleThrottle>.fromOpaque(arg!).takeRetainedValue()
                    me.loop()
                    return nil
                }, box.toOpaque())
            }
        } catch {
            box.release()
            throw error
        }
        thread = tid
    }

    /// `kill(pid, sig)` through the seam; a failure ends the cycle and is kept for `set`.
    private func signal(_ sig: Int32, _ name: String) -> Bool {
        do {
            _ = try Syscall.run(name) { kill(pid, sig) }
            return true
        } catch {
            state.withLock { if $0.failure == nil { $0.failure = error } }
            return false
        }
    }

    private func loop() {
        while true {
            let (p, running) = state.withLock { ($0.percent, $0.running) }
            if !running { break }
            let stopped = periodMs * 1000 * p / 100
            if stopped > 0 {
                guard signal(SIGSTOP, "kill(SIGSTOP)") else { break }
                usleep(useconds_t(stopped))
                guard signal(SIGCONT, "kill(SIGCONT)") else { break }
            }
            usleep(useconds_t(periodMs * 1000 - stopped))
        }
        _ = signal(SIGCONT, "kill(SIGCONT)")
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

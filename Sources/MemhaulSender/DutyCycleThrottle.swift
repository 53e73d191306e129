#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem
import Synchronization

/// Auto-converge by CPU duty cycling: in every `periodMs`, the target is stopped
/// (SIGSTOP) for `percent`% and running (SIGCONT) for the rest.
///
/// Works for any target without cgroup setup; the cost is two signals per period.
/// The throttle never leaves the target stopped: `stop()` always ends with SIGCONT,
/// and while cycling it is registered with ``TargetRelease`` so a shutdown ends it
/// from any thread. (A SIGKILL of the agent inside a stopped slice cannot run
/// code: the target then stays stopped until someone sends SIGCONT.)
public final class DutyCycleThrottle: TargetThrottle, @unchecked Sendable {  // state behind Mutex; thread owned here
    public let pid: Int32
    public var mechanism: ThrottleMechanism { .signals }
    /// Stop slices so far (SIGSTOPs sent).
    private let slices = Atomic<Int>(0)
    public var stopSlices: Int { slices.load(ordering: .relaxed) }
    private let periodMs: Int
    private let state = Mutex<(percent: Int, running: Bool, failure: SystemError?)>((0, true, nil))
    /// The cycling thread; start and stop are serialised on this lock (a shutdown
    /// and the migration may both stop the throttle: both return once it ended).
    private let thread = Mutex<pthread_t?>(nil)

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
        guard p > 0 else { return }
        let failed: SystemError? = thread.withLock { (t: inout pthread_t?) -> SystemError? in
            guard t == nil, state.withLock({ $0.running }) else { return nil }
            let box = Unmanaged.passRetained(self)
            var tid = pthread_t()
            do throws(SystemError) {
                _ = try Syscall.runNegated("pthread_create(throttle)") {
                    -pthread_create(&tid, nil, { arg in
                        let me = Unmanaged<DutyCycleThrottle>.fromOpaque(arg!).takeRetainedValue()
                        me.loop()
                        return nil
                    }, box.toOpaque())
                }
            } catch {
                box.release()
                return error
            }
            TargetRelease.shared.add(self)
            t = tid
            return nil
        }
        if let failed { throw failed }
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
                slices.add(1, ordering: .relaxed)
                usleep(useconds_t(stopped))
                guard signal(SIGCONT, "kill(SIGCONT)") else { break }
            }
            usleep(useconds_t(periodMs * 1000 - stopped))
        }
        _ = signal(SIGCONT, "kill(SIGCONT)")
    }

    /// Ends the cycle and leaves the target running. Idempotent, any thread; no
    /// throttle can start after it.
    @discardableResult
    public func stop() -> String? {
        state.withLock { $0.running = false }
        thread.withLock { t in
            if let tid = t {
                pthread_join(tid, nil)
                t = nil
                TargetRelease.shared.remove(self)
            }
        }
        return nil
    }

    deinit { stop() }
}

#if canImport(Glibc)
import Glibc
#endif
import CMemhaulLinux
import Dispatch
import MemhaulSystem
import Synchronization

/// Every thread of a process held in a ptrace-stop (PTRACE_SEIZE + PTRACE_INTERRUPT),
/// by a dedicated tracer thread of ours.
///
/// Unlike a SIGSTOP group stop, nobody else can end this stop: a SIGCONT from a
/// third party (or the kernel's SIGHUP+SIGCONT to an orphaned stopped process
/// group) does not wake a thread in TASK_TRACED; only the tracer, or SIGKILL, can.
/// Signals that arrive meanwhile stay pending and are delivered after the release.
/// And because no group stop is in effect, an orphaned process group does not
/// even count as "stopped" for the kernel's orphan rule.
///
/// If our process dies (SIGKILL included), the kernel detaches the tracees and
/// they run on: the hold can never outlive the agent. To leave the process
/// stopped beyond our lifetime (`--after stop`, or a hand-over to CRIU), release
/// with ``releaseIntoGroupStop()``: a SIGSTOP group stop takes over before any
/// thread returns to user mode.
///
/// ptrace binds a tracee to the tracer *thread*, so all ptrace calls run on one
/// thread owned by this object; the methods may be called from any thread.
public final class ThreadGroupHold: @unchecked Sendable {  // `held` is touched only on `tracer`
    public let pid: Int32
    private let tracer: TracerThread
    /// tid → signal the thread had dequeued when it stopped (re-delivered at release), 0 = none.
    private var held: [Int32: Int32] = [:]
    /// The process was in a group stop when seized (it stays stopped after release).
    public private(set) var wasGroupStopped = false
    private let state = Mutex<Bool>(false)  // held at all

    private init(pid: Int32) {
        self.pid = pid
        tracer = TracerThread()
    }

    /// Whether the threads are held now.
    public var isHeld: Bool { state.withLock { $0 } }
    /// The threads held (for tests and logs).
    public var threadCount: Int { (try? tracer.run { self.held.count }) ?? 0 }

    /// Seizes and interrupts every thread of `pid`, including threads created while
    /// we seize (the task list is re-read until it holds no unseized thread), and
    /// waits until each has stopped. On failure every thread seized so far is released.
    public static func seize(pid: Int32, timeoutSeconds: Double = 10) throws -> ThreadGroupHold {
        let hold = ThreadGroupHold(pid: pid)
        do {
            try hold.tracer.run { try hold.seizeAll(deadline: MonotonicClock.seconds() + timeoutSeconds) }
        } catch {
            try? hold.release()
            hold.tracer.stop()
            throw error
        }
        hold.state.withLock { $0 = true }
        return hold
    }

    private func seizeAll(deadline: Double) throws {
        while true {
            guard let names = try? Directory.entries("/proc/\(pid)/task") else { throw AttachError.noSuchProcess(pid: pid) }
            let fresh = names.compactMap(Int32.init).filter { held[$0] == nil }
            var seized: [Int32] = []
            for tid in fresh {
                do {
                    _ = try Tracee.seize(tid)
                } catch AttachError.noSuchProcess {
                    continue  // exited between the listing and the seize
                } catch {
                    // A zombie (exited leader) cannot be seized: nothing to hold there.
                    if let s = ProcFS.state(pid: pid, thread: tid), s == "Z" || s == "X" { continue }
                    throw error
                }
                held[tid] = 0
                seized.append(tid)
                do { try Tracee(tid: tid).interrupt() } catch let e as SystemError where e.errno == .ESRCH {}
            }
            if seized.isEmpty {
                // Every live thread is held and stopped; a held thread cannot clone.
                if held.isEmpty { throw AttachError.noSuchProcess(pid: pid) }
                return
            }
            try waitStopped(seized, deadline: deadline)
        }
    }

    /// Waits (polling all of them in each sweep, bounded) for the first stop of
    /// each thread after its interrupt: the threads stop in parallel, so the
    /// wait is the slowest one, not the sum.
    private func waitStopped(_ tids: [Int32], deadline: Double) throws {
        var pending = tids
        var spins = 0
        while !pending.isEmpty {
            pending = pending.filter { tid in
                let tracee = Tracee(tid: tid)
                let stop: TraceeStop?
                do { stop = try tracee.poll() } catch {
                    held[tid] = nil  // ECHILD/ESRCH: gone
                    return false
                }
                switch stop {
                case .eventStop(let sig)?:
                    if sig != SIGTRAP { wasGroupStopped = true }
                    return false
                case .signalDelivery(let sig)?:
                    // Stopped on its way to deliver `sig`: keep it here, deliver it at release.
                    held[tid] = sig
                    return false
                case .syscall?, .otherEvent?:
                    try? tracee.resume()
                    return true
                case .exited?, .killed?:
                    held[tid] = nil
                    return false
                case nil:
                    return true
                }
            }
            if pending.isEmpty { return }
            if MonotonicClock.seconds() > deadline { throw HoldTimeout(pid: pid, tid: pending[0]) }
            spins += 1
            if spins > 8 { usleep(20) } else { sched_yield() }
        }
    }

    /// Detaches every thread: the process runs again (or stays in the group stop it
    /// was in when seized). Signals that arrived while held are then delivered.
    /// Idempotent; safe to call from any thread.
    public func release() throws {
        try tracer.run { self.detachAll() }
        state.withLock { $0 = false }
    }

    /// SIGSTOP, then detach: each thread leaves the ptrace-stop straight into the
    /// group stop (the pending SIGSTOP is taken in the kernel's signal path before
    /// user mode), so the process stays stopped when we exit, as a plain SIGSTOP
    /// would leave it: the state CRIU's own seize (or `--freeze-cgroup`) expects.
    public func releaseIntoGroupStop() throws {
        try tracer.run {
            // Without permission to signal (no CAP_KILL) the threads would run
            // on once detached: keep holding them and say so.
            _ = try Syscall.run("kill(SIGSTOP)") { Glibc.kill(self.pid, SIGSTOP) }
            self.detachAll()
        }
        state.withLock { $0 = false }
    }

    /// SIGKILL while held (no thread runs again), then reaps our tracees.
    public func kill() {
        _ = Glibc.kill(pid, SIGKILL)
        try? tracer.run { self.detachAll() }
        state.withLock { $0 = false }
    }

    private func detachAll() {
        for (tid, sig) in held.sorted(by: { $0.key < $1.key }) {
            let tracee = Tracee(tid: tid)
            do {
                try tracee.detach(signal: sig)
            } catch {
                // ESRCH: killed while held (SIGKILL wakes a traced thread): collect its
                // exit so no traced zombie is left behind. Bounded: it is dying.
                for _ in 0..<2000 {
                    guard let s = try? tracee.poll() else { break }  // ECHILD: already gone
                    if s.isGone { break }
                    usleep(1000)
                }
            }
        }
        held.removeAll()
    }

    deinit {
        if isHeld { try? release() }
        tracer.stop()
    }
}

/// A thread did not reach its ptrace-stop in time (e.g. stuck in uninterruptible sleep).
public struct HoldTimeout: Error, CustomStringConvertible {
    public var pid: Int32
    public var tid: Int32
    public var description: String { "thread \(tid) of PID \(pid) did not stop in time" }
}

/// One thread that runs submitted closures in order: the ptrace tracer.
final class TracerThread: @unchecked Sendable {  // `jobs` behind the mutex
    private let jobs = Mutex<[@Sendable () -> Void]>([])
    private let available = DispatchSemaphore(value: 0)
    private let stopped = Mutex(false)
    private var thread = pthread_t()

    init() {
        let box = Unmanaged.passRetained(self)
        pthread_create(&thread, nil, { arg in
            let me = Unmanaged<TracerThread>.fromOpaque(arg!).takeRetainedValue()
            me.loop()
            return nil
        }, box.toOpaque())
        pthread_detach(thread)
    }

    private func loop() {
        while true {
            available.wait()
            guard let job = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { return }
            job()
        }
    }

    /// Runs `body` on the tracer thread and returns its result.
    func run<T>(_ body: @escaping () throws -> T) throws -> T {
        nonisolated(unsafe) var result: Result<T, Error>?
        nonisolated(unsafe) let work = body
        let done = DispatchSemaphore(value: 0)
        let accepted = stopped.withLock { isStopped -> Bool in
            if isStopped { return false }
            jobs.withLock {
                $0.append {
                    result = Result { try work() }
                    done.signal()
                }
            }
            return true
        }
        guard accepted else { throw SystemError("tracer thread", .ESRCH) }
        available.signal()
        done.wait()
        return try result!.get()
    }

    /// Ends the thread after the queued jobs.
    func stop() {
        let first = stopped.withLock { s -> Bool in defer { s = true }; return !s }
        if first { available.signal() }  // an empty queue ends the loop
    }
}

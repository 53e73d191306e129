import CMemhaulSignals
import Foundation
import MemhaulSender
import Synchronization

/// SIGINT, SIGTERM and SIGHUP for the commands that hold targets (`migrate`,
/// `sender`) and for the receiver: one dedicated thread takes them with
/// sigwait(2).
///
/// Why not signal handlers or swift-service-lifecycle: memhaul's work runs on
/// plain threads blocked in syscalls (ptrace waits, TLS reads, usleep pacing).
/// A constructor in CMemhaulSignals blocks the three signals before main, so
/// every thread inherits the blocked mask: no syscall anywhere gets EINTR, no
/// default action can kill the process between two steps of a migration, and
/// the reaction runs in ordinary thread context (it may lock, log, cancel a
/// migration and join threads) rather than in an async-signal handler.
/// swift-service-lifecycle would bring an async ServiceGroup (and three
/// packages) to drive blocking threads it cannot interrupt; its signal source
/// is a libdispatch one, which needs the same mask discipline anyway.
enum ShutdownSignals {
    typealias Handler = @Sendable (_ signal: Int32) -> Void
    private static let handler = Mutex<Handler?>(nil)
    private static let received = Mutex<Int32?>(nil)
    private static let exiting = Mutex(false)

    /// Starts the signal thread. Until a handler is set, a signal exits at once
    /// with 128+N (nothing is held yet).
    static func start() {
        let thread = Thread {
            while true {
                let sig = cms_wait()
                if sig <= 0 { continue }
                if let h = handler.withLock({ $0 }) { h(sig) } else { exitOnce(128 + sig) }
            }
        }
        thread.name = "memhaul-signals"
        thread.start()
    }

    /// Commands without graceful shutdown: the default actions, as before.
    static func restoreDefault() { cms_unblock_in_this_thread() }

    static func onSignal(_ h: @escaping Handler) { handler.withLock { $0 = h } }

    /// Graceful shutdown on SIGINT/SIGTERM/SIGHUP: `shutdown` runs once, on its
    /// own thread, and returns the exit status. A second signal while it runs
    /// releases every held target at once and exits.
    static func onTerminate(_ shutdown: @escaping @Sendable (_ signal: Int32) -> Int32) {
        onSignal { sig in
            let first = received.withLock { r -> Bool in
                if r != nil { return false }
                r = sig
                return true
            }
            if first {
                Thread { exitOnce(shutdown(sig)) }.start()
            } else {
                let pids = TargetRelease.shared.releaseAll()
                Log.line("\(name(sig)) again: released \(pids.isEmpty ? "nothing held" : "PID " + pids.map(String.init).joined(separator: ", ")) and exiting")
                exitOnce(128 + sig)
            }
        }
    }

    /// How long a shutdown waits for migrations to thaw and untrack their targets
    /// themselves before it releases them directly.
    static let graceSeconds = 5.0

    /// Called by the main thread when its work ended: if a shutdown runs, it
    /// decides the exit status and message, so wait for it to exit the process.
    static func parkIfShuttingDown() {
        guard received.withLock({ $0 }) != nil else { return }
        while true { pause() }
    }

    /// The signal that started a shutdown, if one did.
    static var receivedSignal: Int32? { received.withLock { $0 } }

    /// exit(2) from exactly one thread; any other caller parks until the process is gone.
    static func exitOnce(_ status: Int32) -> Never {
        let first = exiting.withLock { e -> Bool in defer { e = true }; return !e }
        if first { exit(status) }
        while true { pause() }
    }

    static func name(_ sig: Int32) -> String {
        switch sig {
        case SIGINT: return "SIGINT"
        case SIGTERM: return "SIGTERM"
        case SIGHUP: return "SIGHUP"
        default: return "signal \(sig)"
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A thread that blocks the way signal-driven event loops do and counts the
/// EINTRs it gets: `sigtimedwait` on a blocked SIGUSR2 (1 s timeouts). Without
/// a signal handler it should never see EINTR, but after a SIGSTOP/SIGCONT it
/// does, as `epoll_wait` does (signal(7), "Interruption of system calls and
/// library functions by stop signals"): the cost a SIGSTOP throttle puts on a
/// real program, which a cgroup CPU quota does not. (`epoll_wait` is not in
/// Swift's Glibc module.)
final class EINTRProbe: Sendable {
    enum Kind: String, CaseIterable { case sigtimedwait }

    let kinds: [Kind]
    /// EINTR returns, and waits that ended otherwise (timeouts), over all probes.
    let interrupted = Atomic<Int>(0)
    let completed = Atomic<Int>(0)

    init(kinds: [Kind]) { self.kinds = kinds }

    func start() {
        for kind in kinds {
            spawnThread { [self] in
                switch kind {
                case .sigtimedwait: sigtimedwaitLoop()
                }
            }
        }
    }

    private func count(_ result: Int32) {
        if result < 0 && errno == EINTR { interrupted.add(1, ordering: .relaxed) } else { completed.add(1, ordering: .relaxed) }
    }

    private func sigtimedwaitLoop() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGUSR2)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        var timeout = timespec(tv_sec: 1, tv_nsec: 0)
        while true { count(sigtimedwait(&set, nil, &timeout)) }
    }

    /// `"eintr":N,"waits":M` for JSON lines.
    var fields: String {
        "\"eintr\":\(interrupted.load(ordering: .relaxed)),\"waits\":\(completed.load(ordering: .relaxed))"
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CMemhaulLinux
import MemhaulSystem

/// What `waitpid(2)` reported for a traced thread.
enum TraceeStop: Equatable {
    /// Syscall-entry or syscall-exit stop (`SIGTRAP | 0x80` with PTRACE_O_TRACESYSGOOD).
    case syscall
    /// PTRACE_EVENT_STOP: our PTRACE_INTERRUPT, or a group-stop (`signal` is then the stop signal).
    case eventStop(signal: Int32)
    /// Signal-delivery-stop: `signal` is about to be delivered; we decide whether it is.
    case signalDelivery(signal: Int32)
    /// Any other ptrace event (not enabled by memhaul, reported for completeness).
    case otherEvent(event: Int32, signal: Int32)
    case exited(code: Int32)
    case killed(signal: Int32)

    init(status: Int32) {
        if cmh_wifexited(status) != 0 {
            self = .exited(code: cmh_wexitstatus(status))
        } else if cmh_wifsignaled(status) != 0 {
            self = .killed(signal: cmh_wtermsig(status))
        } else {
            let sig = cmh_wstopsig(status)
            let event = cmh_wptrace_event(status)
            if event == cmh_PTRACE_EVENT_STOP {
                self = .eventStop(signal: sig)
            } else if event != 0 {
                self = .otherEvent(event: event, signal: sig)
            } else if sig == SIGTRAP | 0x80 {
                self = .syscall
            } else {
                self = .signalDelivery(signal: sig)
            }
        }
    }

    var isGone: Bool {
        switch self {
        case .exited, .killed: return true
        default: return false
        }
    }

    var statusText: String {
        switch self {
        case .exited(let code): return "exit code \(code)"
        case .killed(let sig): return "killed by signal \(sig)"
        default: return "\(self)"
        }
    }
}

/// One thread traced with `PTRACE_SEIZE`.
///
/// ptrace binds the tracer to the calling *thread*: every method must be called
/// from the thread that seized, which is why injection is one synchronous call.
/// The seize uses PTRACE_O_TRACESYSGOOD and deliberately not PTRACE_O_EXITKILL:
/// if the agent dies, the target must live on.
struct Tracee {
    let tid: Int32

    /// `ptrace(PTRACE_SEIZE)`; EPERM and ESRCH become readable ``AttachError``s.
    static func seize(_ tid: Int32) throws -> Tracee {
        do {
            _ = try Syscall.run("ptrace(SEIZE)") { cmh_ptrace_seize(tid, cmh_PTRACE_O_TRACESYSGOOD) }
        } catch let error {
            if error.errno == .ESRCH { throw AttachError.noSuchProcess(pid: tid) }
            if error.errno == .EPERM {
                if let tracer = tracerPid(of: tid), tracer != 0 { throw AttachError.alreadyTraced(pid: tid, tracer: tracer) }
                throw AttachError.permissionDenied(pid: tid)
            }
            throw error
        }
        return Tracee(tid: tid)
    }

    /// `TracerPid:` of /proc/PID/status.
    static func tracerPid(of pid: Int32) -> Int32? {
        guard let text = try? ProcFS.readString("/proc/\(pid)/status") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("TracerPid:") {
            return Int32(line.dropFirst("TracerPid:".count).trimmingSpaces())
        }
        return nil
    }

    /// `ptrace(PTRACE_INTERRUPT)`: asks for a PTRACE_EVENT_STOP.
    func interrupt() throws {
        _ = try Syscall.run("ptrace(INTERRUPT)") { cmh_ptrace_interrupt(tid) }
    }

    /// `waitpid(tid, __WALL)`.
    func wait() throws -> TraceeStop {
        var status: Int32 = 0
        _ = try Syscall.run("waitpid") { cmh_waitpid_all(tid, &status, 0) }
        return TraceeStop(status: status)
    }

    /// `waitpid(tid, WNOHANG | __WALL)`: nil while the tracee is running.
    func poll() throws -> TraceeStop? {
        var status: Int32 = 0
        let r = try Syscall.run("waitpid") { cmh_waitpid_all(tid, &status, WNOHANG) }
        return r == 0 ? nil : TraceeStop(status: status)
    }

    /// `ptrace(PTRACE_GETSIGINFO)` at a signal-delivery-stop: the raw siginfo_t.
    func signalInfo() throws -> [UInt8] {
        var info = [UInt8](repeating: 0, count: MemoryLayout<siginfo_t>.size)
        _ = try info.withUnsafeMutableBytes { buf in
            try Syscall.run("ptrace(GETSIGINFO)") { cmh_ptrace_getsiginfo(tid, buf.baseAddress) }
        }
        return info
    }

    /// `ptrace(PTRACE_SETSIGINFO)` at a signal-delivery-stop.
    func setSignalInfo(_ info: [UInt8]) throws {
        _ = try info.withUnsafeBytes { buf in
            try Syscall.run("ptrace(SETSIGINFO)") { cmh_ptrace_setsiginfo(tid, buf.baseAddress) }
        }
    }

    /// `ptrace(PTRACE_GETREGS)`.
    func registers() throws -> user_regs_struct {
        var regs = user_regs_struct()
        _ = try Syscall.run("ptrace(GETREGS)") { cmh_ptrace_getregs(tid, &regs) }
        return regs
    }

    /// `ptrace(PTRACE_SETREGS)`.
    func setRegisters(_ regs: user_regs_struct) throws {
        var copy = regs
        _ = try Syscall.run("ptrace(SETREGS)") { cmh_ptrace_setregs(tid, &copy) }
    }

    /// `ptrace(PTRACE_SYSCALL)`: run to the next syscall entry/exit stop.
    func resumeToSyscall(signal: Int32 = 0) throws {
        _ = try Syscall.run("ptrace(SYSCALL)") { cmh_ptrace_syscall(tid, signal) }
    }

    /// `ptrace(PTRACE_CONT)`.
    func resume(signal: Int32 = 0) throws {
        _ = try Syscall.run("ptrace(CONT)") { cmh_ptrace_cont(tid, signal) }
    }

    /// `ptrace(PTRACE_DETACH)`; `signal` is delivered only from a signal-delivery-stop.
    func detach(signal: Int32 = 0) throws {
        _ = try Syscall.run("ptrace(DETACH)") { cmh_ptrace_detach(tid, signal) }
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return s
    }
}

import MemhaulSystem

/// Why attaching to (or injecting into) a foreign process failed. Each message is
/// one readable line that says what to do.
public enum AttachError: Error, Hashable, Sendable, CustomStringConvertible {
    /// ESRCH: no such process (or it exited before we could trace it).
    case noSuchProcess(pid: Int32)
    /// EPERM from `ptrace(SEIZE)`.
    case permissionDenied(pid: Int32)
    /// Another tracer (gdb, strace, a debugger) already holds the process.
    case alreadyTraced(pid: Int32, tracer: Int32)
    /// The target exited or was killed while we were injecting a system call.
    case targetExited(pid: Int32, status: String)
    /// VMAs of the target already carry a userfaultfd write-protect registration.
    case alreadyTracked(pid: Int32)
    /// The running kernel lacks something memhaul needs; the text names it and the fix.
    case missingKernelFeature(String)
    /// A system call we injected into the target returned `-errno`.
    case injectedCallFailed(call: String, errno: Errno)
    /// No `syscall` instruction (0f 05) found in the target's executable memory.
    case noSyscallInstruction(pid: Int32)
    /// The target is not a 64-bit x86 process (or not a user process at all).
    case unsupportedTarget(pid: Int32, why: String)
    /// A ptrace stop we cannot make sense of.
    case unexpectedStop(pid: Int32, status: Int32)

    public var description: String {
        switch self {
        case .noSuchProcess(let pid):
            return "cannot attach to PID \(pid): no such process"
        case .permissionDenied(let pid):
            return "cannot trace PID \(pid): permission denied (need root or CAP_SYS_PTRACE; check kernel.yama.ptrace_scope)"
        case .alreadyTraced(let pid, let tracer):
            return "cannot trace PID \(pid): it is already traced by PID \(tracer) (a debugger or strace)"
        case .targetExited(let pid, let status):
            return "PID \(pid) exited while memhaul was attaching (\(status)): ESRCH"
        case .alreadyTracked(let pid):
            return "PID \(pid) already has userfaultfd write-protect registered (another memhaul sender or a uffd user)"
        case .missingKernelFeature(let what):
            return what
        case .injectedCallFailed(let call, let errno):
            return "\(call) failed inside the target: \(errno)"
        case .noSyscallInstruction(let pid):
            return "cannot inject into PID \(pid): no syscall instruction found in its vdso or executable mappings"
        case .unsupportedTarget(let pid, let why):
            return "cannot attach to PID \(pid): \(why)"
        case .unexpectedStop(let pid, let status):
            return "PID \(pid) stopped unexpectedly during injection (wait status 0x\(String(status, radix: 16)))"
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CMemhaulLinux
import MemhaulSystem

/// Makes a running process execute system calls of our choosing, without
/// writing to its code: the registers are pointed at an existing `syscall`
/// instruction (0f 05) and restored exactly afterwards.
///
/// Sequence: PTRACE_SEIZE the thread-group leader, PTRACE_INTERRUPT, wait for
/// the PTRACE_EVENT_STOP, save registers; per call set `rax`/args, `orig_rax = -1`
/// (so the kernel's syscall-restart logic ignores the injected state) and `rip`,
/// run to the syscall-entry then syscall-exit stop, read `rax`. ``finish()``
/// restores the saved registers, then lets the thread pass once more through a
/// PTRACE_EVENT_STOP in the kernel's signal path before detaching: that is
/// where the kernel applies its own restart logic to the restored
/// `rax = -ERESTART*`, `orig_rax = nr`, so an interrupted nanosleep/read/epoll_wait
/// is restarted exactly as after any ptrace attach.
///
/// Signals dequeued by the target while we inject are held back (delivering
/// them would run a handler on our injected state), then re-sent to the thread
/// with tgkill after the registers are restored; at their signal-delivery-stop
/// the original siginfo (sender, si_code, si_value) is put back with
/// PTRACE_SETSIGINFO, so the target sees the signal it was sent.
///
/// Between calls the thread holds its original registers (restored at each
/// syscall-exit stop), so an agent killed between calls leaves a target that
/// runs on correctly; only a kill inside one injected call leaves it with ours.
///
/// ptrace binds the tracer to a thread: use an injector on one thread only,
/// from ``begin(pid:)`` to ``finish()``.
final class SyscallInjector {
    let pid: Int32
    private let tracee: Tracee
    private let saved: user_regs_struct
    /// Address of the `syscall` instruction we run.
    let syscallInstruction: UInt64
    /// The target was group-stopped (SIGSTOP/SIGTSTP) when we seized it; it is
    /// stopped again after detach.
    let wasGroupStopped: Bool
    /// A signal the target dequeued during injection, with its siginfo_t.
    struct HeldSignal {
        var signal: Int32
        var info: [UInt8]?
    }
    /// Signals the target dequeued during injection, re-delivered by ``finish()``.
    private(set) var held: [HeldSignal] = []
    var heldSignals: [Int32] { held.map(\.signal) }
    private var finished = false

    private init(pid: Int32, tracee: Tracee, saved: user_regs_struct, syscallInstruction: UInt64, groupStopped: Bool, held: [HeldSignal]) {
        self.pid = pid
        self.tracee = tracee
        self.saved = saved
        self.syscallInstruction = syscallInstruction
        self.wasGroupStopped = groupStopped
        self.held = held
    }

    /// Seizes `thread` of `pid` (by default the thread-group leader, or a live
    /// thread if the leader has exited) and stops it at a PTRACE_EVENT_STOP.
    static func begin(pid: Int32, thread: Int32? = nil) throws -> SyscallInjector {
        let tracee = try Tracee.seize(try thread ?? injectableThread(of: pid))
        var held: [HeldSignal] = []
        var groupStopped = false
        do {
            try tracee.interrupt()
            // Wait for the event stop; a signal dequeued first is held back.
            waiting: while true {
                let stop = try tracee.wait()
                switch stop {
                case .eventStop(let sig):
                    groupStopped = sig != SIGTRAP
                    break waiting
                case .signalDelivery(let sig):
                    held.append(HeldSignal(signal: sig, info: try? tracee.signalInfo()))
                    try tracee.resume()
                case .syscall, .otherEvent:
                    try tracee.resume()
                case .exited, .killed:
                    throw AttachError.targetExited(pid: pid, status: stop.statusText)
                }
            }
        } catch let error as SystemError where error.errno == .ESRCH {
            throw AttachError.noSuchProcess(pid: pid)
        }
        do {
            let regs = try tracee.registers()
            // 0x33 is the 64-bit user code segment; 0x23 would be a 32-bit (compat) task.
            guard regs.cs == 0x33 else {
                throw AttachError.unsupportedTarget(pid: pid, why: "not a 64-bit x86 process (cs=0x\(String(regs.cs, radix: 16)))")
            }
            let insn = try findSyscallInstruction(pid: pid, thread: tracee.tid, regs: regs)
            return SyscallInjector(pid: pid, tracee: tracee, saved: regs, syscallInstruction: insn, groupStopped: groupStopped, held: held)
        } catch {
            // Stopped at the event stop with untouched registers: a plain detach is exact.
            for h in held { _ = cmh_tgkill(pid, tracee.tid, h.signal) }
            try? tracee.detach()
            throw error
        }
    }

    /// Runs system call `nr` in the target; returns the raw result (`-errno` on failure).
    func call(_ nr: Int, _ args: UInt64...) throws -> Int64 {
        precondition(!finished, "injector already finished")
        do {
            return try inject(nr, args)
        } catch let error as SystemError where error.errno == .ESRCH {
            throw targetGone()
        }
    }

    /// ptrace answers ESRCH once a stopped tracee was woken by SIGKILL: collect its
    /// exit status (only SIGKILL can wake it, so this wait ends) and say so.
    private func targetGone() -> AttachError {
        finished = true
        let status = (try? tracee.wait())?.statusText ?? "no longer traceable"
        return AttachError.targetExited(pid: pid, status: status)
    }

    private func inject(_ nr: Int, _ args: [UInt64]) throws -> Int64 {
        precondition(args.count <= 6)
        let a = args + Array(repeating: 0, count: 6 - args.count)
        var regs = saved
        regs.rax = UInt64(nr)
        regs.rdi = a[0]
        regs.rsi = a[1]
        regs.rdx = a[2]
        regs.r10 = a[3]
        regs.r8 = a[4]
        regs.r9 = a[5]
        regs.orig_rax = UInt64.max  // -1: not in a syscall, no restart fix-up of this state
        regs.rip = syscallInstruction
        try tracee.setRegisters(regs)
        try runToSyscallStop()  // entry
        let entry = try tracee.registers()
        guard entry.orig_rax == UInt64(nr) else {
            throw AttachError.unexpectedStop(pid: pid, status: Int32(truncatingIfNeeded: entry.orig_rax))
        }
        try runToSyscallStop()  // exit
        let result = Int64(bitPattern: try tracee.registers().rax)
        // Put the original registers back at once, at the syscall-exit stop: should
        // we die now (SIGKILL), the kernel detaches the thread and it leaves the
        // kernel through the signal path with its own registers (the restart logic
        // applies to an interrupted call), instead of running on from the borrowed
        // `syscall` instruction with ours. What stays unsafe is the call itself:
        // from the PTRACE_SETREGS above to this stop (one system call).
        try tracee.setRegisters(saved)
        return result
    }

    private func runToSyscallStop() throws {
        try tracee.resumeToSyscall()
        while true {
            let stop = try waitMappingExit()
            switch stop {
            case .syscall:
                return
            case .signalDelivery(let sig):
                held.append(HeldSignal(signal: sig, info: try? tracee.signalInfo()))
                try tracee.resumeToSyscall(signal: 0)
            case .eventStop, .otherEvent:
                // A group-stop or a repeated trap: ptrace overrides it; keep going.
                try tracee.resumeToSyscall()
            case .exited, .killed:
                finished = true
                throw AttachError.targetExited(pid: pid, status: stop.statusText)
            }
        }
    }

    private func waitMappingExit() throws -> TraceeStop {
        do {
            return try tracee.wait()
        } catch let error as SystemError where error.errno == .ECHILD || error.errno == .ESRCH {
            finished = true
            throw AttachError.targetExited(pid: pid, status: "no longer traceable")
        }
    }

    /// Restores the saved registers and detaches (see the type's comment for why
    /// the detour through one more event stop). Idempotent.
    func finish() throws {
        guard !finished else { return }
        do {
            try restoreAndDetach()
        } catch let error as SystemError where error.errno == .ESRCH {
            throw targetGone()
        }
    }

    private func restoreAndDetach() throws {
        finished = true
        try tracee.setRegisters(saved)
        var pending = held
        held.removeAll()
        // Queued to this thread while traced, so even an ignored one reaches a delivery stop.
        for h in pending { _ = cmh_tgkill(pid, tracee.tid, h.signal) }
        try tracee.interrupt()
        try tracee.resume()
        var stop = try tracee.wait()
        while true {
            switch stop {
            case .eventStop:
                guard !pending.isEmpty else {
                    try tracee.detach()
                    return
                }
                // Let get_signal dequeue the re-sent signals (bounded: should one never
                // come, take the thread back and detach; it stays queued as sent).
                try tracee.resume()
                if let next = try pollStop(attempts: 2000) {
                    stop = next
                    continue
                }
                pending.removeAll()
                try tracee.interrupt()
            case .signalDelivery(let sig):
                if let i = pending.firstIndex(where: { $0.signal == sig }) {
                    if let info = pending[i].info { try? tracee.setSignalInfo(info) }
                    pending.remove(at: i)
                }
                // In the signal path: resuming or detaching with the signal delivers it,
                // with the kernel's restart logic applied to the restored registers.
                if pending.isEmpty {
                    try tracee.detach(signal: sig)
                    return
                }
                try tracee.resume(signal: sig)
            case .syscall, .otherEvent:
                try tracee.resume()
            case .exited, .killed:
                return
            }
            stop = try tracee.wait()
        }
    }

    /// Polls for the next stop, 1 ms apart.
    private func pollStop(attempts: Int) throws -> TraceeStop? {
        for _ in 0..<attempts {
            if let stop = try tracee.poll() { return stop }
            usleep(1000)
        }
        return nil
    }

    deinit {
        if !finished { try? finish() }
    }

    // MARK: - finding a syscall instruction

    /// A `syscall` instruction in the target, found by reading only: at `rip - 2`
    /// when stopped in a system call, else in the [vdso], else in any executable mapping.
    static func findSyscallInstruction(pid: Int32, thread: Int32, regs: user_regs_struct) throws -> UInt64 {
        let mem = try FileDescriptor.open(ProcMaps.path(pid, thread, "mem"), O_RDONLY)
        var two: (UInt8, UInt8) = (0, 0)
        if Int64(bitPattern: regs.orig_rax) >= 0, regs.rip >= 2 {
            let n = try? withUnsafeMutableBytes(of: &two) { try mem.pread(into: $0, at: Int64(regs.rip - 2)) }
            if n == 2, two == (0x0F, 0x05) { return regs.rip - 2 }
        }
        let maps = try ProcMaps.read(pid: pid, thread: thread)
        let candidates =
            maps.filter { $0.path == "[vdso]" }
            + maps.filter { $0.permissions.contains(.execute) && !$0.isPseudo }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        for entry in candidates {
            var address = entry.start
            while address < entry.end {
                let want = Int(min(UInt64(buffer.count), entry.end - address))
                let got = buffer.withUnsafeMutableBytes { buf -> Int in
                    (try? mem.pread(into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<want]), at: Int64(address))) ?? 0
                }
                if got < 2 { break }
                for i in 0..<(got - 1) where buffer[i] == 0x0F && buffer[i + 1] == 0x05 {
                    return address + UInt64(i)
                }
                address += UInt64(got - 1)  // overlap one byte so a split pair is found
            }
        }
        throw AttachError.noSyscallInstruction(pid: pid)
    }

    /// The thread to inject into: the thread-group leader, or, when the leader has
    /// exited (pthread_exit in main leaves a zombie leader), the first live thread.
    static func injectableThread(of pid: Int32) throws -> Int32 {
        guard let state = ProcFS.state(pid: pid), state == "Z" || state == "X" else { return pid }
        let tasks = (try? Directory.entries("/proc/\(pid)/task")) ?? []
        for name in tasks {
            guard let tid = Int32(name), tid != pid else { continue }
            if let s = ProcFS.state(pid: pid, thread: tid), s != "Z" && s != "X" { return tid }
        }
        throw AttachError.unsupportedTarget(pid: pid, why: "it is a zombie")
    }
}

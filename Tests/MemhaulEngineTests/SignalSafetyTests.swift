import Foundation
import Glibc
import Testing
import MemhaulTestSupport
import MemhaulSystem

/// Signals to memhaul's own processes never abandon a target: SIGINT/SIGTERM to
/// `memhaul migrate` and SIGTERM to the sender agent in each phase end with the
/// target running and untracked; SIGKILL of the agent inside the syscall
/// injection leaves a target that runs on correctly. All against real
/// processes: `memhaul receive`, `memhaul migrate` / `memhaul sender`, workloads.
@Suite(.serialized) struct SignalSafetyTests {
    func threadStates(_ pid: pid_t) -> [Character] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.compactMap { ProcFS.state(pid: pid, thread: Int32($0)!) }
    }
    /// Every thread stopped: `t` (the ptrace hold) or `T` (a group stop, the old freezer).
    func frozen(_ pid: pid_t) -> Bool { let s = threadStates(pid); return !s.isEmpty && s.allSatisfy { $0 == "t" || $0 == "T" } }
    func anyStopped(_ pid: pid_t) -> Bool { threadStates(pid).contains { $0 == "t" || $0 == "T" } }
    func tracer(_ pid: pid_t) -> String? {
        readProcFile("/proc/\(pid)/status")?.split(separator: "\n").first { $0.hasPrefix("TracerPid:") }
            .map { $0.dropFirst(10).trimmingCharacters(in: .whitespaces) }
    }

    /// After memhaul has gone: the target runs, has no tracer, no userfaultfd, no uffd-wp.
    func expectReleased(_ workload: ChildProcess, _ context: String) {
        #expect(!anyStopped(workload.pid), "\(context): target left stopped: \(threadStates(workload.pid))")
        #expect(tracer(workload.pid) == "0", "\(context): still traced")
        #expect(!workload.holdsUserfaultfd, "\(context): target holds a userfaultfd")
        #expect(!workload.hasUffdWriteProtect, "\(context): uffd-wp left on its mappings")
    }

    // MARK: - memhaul migrate

    /// SIGINT (Ctrl-C), SIGTERM and SIGHUP (the terminal went away) to `memhaul migrate`
    /// while the target is frozen (stop-and-copy of 256 MiB over a 20 MB/s cap: the
    /// frozen phase lasts ~13 s).
    @Test(arguments: [SIGINT, SIGTERM, SIGHUP])
    func migrateCommandReleasesAFrozenTargetOnSignal(_ sig: Int32) throws {
        let pki = try TestPKI()
        let receiver = try ReceiverProcess(pki: pki)
        let workload = try startWorkload(["--size", "256M", "--threads", "2", "--rate", "2000"])
        let migrate = try ChildProcess([builtBinary("memhaul")] + [
            "migrate", "--pid", "\(workload.pid)", "--to", "127.0.0.1:\(receiver.port)", "--certs", pki.directory,
            "--max-rounds", "0", "--max-bandwidth", "20000000", "--after", "resume", "--id", "sig-\(sig)"])
        SafetyBound.eventually("the target frozen by the stop-and-copy", every: 1_000) { frozen(workload.pid) }
        migrate.kill(sig)
        let code = migrate.waitExitCode()
        #expect(code == 128 + sig, "memhaul migrate exits 128+N after releasing the target (exit code \(code.map(String.init) ?? "none: killed by a signal"))")
        expectReleased(workload, "migrate after \(sig)")
        // And it runs: its writers use CPU again.
        #expect(kill(workload.pid, 0) == 0)
    }

    // MARK: - the sender agent

    final class Agent {
        let child: ChildProcess
        let socket: String
        init(pki: TestPKI?) throws {
            socket = temporaryDirectory("sender") + "/sender.sock"
            child = try ChildProcess([builtBinary("memhaul")] + ["sender", "--control", socket] + (pki.map { ["--certs", $0.directory] } ?? ["--insecure"]))
            _ = try child.expectLine(containing: "ready")
        }

        /// One control request over the Unix socket.
        func request(_ op: String, _ args: [String: Any] = [:]) throws -> [String: Any] {
            let fd = socket_unix()
            defer { close(fd) }
            SafetyBound.boundReads(fd: fd)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { buf in
                for (i, b) in socket.utf8.enumerated() where i < buf.count - 1 { buf[i] = b }
            }
            let ok = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard ok == 0 else { throw TestSetupError("connect \(socket): \(errno)") }
            let line = try JSONSerialization.data(withJSONObject: ["id": 1, "op": op, "args": args]) + Data("\n".utf8)
            _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            var reply = Data()
            var byte: UInt8 = 0
            while read(fd, &byte, 1) == 1, byte != 0x0A { reply.append(byte) }
            guard let object = try JSONSerialization.jsonObject(with: reply) as? [String: Any] else { throw TestSetupError("bad reply") }
            guard object["ok"] as? Bool == true else { throw TestSetupError("\(op): \(object)") }
            return object["result"] as? [String: Any] ?? [:]
        }

        func status(_ id: String) -> [String: Any] {
            ((try? request("status", ["migration": id]))?["status"] as? [String: Any]) ?? [:]
        }
    }

    private static func socket_unix() -> Int32 { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0) }

    enum Phase: String, CaseIterable, Sendable { case rounds, throttled, cgroupThrottled, frozen }

    /// `systemctl stop` of the sender agent (SIGTERM) in each phase of a migration.
    @Test(arguments: Phase.allCases)
    func senderAgentReleasesItsTargetsOnSIGTERM(_ phase: Phase) throws {
        let pki = try TestPKI()
        let receiver = try ReceiverProcess(pki: pki)
        let agent = try Agent(pki: pki)
        let workload: ChildProcess
        var args: [String: Any] = ["to": "127.0.0.1:\(receiver.port)", "id": "agent-\(phase)", "after": "resume"]
        switch phase {
        case .rounds:
            workload = try startWorkload(["--size", "128M", "--threads", "2", "--rate", "0"])
            args.merge(["downtime_limit_ms": 0.001, "auto_converge": false, "max_bandwidth_bytes_per_second": 20e6]) { $1 }
        case .throttled, .cgroupThrottled:
            // A hot set rewritten as fast as two threads can, over an 8 MB/s link: auto-converge throttles.
            workload = try startWorkload(["--size", "16M", "--threads", "2", "--rate", "0", "--pattern", "hot:0.5"])
            args.merge(["downtime_limit_ms": 0.001, "max_rounds": 1000, "max_bandwidth_bytes_per_second": 8e6,
                        "throttle": phase == .throttled ? "signals" : "cgroup"]) { $1 }
        case .frozen:
            workload = try startWorkload(["--size", "256M", "--threads", "2", "--rate", "2000"])
            args.merge(["max_rounds": 0, "max_bandwidth_bytes_per_second": 20e6]) { $1 }
        }
        args["pid"] = Int(workload.pid)
        let cgroupBefore = readProcFile("/proc/\(workload.pid)/cgroup")
        _ = try agent.request("migrate", args)
        let id = "agent-\(phase)"
        switch phase {
        case .rounds:
            SafetyBound.eventually("rounds under way", every: 1_000) { workload.hasUffdWriteProtect && agent.status(id)["state"] as? String == "active" }
        case .throttled:
            SafetyBound.eventually("auto-converge throttling", every: 1_000) { ((agent.status(id)["counters"] as? [String: Any])?["throttle_percent"] as? Int ?? 0) > 0 }
            // Inside a stopped slice of the duty cycle: the worst moment to stop the agent.
            SafetyBound.eventually("the target in a throttle stop", every: 1_000) { workload.state == "T" }
        case .cgroupThrottled:
            SafetyBound.eventually("auto-converge throttling", every: 1_000) { ((agent.status(id)["counters"] as? [String: Any])?["throttle_percent"] as? Int ?? 0) > 0 }
            #expect(agent.status(id)["throttle_mechanism"] as? String == "cgroup")
            #expect(readProcFile("/proc/\(workload.pid)/cgroup") != cgroupBefore, "the target in the throttle's cgroup")
        case .frozen:
            SafetyBound.eventually("the target frozen", every: 1_000) { frozen(workload.pid) }
        }
        agent.child.kill(SIGTERM)
        let code = agent.child.waitExitCode()
        #expect(code == 128 + SIGTERM, "the agent exits 143 after cancelling (exit code \(code.map(String.init) ?? "none: killed by a signal"))")
        expectReleased(workload, "agent SIGTERM while \(phase)")
        #expect(readProcFile("/proc/\(workload.pid)/cgroup") == cgroupBefore, "the target back in its cgroup")
    }

    /// SIGTERM while the receiver is stopped and the sender is blocked in a send:
    /// the cancellation still ends the migration (it closes the connection) and the
    /// frozen target is released; exit 143.
    @Test func senderAgentReleasesAFrozenTargetWhenItsMigrationIsStuck() throws {
        // Plain TCP: a blocking write(2) on the full socket is where it sticks.
        let receiver = try ReceiverProcess(pki: nil)
        let agent = try Agent(pki: nil)
        let workload = try startWorkload(["--size", "512M", "--threads", "2", "--rate", "2000"])
        _ = try agent.request("migrate", ["pid": Int(workload.pid), "to": "127.0.0.1:\(receiver.port)", "id": "stuck-1",
                                          "max_rounds": 0, "after": "resume"])
        SafetyBound.eventually("the target frozen", every: 1_000) { frozen(workload.pid) }
        receiver.child.kill(SIGSTOP)
        defer { receiver.child.kill(SIGCONT) }
        // The sender's socket stuck: megabytes queued and unacknowledged towards the
        // stopped receiver (tx_queue in /proc/net/tcp), so its send cannot return.
        var seen = ""
        SafetyBound.eventually("the sender stuck in a send", every: 1_000) {
            let port = String(format: "%04X", receiver.port)
            let lines = (readProcFile("/proc/net/tcp") ?? "").split(separator: "\n").dropFirst()
            return lines.contains { line in
                let f = line.split(separator: " ")
                guard f.count > 4, f[2].hasSuffix(":" + port) else { return false }
                let queues = f[4].split(separator: ":")
                guard let tx = UInt64(queues[0], radix: 16) else { return false }
                seen = "tx_queue \(tx)"
                return tx >= 1 << 20
            } && senderBlocked(agent.child.pid)
        }
        #expect(frozen(workload.pid), "still frozen while stuck in \(seen)")
        agent.child.kill(SIGTERM)
        let code = agent.child.waitExitCode()
        #expect(code == 128 + SIGTERM, "exit code \(code.map(String.init) ?? "none: killed by a signal")")
        expectReleased(workload, "agent SIGTERM with a stuck migration")
    }

    /// Some thread of `pid` sleeps in a TCP send on a full socket
    /// (sk_stream_wait_memory, which sleeps in wait_woken).
    func senderBlocked(_ pid: pid_t) -> Bool {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.contains { t in
            let stack = readProcFile("/proc/\(pid)/task/\(t)/stack") ?? ""
            return stack.contains("sk_stream_wait_memory")
        }
    }

    /// Every thread of the agent blocks SIGINT/SIGTERM/SIGHUP (only the signal
    /// thread takes them, with sigwait): no default action can end it mid-step.
    @Test func everyAgentThreadBlocksTheShutdownSignals() throws {
        let agent = try Agent(pki: try TestPKI())
        let want: UInt64 = (1 << (UInt64(SIGINT) - 1)) | (1 << (UInt64(SIGTERM) - 1)) | (1 << (UInt64(SIGHUP) - 1))
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(agent.child.pid)/task")
        #expect(tasks.count > 1)
        var waiting = 0
        for t in tasks {
            // The signal thread, inside sigwait, has the set unblocked (the kernel's sigtimedwait).
            if (readProcFile("/proc/\(agent.child.pid)/task/\(t)/wchan") ?? "").contains("sigtimedwait") { waiting += 1; continue }
            let status = readProcFile("/proc/\(agent.child.pid)/task/\(t)/status") ?? ""
            let blk = status.split(separator: "\n").first { $0.hasPrefix("SigBlk:") }.flatMap { UInt64($0.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16) } ?? 0
            #expect(blk & want == want, "thread \(t) SigBlk \(String(blk, radix: 16))")
        }
        #expect(waiting == 1, "one signal thread")
        agent.child.kill(SIGTERM)
        #expect(agent.child.waitExitCode() == 0, "an idle agent stops cleanly")
    }

    /// SIGHUP still reloads the receiver's policy and never ends it.
    @Test func receiverSurvivesSIGHUP() throws {
        let receiver = try ReceiverProcess(pki: try TestPKI())
        receiver.child.kill(SIGHUP)
        receiver.child.kill(SIGHUP)
        receiver.child.kill(SIGTERM)
        #expect(receiver.child.waitExitCode() == 0)
    }

    // MARK: - SIGKILL inside the syscall injection

    /// A target whose main thread computes in user mode (so the injection borrows a
    /// `syscall` instruction elsewhere, in the vdso) and prints `tick N` as it goes:
    /// wrong registers after the injection would crash it or break the count.
    func startTicker() throws -> ChildProcess {
        let ticker = try ChildProcess(["/usr/bin/perl"] + ["-e", #"$| = 1; my $n = 0; my $t = 0; while (1) { if (++$n % 300000 == 0) { $t++; print "tick $t\n"; } }"#])
        _ = try ticker.expectLine(containing: "tick 1")
        return ticker
    }

    /// The ticker keeps counting: the next ticks are consecutive.
    func expectTicking(_ ticker: ChildProcess, _ context: String) {
        var last: Int?
        for _ in 0..<3 {
            guard let line = try? ticker.readLine(), line.hasPrefix("tick "), let n = Int(line.dropFirst(5)) else {
                Issue.record("\(context): the target stopped ticking (exit status \(ticker.waitExitCode().map(String.init) ?? "killed by a signal"))")
                return
            }
            if let last { #expect(n == last + 1, "\(context): count broken \(last) → \(n)") }
            last = n
        }
    }

    /// `memhaul migrate` paused (debug hook) at `step` of the attach to `target`, then SIGKILLed.
    func killDuringInjection(at step: String, target: ChildProcess) throws {
        let receiver = try ReceiverProcess(pki: nil)
        let migrate = try ChildProcess([builtBinary("memhaul")] + [
            "migrate", "--pid", "\(target.pid)", "--to", "127.0.0.1:\(receiver.port)", "--insecure"],
            environment: ["MEMHAUL_TEST_PAUSE_INJECTION": step])
        _ = try migrate.expectLine(containing: "injection paused at \(step)")
        let tracerThread = tracer(target.pid) ?? "0"
        #expect(FileManager.default.fileExists(atPath: "/proc/\(migrate.pid)/task/\(tracerThread)"), "paused while memhaul traces the target")
        migrate.kill(SIGKILL)
        _ = migrate.waitExitCode()
        SafetyBound.eventually("the tracer gone", every: 1_000) { tracer(target.pid) != tracerThread }
    }

    /// Killed after the injected close: the registers were put back at the
    /// syscall-exit stop, so the target runs on exactly (a computing thread keeps
    /// counting; a workload blocked in its control read answers); nothing of
    /// memhaul is left in it.
    @Test func sigkillBetweenInjectedCallsLeavesTheTargetCorrect() throws {
        let ticker = try startTicker()
        try killDuringInjection(at: "after-close", target: ticker)
        expectTicking(ticker, "SIGKILL after the injected close")
        expectReleased(ticker, "SIGKILL after the injected close")

        let workload = try startWorkload(["--size", "16M", "--threads", "2", "--rate", "1000"], control: true)
        try killDuringInjection(at: "after-close", target: workload)
        let digest = try LiveMigrationCommand.run(workload, "digest")
        #expect(digest["event"] as? String == "digest")
        expectReleased(workload, "SIGKILL after the injected close")
    }

    /// Killed between the injected userfaultfd and the injected close: the target
    /// runs on correctly but keeps one idle userfaultfd descriptor (never
    /// registered: no page is write-protected). Documented, not fixable from outside:
    /// the descriptor can only be closed by a call in the target.
    @Test func sigkillBetweenUserfaultfdAndCloseLeavesOneIdleDescriptor() throws {
        let ticker = try startTicker()
        try killDuringInjection(at: "after-userfaultfd", target: ticker)
        expectTicking(ticker, "SIGKILL after the injected userfaultfd")
        #expect(!anyStopped(ticker.pid))
        #expect(ticker.holdsUserfaultfd, "the documented leftover: one idle uffd")
        #expect(!ticker.hasUffdWriteProtect, "nothing registered")
    }
}

enum LiveMigrationCommand {
    static func run(_ workload: ChildProcess, _ line: String) throws -> [String: Any] {
        try LiveMigration.command(workload, line, state: "after the kill")
    }
}

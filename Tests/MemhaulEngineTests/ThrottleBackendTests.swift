import Foundation
import Glibc
import MemhaulKernel
import MemhaulSystem
import MemhaulTestSupport
import Testing
@testable import MemhaulSender

/// The two auto-converge throttles against real targets and the real kernel:
/// the cgroup CPU quota slows the target without one EINTR in it, the SIGSTOP
/// duty cycle interrupts its blocking calls; every way out puts the target's
/// cgroup and CPU quota back as they were.
@Suite(.serialized) struct ThrottleBackendTests {
    /// A target writing as fast as two threads can, plus the EINTR probe.
    func busyTarget(size: String = "16M", pattern: String = "uniform") throws -> WorkloadProcess {
        try startWorkload(["--size", size, "--threads", "2", "--rate", "0", "--pattern", pattern, "--eintr-probe", "sigtimedwait"], control: true)
    }

    /// The probe's counts: EINTRs, and waits that ended otherwise.
    func probe(_ w: WorkloadProcess) throws -> (eintr: Int, waits: Int) {
        let line = try w.command("eintr")
        let obj = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        guard let e = obj?["eintr"] as? Int, let n = obj?["waits"] as? Int else { throw TestSetupError("eintr answered \(line)") }
        return (e, n)
    }

    /// What the throttle must leave as it found it.
    struct CgroupState: Equatable {
        var membership: String
        var bandwidth: CPUCgroup.Bandwidth?
        init(_ pid: Int32) throws {
            membership = try ProcFS.readString("/proc/\(pid)/cgroup")
            bandwidth = try? CPUCgroup.of(pid: pid).bandwidth()
        }
    }

    /// Why a cgroup CPU quota cannot throttle this process's children here
    /// (no cpu controller, a cgroup v2 shared with other processes, a read-only
    /// cgroupfs); nil when it can.
    static let cgroupUnusable: String? = {
        do {
            let home = try CPUCgroup.of(pid: getpid())
            guard access(home.directory, W_OK) == 0 else { return "\(home) is not writable by this user" }
            _ = try CgroupThrottle.prepare(pid: getpid())
            return nil
        } catch {
            return "no cgroup cpu controller to use: \(error)"
        }
    }()

    /// Issue 11: with cgroup throttling the target sees no EINTR, counted by the target itself (`--eintr-probe`).
    @Test(.enabled(if: ThrottleBackendTests.cgroupUnusable == nil, Comment(rawValue: ThrottleBackendTests.cgroupUnusable ?? "")))
    func cgroupThrottleSlowsTheTargetWithoutEINTR() throws {
        let w = try busyTarget()
        let before = try CgroupState(w.pid)
        let throttle = try CgroupThrottle.prepare(pid: w.pid)
        #expect(try CgroupState(w.pid) == before, "prepare changes nothing")
        let start = try probe(w)
        try throttle.set(percent: 90)
        #expect(throttle.mechanism == .cgroup)
        let throttledAtStart = throttle.throttledPeriods() ?? 0
        // The quota acts: the kernel reports periods in which the target ran out of it.
        SafetyBound.eventually("20 throttled periods", every: 1_000) { (throttle.throttledPeriods() ?? 0) >= throttledAtStart + 20 }
        // …and the probe kept waiting (its 1 s timeouts) meanwhile.
        SafetyBound.eventually("the probe waited while throttled", every: 1_000) { ((try? probe(w).waits) ?? 0) > start.waits }
        let during = try probe(w)
        throttle.stop()
        #expect(during.eintr == start.eintr, "EINTR while cgroup-throttled: \(during.eintr - start.eintr)")
        #expect(try CgroupState(w.pid) == before, "cgroup and CPU quota put back")
        #expect(!throttle.cgroup.exists || !throttle.record.created, "the throttle's cgroup is removed")
        #expect(access(ThrottleLeftovers.directory + "/" + throttle.record.fileName, F_OK) != 0, "the record is removed")
    }

    /// A target alone in a cgroup of its own: that cgroup is throttled in place
    /// and its own quota put back (not the unlimited default).
    @Test func aCgroupOfItsOwnGetsItsQuotaBack() throws {
        let w = try busyTarget()
        let root = try CPUCgroup.of(pid: w.pid)
        let own = root.child("memhaul-test-own-\(w.pid)")
        try own.create()
        defer {
            try? root.move(pid: w.pid)
            try? own.remove()
        }
        let saved = CPUCgroup.Bandwidth(quotaMicros: 150_000, periodMicros: 100_000)
        try own.setBandwidth(saved)
        try own.move(pid: w.pid)
        let before = try CgroupState(w.pid)
        #expect(before.bandwidth == saved)
        let throttle = try CgroupThrottle.prepare(pid: w.pid)
        #expect(!throttle.record.created && throttle.cgroup == own, "uses the target's own cgroup")
        try throttle.set(percent: 80)
        #expect(try own.bandwidth() != saved)
        let start = throttle.throttledPeriods() ?? 0
        SafetyBound.eventually("throttled periods", every: 1_000) { (throttle.throttledPeriods() ?? 0) >= start + 5 }
        #expect(throttle.stop() == nil)
        #expect(try CgroupState(w.pid) == before, "its own quota, 150 ms per 100 ms, put back")
    }

    /// The same measurement with the SIGSTOP fallback: it interrupts the probe,
    /// so the EINTR count can tell the two apart.
    @Test func signalThrottleInterruptsBlockingCalls() throws {
        let w = try busyTarget()
        let start = try probe(w)
        let throttle = DutyCycleThrottle(pid: w.pid)
        try throttle.set(percent: 50)
        SafetyBound.eventually("20 stop slices", every: 1_000) { throttle.stopSlices >= 20 }
        throttle.stop()
        let after = try probe(w)
        #expect(after.eintr > start.eintr, "SIGSTOP/SIGCONT makes sigtimedwait fail with EINTR")
        #expect(ProcFS.state(pid: w.pid) != "T")
    }

    /// A throttle that fails half-way (the move into its cgroup refused) is
    /// still undone: quota lifted, cgroup removed, target where it was.
    #if DEBUG
    @Test func cgroupThrottleFailingHalfWayIsUndone() throws {
        let w = try busyTarget()
        let before = try CgroupState(w.pid)
        let throttle = try CgroupThrottle.prepare(pid: w.pid)
        guard throttle.record.created else { return }  // only a created cgroup has a move to fail
        let faults = [Syscall.Fault("write(\(throttle.cgroup.directory)/cgroup.procs)", .EACCES, after: 0)]
        #expect(throws: SystemError.self) { try Syscall.withFaults(faults) { try throttle.set(percent: 80) } }
        throttle.stop()
        #expect(try CgroupState(w.pid) == before)
        #expect(!throttle.cgroup.exists)
    }
    #endif

    /// Auto-converge through a migration, cancelled while the cgroup throttles:
    /// the target runs in its own cgroup with its own quota again.
    @Test(arguments: ["cancel", "receiver gone"])
    func migrationPutsTheCgroupBack(_ ending: String) throws {
        let receiver = try ReceiverProcess(pki: nil)
        let w = try busyTarget(size: "32M", pattern: "hot:0.5")
        let before = try CgroupState(w.pid)
        var r = MigrationRequest(pid: w.pid, host: "127.0.0.1", port: receiver.port, id: "throttle-\(ending.prefix(6))")
        r.parameters.maxBandwidth = 8e6
        r.parameters.maxRounds = 1000
        r.parameters.downtimeLimitMs = 0.001
        r.parameters.resumeTimeoutSeconds = 0
        r.throttle = .cgroup
        r.after = .resume
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let done = migration.runInBackground()
        SafetyBound.eventually("throttled by the cgroup", every: 1_000) {
            migration.status.throttleMechanism == .cgroup && migration.status.throttlePercent > 0
                && ((try? CgroupState(w.pid)) ?? before) != before
        }
        if ending == "cancel" {
            migration.cancel()
        } else {
            receiver.child.kill(SIGKILL)
        }
        done.waitBounded("the migration's end")
        let s = migration.status
        #expect(s.state == (ending == "cancel" ? .cancelled : .failed), "\(s.state) \(s.error ?? "")")
        #expect(s.throttleMechanism == .cgroup)
        #expect(try CgroupState(w.pid) == before, "the target's cgroup and quota as before")
        #expect(ProcFS.state(pid: w.pid) != "T")
    }

    /// A throttle whose agent died by SIGKILL: its record lets the next agent
    /// start undo it (here `memhaul migrate`, killed while throttling).
    @Test func leftoversOfAKilledAgentAreUndone() throws {
        let records = temporaryDirectory("throttle-records")
        let receiver = try ReceiverProcess(pki: nil)
        let w = try busyTarget(size: "32M", pattern: "hot:0.5")
        let before = try CgroupState(w.pid)
        let env = ["MEMHAUL_THROTTLE_RECORDS": records]
        let migrate = try ChildProcess(
            [builtBinary("memhaul"), "migrate", "--pid", "\(w.pid)", "--to", "127.0.0.1:\(receiver.port)", "--insecure",
             "--throttle", "cgroup", "--max-bandwidth", "8000000", "--max-rounds", "1000", "--downtime-limit", "0.001",
             "--after", "resume"], environment: env, stdin: .null)
        SafetyBound.eventually("throttled by the cgroup", every: 1_000) { ((try? CgroupState(w.pid)) ?? before) != before }
        migrate.kill(SIGKILL)
        _ = migrate.waitExitCode()
        #expect(try CgroupState(w.pid) != before, "a SIGKILLed agent runs no code: the target stays in the throttle cgroup")
        let lines = ThrottleLeftovers.restoreAbandoned(in: records)
        #expect(lines.count == 1, "\(lines)")
        #expect(try CgroupState(w.pid) == before, "undone from the record")
        #expect(((try? Directory.entries(records)) ?? ["?"]).isEmpty)
    }
}

#if DEBUG
/// `auto` falls back to signals when the cgroup refuses the throttle at its
/// first write (a read-only cgroupfs, as under systemd's ProtectControlGroups);
/// `cgroup` fails instead. Either way the release leaves the target as it was.
@Suite(.serialized) struct ThrottleFallbackTests {
    @Test(arguments: [ThrottleBackend.auto, .cgroup])
    func aRefusedCgroup(_ backend: ThrottleBackend) throws {
        let w = try startWorkload(["--size", "8M", "--threads", "1", "--rate", "0"])
        let before = try ProcFS.readString("/proc/\(w.pid)/cgroup")
        let planned = try CgroupThrottle.prepare(pid: w.pid)
        guard planned.record.created else { return }  // the target alone in a cgroup: no mkdir to refuse
        let hold = TargetHold(pid: w.pid, throttle: backend)
        let faults = [Syscall.Fault("mkdir(\(planned.cgroup.directory))", .EROFS, after: 0)]
        if backend == .auto {
            try Syscall.withFaults(faults) { try hold.setThrottle(percent: 50) }
            #expect(hold.throttleMechanism == .signals)
            #expect(hold.throttleFallback?.contains("EROFS") == true, "\(hold.throttleFallback ?? "")")
        } else {
            #expect(throws: SystemError.self) { try Syscall.withFaults(faults) { try hold.setThrottle(percent: 50) } }
        }
        let release = hold.release(.failed)
        #expect(release.problems.isEmpty, "\(release.problems)")
        #expect(try ProcFS.readString("/proc/\(w.pid)/cgroup") == before)
        #expect(!planned.cgroup.exists)
        #expect(ProcFS.state(pid: w.pid) != "T")
    }
}
#endif

import Foundation
import Glibc
import MemhaulSystem
import MemhaulWire
import Testing
import MemhaulTestSupport
@testable import MemhaulControl
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver

/// The sender against receivers that misbehave (``HostileReceiver``): every
/// wait for the peer ends at its deadline with an error naming it, `cancel()`
/// interrupts a blocked wait, and whatever ends the migration, the target (a
/// real workload) is running and untracked afterwards. The bounded waits
/// here only keep a regression from hanging the suite; the assertions are
/// about what happened.
@Suite(.serialized) struct SenderSafetyTests {
    /// Deadlines short enough for a test; each test overrides the one it exercises.
    static let short: Double = 2

    struct Run {
        let workload: WorkloadProcess
        let hostile: HostileReceiver
        let migration: SenderMigration
        /// userfaultfds this (sender) process held before the migration.

        /// Waits for `run()` to return; false if it did not within the bound.
        func finished(seconds: Double = 60) -> Bool { migration.waitUntilFinished(timeoutSeconds: seconds) }
    }

    func start(_ behaviour: HostileReceiver.Behaviour, id: String, workload args: [String] = ["--size", "16M", "--threads", "2", "--rate", "2000"],
               _ configure: (inout MigrationRequest) -> Void = { _ in }) throws -> Run {
        let pki = try TestPKI()
        let hostile = try HostileReceiver(pki: pki, behaviour)
        let workload = try startWorkload(args)
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: hostile.port, id: id)
        r.parameters.downtimeLimitMs = 300
        r.parameters.autoConverge = false
        r.after = .stop
        configure(&r)
        let log = LogSink()
        let migration = SenderMigration(request: r, connect: try connector(pki), log: { log.append($0) })
        let run = Run(workload: workload, hostile: hostile, migration: migration)
        Thread.detachNewThread { migration.run() }
        return run
    }

    /// Running (not stopped), holding no userfaultfd, no mapping uffd-wp registered.
    func expectReleased(_ run: Run, _ context: String, sourceLocation: SourceLocation = #_sourceLocation) {
        expectReleased(run.workload, context, sourceLocation: sourceLocation)
        // (The sender's own descriptors are not counted: suites run in parallel
        // in this process, and other tests' migrations hold userfaultfds too.)
    }

    func expectReleased(_ w: WorkloadProcess, _ context: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let state = w.state
        #expect(state != nil && state != "T" && state != "t", "\(context): target state \(String(describing: state))", sourceLocation: sourceLocation)
        #expect(!w.holdsUserfaultfd, "\(context): target holds a userfaultfd", sourceLocation: sourceLocation)
        #expect(!w.hasUffdWriteProtect, "\(context): a mapping is still uffd-wp registered", sourceLocation: sourceLocation)
    }

    /// When the target was first seen running and untracked (polling /proc:
    /// the kernel sends no event for it), within a bound of 10 s; nil if not.
    func released(_ w: WorkloadProcess) -> Double? {
        let limit = MonotonicClock.seconds() + 10
        while MonotonicClock.seconds() < limit {
            if w.state != "T" && !w.hasUffdWriteProtect { return MonotonicClock.seconds() }
            sched_yield()
        }
        return nil
    }

    func expectTimeout(_ s: MigrationStatus, wait: String, seconds: Double, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(s.state == .failed, "state \(s.state)", sourceLocation: sourceLocation)
        let error = s.error ?? ""
        #expect(error.contains("deadline missed") && error.contains(wait) && error.contains("within \(MigrationError.seconds(seconds)) s"),
                "error names the wait and the limit: \(error)", sourceLocation: sourceLocation)
    }

    // MARK: - Deadlines, source running

    @Test func receiverThatNeverAcksFailsAtTheRoundAckDeadline() throws {
        let run = try start(.neverAck, id: "never-ack") { $0.deadlines.roundAck = Self.short }
        #expect(run.finished(), "run() returned")
        expectTimeout(run.migration.status, wait: "ROUND_ACK for round 1", seconds: Self.short)
        expectReleased(run, "never-ack")
        // The receiver kept the connection busy the whole time; that did not extend the deadline.
        #expect(run.hostile.seen.keepalivesSent >= 2, "keepalives during the wait: \(run.hostile.seen.keepalivesSent)")
        #expect(run.hostile.wait(seconds: 10) { $0.errors.count == 1 }, "the receiver is told why")
    }

    @Test func receiverThatStallsAfterTwoAcksFailsAtTheDeadline() throws {
        let run = try start(.ackThenStall(2), id: "stall-2") {
            $0.deadlines.roundAck = Self.short
            $0.parameters.downtimeLimitMs = 0.001  // never converges: rounds go on until the stall
            $0.parameters.maxRounds = 1000
        }
        #expect(run.finished())
        expectTimeout(run.migration.status, wait: "ROUND_ACK for round 3", seconds: Self.short)
        #expect(run.hostile.seen.roundEnds == 3)
        expectReleased(run, "stall-2")
    }

    @Test func drippingReceiverIsCutAtTheDeadline() throws {
        // One TLS record arrives one byte per 100 ms: every wait for readability
        // succeeds at once, and the read inside waits for the rest of the record.
        let run = try start(.dripAfterFirstRound, id: "drip") { $0.deadlines.roundAck = Self.short }
        #expect(run.finished(seconds: 60), "run() returned (the record takes 27 minutes to arrive)")
        expectTimeout(run.migration.status, wait: "ROUND_ACK for round 1", seconds: Self.short)
        expectReleased(run, "drip")
    }

    @Test func receiverThatIgnoresTheDrainFailsAtItsDeadline() throws {
        let run = try start(.ignoreKeepalive, id: "no-drain") {
            $0.deadlines.keepaliveDrain = Self.short
            $0.parameters.maxRounds = 1
        }
        #expect(run.finished())
        expectTimeout(run.migration.status, wait: "KEEPALIVE reply before the cutover", seconds: Self.short)
        #expect(run.migration.status.frozenMs == nil, "the drain comes before the freeze")
        expectReleased(run, "no-drain")
    }

    // MARK: - Deadlines, source frozen

    @Test func stopAndCopyWithoutAckThawsAtTheFrozenDeadline() throws {
        let run = try start(.neverAck, id: "frozen-ack") {
            $0.parameters.maxRounds = 0  // frozen from the first round
            $0.deadlines.frozenRoundAck = Self.short
        }
        #expect(run.finished())
        let s = run.migration.status
        expectTimeout(s, wait: "ROUND_ACK for round 1 (final delta, source frozen)", seconds: Self.short)
        #expect((s.frozenMs ?? 0) >= Self.short * 1000, "frozen window counted: \(String(describing: s.frozenMs))")
        #expect(s.warnings.contains { $0.contains("exceeded the limit of 300 ms") }, "\(s.warnings)")
        expectReleased(run, "frozen-ack")
    }

    @Test func missingVerificationAckThawsTheFrozenSource() throws {
        let run = try start(.ackAllButVerification, id: "no-verify") {
            $0.parameters.maxRounds = 2  // forced cutover after two pre-copy rounds
            $0.deadlines.verification = Self.short
        }
        #expect(run.finished())
        let s = run.migration.status
        expectTimeout(s, wait: "verification ROUND_ACK (digest)", seconds: Self.short)
        #expect(s.state == .failed && s.downtimeMs != nil, "the final delta was acknowledged, frozen")
        #expect((s.frozenMs ?? 0) >= Self.short * 1000)
        expectReleased(run, "no-verify")
    }

    // MARK: - WELCOME

    @Test(arguments: [
        ("version", WireVersion(major: 2, minor: 0), Capabilities([.zstd, .keepalive]), UInt64?.none, "WELCOME version 2.0"),
        ("fresh-committed", WireVersion.current, Capabilities([.zstd, .keepalive]), UInt64?.some(5), "claims committed round 5"),
        ("capabilities", WireVersion.current, Capabilities(rawValue: 1 << 40 | 1), UInt64?.none, "beyond the HELLO's"),
    ])
    func bogusWelcomeIsRefusedBeforeAnyPage(_ name: String, _ version: WireVersion, _ caps: Capabilities, _ round: UInt64?, _ message: String) throws {
        let run = try start(.welcome(version: version, capabilities: caps, lastCommittedRound: round), id: "welcome-\(name)")
        #expect(run.finished())
        let s = run.migration.status
        #expect(s.state == .failed)
        #expect(s.error?.contains(message) == true, "\(name): \(s.error ?? "")")
        #expect(run.hostile.seen.roundEnds == 0, "no round was sent")
        expectReleased(run, name)
    }

    // MARK: - Cancel

    @Test func cancelDuringAStallReleasesAtOnce() throws {
        let run = try start(.neverAck, id: "cancel-stall") { $0.deadlines.roundAck = 600 }
        // Stalled: round 1 is out, and the receiver is sending keepalives.
        #expect(run.hostile.wait { $0.roundEnds >= 1 && $0.keepalivesSent >= 2 })
        #expect(run.workload.hasUffdWriteProtect, "tracked while stalled")
        let t0 = MonotonicClock.seconds()
        run.migration.cancel()
        let returned = MonotonicClock.seconds()
        let untracked = released(run.workload)
        #expect(run.finished(seconds: 10), "run() returned after cancel")
        let ended = MonotonicClock.seconds()
        print("cancel-stall: cancel() returned after \(Int((returned - t0) * 1e6)) µs, target untracked after \(untracked.map { "\(Int(($0 - t0) * 1000)) ms" } ?? "-"), run() ended after \(Int((ended - t0) * 1000)) ms")
        #expect(run.migration.status.state == .cancelled)
        #expect(run.migration.status.error == nil)
        expectReleased(run, "cancel-stall")
        // The cut connection could not carry the ERROR: a second one tells the receiver.
        #expect(run.hostile.wait(seconds: 10) { $0.errors.contains { $0.code == .cancelled } }, "\(run.hostile.seen.errors)")
    }

    @Test func cancelWhileFrozenThaws() throws {
        let run = try start(.neverAck, id: "cancel-frozen") {
            $0.parameters.maxRounds = 0
            $0.deadlines.frozenRoundAck = 600
        }
        #expect(run.hostile.wait { $0.roundEnds >= 1 })
        #expect(run.workload.state == "t", "frozen (held by ptrace) while the final round waits")
        let t0 = MonotonicClock.seconds()
        run.migration.cancel()
        let returned = MonotonicClock.seconds()
        let thawed = released(run.workload)
        #expect(run.finished(seconds: 10))
        print("cancel-frozen: cancel() returned after \(Int((returned - t0) * 1e6)) µs, target thawed and untracked after \(thawed.map { "\(Int(($0 - t0) * 1000)) ms" } ?? "-"), run() ended after \(Int((MonotonicClock.seconds() - t0) * 1000)) ms")
        #expect(run.migration.status.state == .cancelled)
        #expect(run.migration.status.frozenMs != nil)
        expectReleased(run, "cancel-frozen")
    }

    // MARK: - Options

    @Test func controlMigrateTakesTheDeadlines() throws {
        var args: [String: Any] = ["pid": 1, "to": "h:1", "welcome_timeout_s": 3, "round_ack_timeout_s": 4,
                                   "frozen_round_ack_timeout_s": 5, "keepalive_drain_timeout_s": 6, "verification_timeout_s": 7.5]
        let r = try SenderControl.request(from: ControlRequest(op: "migrate", args: args))
        var expected = PeerDeadlines()
        (expected.welcome, expected.roundAck, expected.frozenRoundAck, expected.keepaliveDrain, expected.verification) = (3, 4, 5, 6, 7.5)
        #expect(r.deadlines == expected)
        #expect(try SenderControl.request(from: ControlRequest(op: "migrate", args: ["pid": 1, "to": "h:1"])).deadlines == PeerDeadlines())
        args["verification_timeout_s"] = 0
        do {
            _ = try SenderControl.request(from: ControlRequest(op: "migrate", args: args))
            Issue.record("a zero deadline was accepted")
        } catch {
            #expect(error.code == .badRequest && error.message.contains("verification deadline must be > 0"), "\(error)")
        }
    }

    // MARK: - Downtime overrun: reported, not gated

    @Test func downtimeOverrunIsAWarningWithTheFigures() {
        var s = MigrationStatus(id: "m", pid: 1, destination: "d")
        s.downtimeLimitMs = 300
        s.expectedDowntimeMs = 204
        s.verifyMs = 120
        #expect(SenderMigration.downtimeWarning(frozenMs: 435, status: s)
                == "downtime 435 ms exceeded the limit of 300 ms (predicted 204 ms, verification 120 ms of it)")
        #expect(SenderMigration.downtimeWarning(frozenMs: 299, status: s) == nil)
    }

    @Test func completedMigrationReportsTheWholeFrozenWindow() throws {
        let receiver = try TestReceiver(pki: nil)
        let workload = try startWorkload(["--size", "16M", "--threads", "1", "--rate", "1000"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "frozen-window")
        r.parameters.maxRounds = 0
        r.parameters.downtimeLimitMs = 0.001  // any real frozen window overruns it
        r.after = .resume
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        let s = migration.status
        #expect(s.state == .completed, "\(s.error ?? "")")
        let frozen = try #require(s.frozenMs)
        #expect(frozen >= (s.downtimeMs ?? .infinity) + (s.verifyMs ?? .infinity), "frozen \(frozen) covers the final commit and the proof")
        #expect(s.warnings.contains { $0.hasPrefix("downtime \(Int(frozen.rounded())) ms exceeded the limit of 0.001 ms") }, "\(s.warnings)")
        expectReleased(workload, "frozen-window (after resume)")
    }
}

/// The hold on its own: what it undoes, whatever went wrong on the way.
@Suite(.serialized) struct TargetHoldTests {
    /// The real freezer, but its freeze fails after the stop went out (as a
    /// freeze timeout or a vanished task does).
    struct FailingFreezer: TargetFreezing {
        let real: TargetFreezer
        func stopTarget() throws -> UInt64 {
            _ = try real.freeze()
            throw MigrationError.freezeTimeout(pid: real.pid)
        }
        func resumeTarget() throws { try real.thaw() }
        func leaveTargetStopped() throws { try real.detachKeepingStopped() }
        func killTarget() { real.kill() }
    }

    @Test func aFreezeThatFailsHalfWayIsStillUndone() throws {
        let workload = try startWorkload(["--size", "8M", "--threads", "2", "--rate", "1000"])
        let hold = TargetHold(pid: workload.pid, freezer: FailingFreezer(real: TargetFreezer(pid: workload.pid)))
        _ = try hold.attach()
        #expect(throws: MigrationError.freezeTimeout(pid: workload.pid)) { _ = try hold.freeze() }
        #expect(workload.state == "t", "the hold went on")
        let release = hold.release(.failed)
        #expect(release.action == "resumed" && release.problems.isEmpty, "\(release)")
        #expect(release.frozenSeconds != nil)
        #expect(workload.state != "T" && workload.state != nil)
        #expect(!workload.hasUffdWriteProtect)
        // Idempotent: a second release changes nothing and reports the first.
        #expect(hold.release(.completed(.kill)).action == "resumed")
        #expect(Glibc.kill(workload.pid, 0) == 0, "not killed by the second release")
    }

    @Test func completedWithStopStaysFrozenButUntracked() throws {
        let workload = try startWorkload(["--size", "8M", "--threads", "2", "--rate", "1000"])
        let hold = TargetHold(pid: workload.pid)
        _ = try hold.attach()
        _ = try hold.freeze()
        let release = hold.release(.completed(.stop))
        #expect(release.action == "left stopped")
        #expect(workload.state == "T")
        #expect(!workload.hasUffdWriteProtect)
    }

    @Test func aThrottledTargetRunsAfterAFailure() throws {
        let workload = try startWorkload(["--size", "8M", "--threads", "2", "--rate", "1000"])
        let hold = TargetHold(pid: workload.pid)
        _ = try hold.attach()
        try hold.setThrottle(percent: 99)
        hold.release(.failed)
        #expect(workload.state != "T" && workload.state != nil)
        #expect(!workload.hasUffdWriteProtect)
    }
}

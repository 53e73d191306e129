import Foundation
import Glibc
import MemhaulControl
import MemhaulImage
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
import MemhaulSystem
import MemhaulTestSupport

/// `--strict`: a final round that would overrun the limit is aborted, the
/// source thawed and still tracked, and pre-copy goes on.
@Suite(.serialized) struct StrictCutoverTests {
    @discardableResult
    func command(_ w: ChildProcess, _ line: String) throws -> [String: Any] { try w.workloadCommand(line) }

    func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    func setUp(_ tag: String) throws -> (TestReceiver, WorkloadProcess, UInt64, MigrationRequest) {
        let receiver = try TestReceiver(pki: nil)
        let w = try startWorkload(["--size", "8M", "--threads", "1", "--rate", "200"], control: true)
        let map = try command(w, "map 8M")
        let start = UInt64((map["start"] as! String).dropFirst(2), radix: 16)!
        try command(w, "write \(hex(start)) 2048")
        var r = MigrationRequest(pid: w.pid, host: "127.0.0.1", port: receiver.port, id: "strict-\(tag)")
        r.parameters.strict = true
        r.parameters.maxRounds = 1
        return (receiver, w, start, r)
    }

    /// The hook runs while the target is thawed: it answers a command (so it
    /// runs) and its write must reach the image (so it is still tracked).
    @Test func anAbortedCutoverThawsTheSourceAndTheMigrationCompletesExact() throws {
        let (receiver, w, start, base) = try setUp("before-send")
        var r = base
        r.parameters.downtimeLimitMs = 0.001  // no final round fits: the first cutover is aborted
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let box = HandOff(w)
        let problems = LogSink()
        migration.testAfterCutoverAbort = {
            do {
                try command(box.value, "write \(hex(start + 4096 * 100)) 50 3")
            } catch {
                problems.append("the thawed source did not answer: \(error)")
            }
            _ = migration.update { $0.downtimeLimitMs = 1e6 }
        }
        migration.run()
        #expect(problems.lines.isEmpty, "\(problems.lines)")
        let s = migration.status
        guard s.state == .completed else {
            Issue.record("migration \(s.state): \(s.error ?? "")")
            return
        }
        #expect(s.abortedCutovers == 1)
        #expect(s.cutoverAborts.first?.phase == .beforeSend)
        #expect(s.cutoverAborts.first.map { $0.predictedMs > $0.limitMs } == true)
        #expect(s.warnings.contains { $0.hasPrefix("cutover aborted (before-send)") }, "\(s.warnings)")
        try expectImageMatchesSource(receiver.images + "/" + r.id, pid: w.pid)
    }

    /// Aborted while the final delta streams (a 1 MB/s cap, 4 MiB dirtied
    /// just before the freeze): the open chunk ends early with the counts it
    /// sent, the receiver commits it as a pre-copy round, the rest follows.
    @Test func aCutoverAbortedMidStreamEndsItsChunkEarlyAndCompletes() throws {
        let (receiver, w, start, base) = try setUp("streaming")
        var r = base
        r.parameters.downtimeLimitMs = 1000
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let box = HandOff(w)
        let problems = LogSink()
        migration.testBeforeFreeze = {
            do { try command(box.value, "write \(hex(start)) 1024 2") } catch { problems.append("\(error)") }
            _ = migration.update { $0.maxBandwidth = 1e6 }  // the final delta streams slowly
        }
        // Past the before-send check: the guard learns the real rate only from the stream.
        migration.testStrictCutover = { $0.throughput = 1e12; $0.commitSeconds = 0 }
        migration.testAfterCutoverAbort = {
            _ = migration.update { $0.downtimeLimitMs = 1e6; $0.maxBandwidth = nil }
            migration.testStrictCutover = nil
        }
        migration.run()
        #expect(problems.lines.isEmpty, "\(problems.lines)")
        let s = migration.status
        guard s.state == .completed else {
            Issue.record("migration \(s.state): \(s.error ?? "")")
            return
        }
        #expect(s.abortedCutovers == 1)
        #expect(s.cutoverAborts.first?.phase == .streaming)
        #expect(s.cutoverAborts.first.map { $0.remainingBytes > 0 } == true)
        try expectImageMatchesSource(receiver.images + "/" + r.id, pid: w.pid)
    }

    @Test func afterTheAllowedAttemptsTheMigrationFailsWithTheSourceRunning() throws {
        let (receiver, w, start, base) = try setUp("exhausted")
        defer { withExtendedLifetime(receiver) {} }
        var r = base
        r.parameters.downtimeLimitMs = 0.001
        r.parameters.strictAttempts = 2
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        let s = migration.status
        #expect(s.state == .failed)
        #expect(s.abortedCutovers == 2)
        #expect(s.error?.contains("2 cutovers aborted") == true, "\(s.error ?? "")")
        // Running (it answers) and untracked.
        try command(w, "write \(hex(start)) 1")
        #expect(w.state != "T")
        #expect(!w.hasUffdWriteProtect)
    }

    /// The agent's request carries `strict` and `strict_attempts`; the status
    /// JSON counts and lists the aborts.
    @Test func theSenderAgentTakesStrictAndReportsTheAborts() throws {
        let receiver = try TestReceiver(pki: nil)
        let w = try startWorkload(["--size", "8M", "--threads", "1", "--rate", "100"])
        let control = SenderControl(connect: try connector(nil), log: { _ in })
        _ = try control.handle(ControlRequest(op: "migrate", args: [
            "pid": Int(w.pid), "to": "127.0.0.1:\(receiver.port)", "id": "strict-agent", "downtime_limit_ms": 0.001,
            "max_rounds": 1, "strict": true, "strict_attempts": 1]))
        var status: [String: Any] = [:]
        try SafetyBound.eventually("the strict migration's end", every: 20_000) {
            status = try control.handle(ControlRequest(op: "status", args: ["migration": "strict-agent"]))["status"] as! [String: Any]
            return (status["state"] as? String).map { ["completed", "failed", "cancelled"].contains($0) } ?? false
        }
        #expect(status["state"] as? String == "failed")
        #expect(status["aborted_cutovers"] as? Int == 1)
        let aborts = status["cutover_aborts"] as? [[String: Any]] ?? []
        #expect(aborts.first?["phase"] as? String == "before-send")
        #expect((aborts.first?["frozen_ms"] as? Double).map { $0 > 0.001 } == true)
        #expect(w.state != "T")
    }
}

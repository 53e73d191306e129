import Foundation
import Testing
import MemhaulTestSupport

/// The sender agent: `ctl status` counters move within round 0 (per commit
/// chunk), and the agent logs each stage change of a migration once.
@Suite(.serialized) struct SenderAgentProgressCLITests {
    @Test func statusMovesDuringRoundZeroAndStagesAreLoggedOnce() throws {
        let dir = temporaryDirectory("agent-progress")
        let receiver = try MigrateProgressCLITests.Receiver(dir)
        let socket = dir + "/s.sock", log = dir + "/sender.log"
        let agent = try ChildProcess([builtBinary("memhaul"), "sender", "--insecure", "--control", socket],
                                     stdin: .null, stderr: .file(log))
        defer { agent.kill(); _ = agent.wait() }
        _ = try agent.expectLine(startingWith: "ready")
        let target = try WorkloadProcess(["--size", "1G", "--exit-after", "300"], stdin: .null)
        defer { target.kill(); _ = target.wait() }

        // Capped so round 0 takes a while; the test waits on what status says, not on time.
        let started = try runMemhaul(["ctl", "migrate", "--socket", socket, "--pid", "\(target.pid)", "--to", "127.0.0.1:\(receiver.port)",
                                      "--id", "agent-progress", "--after", "resume", "--max-bandwidth", "100663296"])
        #expect(started.status == 0, "\(started.out)\(started.err)")
        var midRound: [String: Any]?
        var polls = 0
        while midRound == nil {
            polls += 1
            let r = try runMemhaul(["ctl", "status", "--socket", socket, "--migration", "agent-progress"])
            let object = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
            let status = try #require((object?["result"] as? [String: Any])?["status"] as? [String: Any], "\(r.out)")
            #expect(status["state"] as? String != "failed", "\(status)")
            let counters = status["counters"] as? [String: Any] ?? [:]
            if status["stage"] as? String == "precopy", counters["round"] as? Int == 0,
               let sent = status["round_sent_bytes"] as? Int, let total = status["round_total_bytes"] as? Int, sent > 0, sent < total {
                midRound = status
            }
            // Round 0 over (or never shown mid-way): the counters did not move within it.
            if (counters["round"] as? Int ?? 0) > 0 || (status["state"] as? String).map({ ["completed", "failed", "cancelled"].contains($0) }) == true {
                break
            }
        }
        let status = try #require(midRound, "no status within round 0 with some of its bytes sent (\(polls) polls)")
        let counters = status["counters"] as? [String: Any] ?? [:]
        #expect((counters["page_bytes"] as? Int ?? 0) > 0 && (counters["transferred_bytes"] as? Int ?? 0) > 0, "\(status)")
        #expect((counters["remaining_bytes"] as? Int ?? 0) > 0, "remaining counts down within the round: \(status)")

        let cancelled = try runMemhaul(["ctl", "cancel", "--socket", socket, "--migration", "agent-progress"])
        #expect(cancelled.status == 0, "\(cancelled.out)")
        // The agent writes its log off the migration's thread: wait for the line (a guard, not a timing check).
        var mine: [Substring] = []
        for _ in 0..<3000 {
            let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
            mine = lines.filter { $0.contains("migration=agent-progress") }
            if mine.contains(where: { $0.hasSuffix(": cancelled") }) { break }
            usleep(10_000)
        }
        #expect(mine.filter { $0.contains(": round 0: ") }.count == 1, "\(mine)")
        #expect(mine.filter { $0.hasSuffix(": cancelled") }.count == 1, "\(mine)")
    }
}

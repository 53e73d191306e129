import Foundation
import Testing
import MemhaulSender
import MemhaulTestSupport

/// The report is the migration's own record: its rounds add up to the
/// status's counters, its phases follow each other, and it says what the
/// policy decided after each round.
@Suite(.serialized) struct MigrationReportTests {
    @Test func roundsPhasesAndDecisionsAddUpToTheStatus() throws {
        let receiver = try TestReceiver(pki: nil)
        let workload = try startWorkload(["--size", "32M", "--threads", "1", "--rate", "5000"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "report-1")
        r.parameters.downtimeLimitMs = 0.001  // never converges: the round cap cuts over
        r.parameters.autoConverge = false
        r.parameters.maxRounds = 3
        r.after = .resume
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        let status = migration.status
        let report = migration.report
        try #require(status.state == .completed, "\(status.error ?? "")")
        #expect(report.state == .completed && report.migration == "report-1" && report.pid == workload.pid)
        #expect(report.rounds.count == status.rounds && report.rounds.map(\.round) == Array(0..<status.rounds))
        #expect(report.rounds.reduce(0) { $0 + $1.pageBytes } == status.pageBytes)
        #expect(report.rounds.reduce(0) { $0 + $1.zeroPages } * 4096 == status.zeroBytes)
        #expect(report.rounds.dropLast().allSatisfy { !$0.frozen } && report.rounds.last?.frozen == true)
        #expect(report.rounds.dropLast(2).allSatisfy { $0.decision == "next_round" })
        #expect(report.rounds.dropLast().last?.decision?.hasPrefix("cutover: ") == true, "\(report.rounds.map(\.decision))")
        #expect(report.rounds.dropFirst().allSatisfy { $0.predictedMs != nil }, "each round after the first was predicted")
        #expect(report.rounds.allSatisfy { $0.endMs >= $0.startMs && $0.actualMs >= 0 })
        #expect(report.phases.map(\.name) == ["setup", "precopy", "freeze", "final_delta", "verify"])
        for (a, b) in zip(report.phases, report.phases.dropFirst()) { #expect(a.endMs == b.startMs && b.startMs >= a.startMs) }
        #expect(report.phases.last?.endMs != nil)
        #expect(report.resumes.isEmpty)
        #expect(report.downtime.limitMs == 0.001 && report.downtime.downtimeMs == status.downtimeMs && report.downtime.frozenMs == status.frozenMs)
        #expect(report.downtime.exceeded == true && report.downtime.expectedMs != nil)
    }
}

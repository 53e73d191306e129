import Foundation
import Glibc
import MemhaulImage
import Synchronization
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver

/// Migrations whose workload fights back: faster dirtying than the link, and a
/// layout that changes while rounds run.
@Suite(.serialized) struct ConvergenceBehaviourTests {
    /// Runs the migration to its end; returns it and the highest throttle its
    /// status showed. Every status change is seen (the progress observer), so
    /// a throttle that lasts one short round is not missed between samples.
    func runWatchingThrottle(_ request: MigrationRequest) throws -> (SenderMigration, Int) {
        let highest = Mutex(0)
        let migration = SenderMigration(request: request, connect: try connector(nil), progress: { s in
            highest.withLock { $0 = max($0, s.throttlePercent) }
        })
        migration.run()
        return (migration, highest.withLock { $0 })
    }

    @Test func autoConvergeThrottlesAWorkloadThatOutrunsTheLink() throws {
        let receiver = try TestReceiver(pki: nil)
        // A hot set of 16 MiB rewritten as fast as two threads can, over a link capped at 8 MB/s.
        let workload = try startWorkload(["--size", "32M", "--threads", "2", "--rate", "0", "--pattern", "hot:0.5"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "hot-1")
        r.parameters.maxBandwidth = 8e6
        r.parameters.maxRounds = 8
        r.parameters.stallRounds = 1
        r.after = .resume
        let (migration, highest) = try runWatchingThrottle(r)
        let s = migration.status
        #expect(s.state == .completed, "\(s.error ?? "")")
        let decisions = migration.history.rounds.map { "\($0.round): \($0.decision ?? "-") \($0.pendingBytes ?? 0) B \($0.throttlePercent)%" }
        #expect(highest >= 20, "auto-converge shows in the status; rounds \(decisions)")
        #expect(s.throttlePercent == 0, "the throttle is released at the end")
        // Within the limit, or a warning gives the numbers: a forced cutover
        // says what to expect, a converged one that overran says by how much.
        if let d = s.downtimeMs, d > r.parameters.downtimeLimitMs {
            #expect(s.warnings.contains { $0.contains("expected downtime") || $0.contains("exceeded the limit") }, "\(s.warnings)")
        }
        #expect(workload.state != "T")
    }

    @Test func layoutChurnDuringMigrationEndsWithAnExactImage() throws {
        let receiver = try TestReceiver(pki: nil)
        // mmap/munmap/mremap/MADV_DONTNEED of extra regions while writers run.
        let workload = try startWorkload(["--size", "64M", "--threads", "2", "--rate", "20000", "--churn", "200"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "churn-1")
        r.parameters.maxRounds = 6
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        let s = migration.status
        guard s.state == .completed else {
            Issue.record("migration \(s.state): \(s.error ?? "")")
            return
        }
        #expect((s.rounds ?? 0) >= 2)
        try expectImageMatchesSource(receiver.images + "/churn-1", pid: workload.pid)
    }
}

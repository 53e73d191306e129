import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver

/// Migrations whose workload fights back: faster dirtying than the link, and a
/// layout that changes while rounds run.
@Suite(.serialized) struct ConvergenceBehaviourTests {
    /// Polls the migration's status until it ends; returns the highest throttle seen.
    func runWatchingThrottle(_ migration: SenderMigration) -> Int {
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { migration.run(); done.signal() }
        var highest = 0
        while done.wait(timeout: .now() + 0.02) == .timedOut {
            highest = max(highest, migration.status.throttlePercent)
        }
        return highest
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
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let highest = runWatchingThrottle(migration)
        let s = migration.status
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(highest >= 20, "auto-converge shows in the status")
        #expect(s.throttlePercent == 0, "the throttle is released at the end")
        // Within the limit, or the warning says what to expect.
        if let d = s.downtimeMs, d > r.parameters.downtimeLimitMs {
            #expect(s.warnings.contains { $0.contains("expected downtime") }, "\(s.warnings)")
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

import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSender
import MemhaulSystem
import MemhaulTestSupport

/// The receiver answers the sender's pre-cutover KEEPALIVE only after a
/// checkpoint: when the target is frozen, every earlier round is durable in
/// the region files and no journal is left, so the final round's writes and
/// commit do not share the disk with the writeback of earlier applies.
@Suite(.serialized) struct DrainCheckpointTests {
    @Test func theDrainBeforeTheFreezeLeavesNoJournal() throws {
        let receiver = try TestReceiver(pki: nil)
        let w = try startWorkload(["--size", "8M", "--threads", "1", "--rate", "400"])
        let id = "drain-checkpoint"
        var r = MigrationRequest(pid: w.pid, host: "127.0.0.1", port: receiver.port, id: id)
        r.parameters.downtimeLimitMs = 0.001  // never fits: rounds 1 and 2 are journaled deltas,
        r.parameters.maxRounds = 2            // then a forced cutover
        r.parameters.autoConverge = false
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let directory = receiver.images + "/" + id
        let seen = LogSink()
        migration.testBeforeFreeze = {
            // After the drain, before the freeze: what the receiver left on disk.
            let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            seen.append(names.filter { $0.hasPrefix("journal-") }.sorted().joined(separator: " "))
        }
        migration.run()
        let s = migration.status
        guard s.state == .completed else {
            Issue.record("migration \(s.state): \(s.error ?? "")")
            return
        }
        #expect(s.counters.rounds >= 3, "round 0, two delta rounds, the final one")
        #expect(seen.lines == [""], "journals left at the freeze: \(seen.lines)")
        try expectImageMatchesSource(directory, pid: w.pid)
    }
}

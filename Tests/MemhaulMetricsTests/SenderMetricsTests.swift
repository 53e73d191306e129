import Testing
import MemhaulMetrics
import MemhaulSender

@Suite struct SenderMetricsTests {
    func status(_ id: String, _ state: MigrationState) -> MigrationStatus {
        var s = MigrationStatus(id: id, pid: 1, destination: "127.0.0.1:1")
        s.state = state
        return s
    }

    /// The exposition is the counters themselves, in the metrics' units.
    @Test func rendersTheCounters() {
        var s = status("m-1", .active)
        s.pageBytes = 123_456_789_012
        s.transferredBytes = 99
        s.zeroBytes = 4096
        s.rounds = 3
        s.throttlePercent = 40
        s.frozenMs = 250
        let snapshot = s
        let text = String(decoding: SenderMetrics(migrations: { [snapshot] }).exposition(), as: UTF8.self)
        #expect(text.contains("memhaul_migration_page_bytes_total{migration=\"m-1\"} 123456789012\n"))
        #expect(text.contains("memhaul_migration_wire_bytes_total{migration=\"m-1\"} 99\n"))
        #expect(text.contains("memhaul_migration_zero_bytes_total{migration=\"m-1\"} 4096\n"))
        #expect(text.contains("memhaul_migration_rounds_total{migration=\"m-1\"} 3\n"))
        #expect(text.contains("memhaul_migration_throttle_ratio{migration=\"m-1\"} 0.4\n"))
        #expect(text.contains("memhaul_migration_frozen_seconds{migration=\"m-1\"} 0.25\n"))
        #expect(text.contains("memhaul_migration_state{migration=\"m-1\",state=\"active\"} 1"))
        #expect(text.contains("memhaul_migration_state{migration=\"m-1\",state=\"completed\"} 0"))
        #expect(text.contains("memhaul_sender_migrations{state=\"active\"} 1"))
        #expect(!text.contains("memhaul_migration_downtime_seconds"), "unset values have no series")
    }

    /// Every active migration and the newest finished ones get a `migration`
    /// label, never more than the cap: the label's cardinality is bounded.
    @Test func migrationLabelsAreBounded() {
        let finished = (0..<20).map { status("done-\($0)", .completed) }
        let few = SenderMetrics.labelled(finished + (0..<3).map { status("run-\($0)", .active) })
        #expect(few.map { $0.id } == ["run-0", "run-1", "run-2"] + (12..<20).map { "done-\($0)" })
        let many = SenderMetrics.labelled(finished + (0..<50).map { status("run-\($0)", .active) })
        #expect(many.count == SenderMetrics.maxLabelledMigrations)
        #expect(many.allSatisfy { $0.state == MigrationState.active } && many.last?.id == "run-49")
        let text = String(decoding: SenderMetrics(migrations: { finished }).exposition(), as: UTF8.self)
        #expect(!text.contains("done-11\"") && text.contains("done-12\""))
    }
}

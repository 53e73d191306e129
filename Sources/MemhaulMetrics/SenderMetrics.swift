import MemhaulSender
import Prometheus

/// The sender agent's (or `migrate`'s) metrics, rendered at each scrape from
/// the migrations' ``MigrationCounters`` (Protocol/metrics.md). The
/// `migration` label is bounded: every migration not yet final and the most
/// recent final ones, at most ``maxLabelledMigrations`` in all.
public struct SenderMetrics: MetricsSource {
    public static let maxLabelledMigrations = 32
    public static let maxFinishedMigrations = 8

    /// The agent's migrations, oldest first.
    private let migrations: @Sendable () -> [MigrationStatus]

    public init(migrations: @escaping @Sendable () -> [MigrationStatus]) {
        self.migrations = migrations
    }

    /// Which migrations get series: the newest active ones first, then the newest final ones.
    public static func labelled(_ all: [MigrationStatus]) -> [MigrationStatus] {
        let active = all.filter { !$0.state.isFinal }.suffix(maxLabelledMigrations)
        let finished = all.filter(\.state.isFinal).suffix(min(maxFinishedMigrations, maxLabelledMigrations - active.count))
        return Array(active) + Array(finished)
    }

    public func exposition() -> [UInt8] {
        let all = migrations()
        let registry = PrometheusCollectorRegistry()
        let byState = Dictionary(grouping: all, by: \.state)
        for state in MigrationState.allCases {
            registry.makeGauge(descriptor: .described("memhaul_sender_migrations", "Migrations this agent holds (up to its history), by state."), labels: [("state", state.rawValue)]).set(Int64(byState[state]?.count ?? 0))
        }
        for status in Self.labelled(all) {
            let c = status.counters
            let label = [("migration", status.id)]
            func counter(_ name: String, _ value: UInt64, _ help: String) {
                registry.makeCounter(descriptor: .described(name, help), labels: label).increment(by: Int64(clamping: value))
            }
            func gauge(_ name: String, _ value: Double, _ help: String) {
                registry.makeGauge(descriptor: .described(name, help), labels: label).set(value)
            }
            counter("memhaul_migration_page_bytes_total", c.pageBytes, "Page bytes sent, uncompressed, zero pages excluded.")
            counter("memhaul_migration_wire_bytes_total", c.transferredBytes, "Bytes on the wire (frames, compressed), every connection.")
            counter("memhaul_migration_zero_bytes_total", c.zeroBytes, "Memory sent as zero-page runs (no payload), in bytes.")
            counter("memhaul_migration_discarded_bytes_total", c.discardedBytes, "Memory reported discarded (unmapped or dropped), in bytes.")
            counter("memhaul_migration_resent_bytes_total", c.resentBytesAfterResume, "Wire bytes the receiver dropped on broken connections and that were sent again.")
            counter("memhaul_migration_delta_pages_total", c.deltaPages, "Pages sent as deltas against the content last sent.")
            counter("memhaul_migration_delta_saved_bytes_total", c.deltaSavedBytes, "Bytes the deltas saved against sending those pages raw.")
            counter("memhaul_migration_delta_cache_hits_total", c.deltaCacheHits, "Data pages found in the delta cache.")
            counter("memhaul_migration_delta_cache_misses_total", c.deltaCacheMisses, "Data pages not found in the delta cache (cache on).")
            counter("memhaul_migration_rounds_total", UInt64(c.rounds), "Engine rounds sent and committed, the final delta included.")
            counter("memhaul_migration_resumes_total", UInt64(c.resumes), "Connections re-established after a break.")
            gauge("memhaul_migration_round", Double(c.round), "The engine round being sent or last sent (0 = the first full copy).")
            gauge("memhaul_migration_remaining_bytes", Double(c.remainingBytes), "Dirty bytes the next round must send.")
            gauge("memhaul_migration_tracked_bytes", Double(c.totalBytes), "Tracked bytes of the target's address space.")
            gauge("memhaul_migration_dirty_rate_bytes_per_second", c.dirtyRateBps, "Bytes the target dirtied per second in the last round.")
            gauge("memhaul_migration_throughput_bytes_per_second", c.throughputBps, "Page bytes moved per second in the last round.")
            gauge("memhaul_migration_wire_throughput_bytes_per_second", c.wireBps, "Wire bytes per second in the last round.")
            gauge("memhaul_migration_throttle_ratio", Double(c.throttlePercent) / 100, "Share of time auto-converge stops the target (0 to 0.99).")
            gauge("memhaul_migration_downtime_limit_seconds", status.downtimeLimitMs / 1000, "The downtime limit in force.")
            if let v = c.expectedDowntimeMs { gauge("memhaul_migration_expected_downtime_seconds", v / 1000, "The frozen window predicted for a cutover now.") }
            if let v = c.downtimeMs { gauge("memhaul_migration_downtime_seconds", v / 1000, "Target frozen to final round committed (set at the end).") }
            if let v = c.frozenMs { gauge("memhaul_migration_frozen_seconds", v / 1000, "The whole frozen window: frozen to released, the proof included.") }
            counter("memhaul_migration_compression_decisions_total", UInt64(c.compressionDecisions), "Windows the compression governor decided on (auto).")
            if let v = c.sendBlockedFraction { gauge("memhaul_migration_send_blocked_ratio", v, "Governor's last window: share of the sending thread's time blocked in the socket.") }
            if let v = c.compressCPUFraction { gauge("memhaul_migration_compress_cpu_ratio", v, "Governor's last window: compression workers' CPU demand, per worker.") }
            if let v = c.receiverNetworkBusy { gauge("memhaul_migration_receiver_network_busy_ratio", v, "The receiver's network thread, busy share (its last ROUND_ACK).") }
            if let v = c.receiverStorageCPU { gauge("memhaul_migration_receiver_storage_cpu_ratio", v, "The receiver's storage stage CPU demand share (its last ROUND_ACK).") }
            if let v = c.receiverStorageBusy { gauge("memhaul_migration_receiver_storage_busy_ratio", v, "The receiver's storage stage time at work, share (its last ROUND_ACK).") }
            for state in MigrationState.allCases {
                registry.makeGauge(descriptor: .described("memhaul_migration_state", "1 for the migration's state, 0 for the others."), labels: label + [("state", state.rawValue)]).set(Int64(state == status.state ? 1 : 0))
            }
        }
        return registry.emitToBuffer()
    }
}

import Foundation
import MemhaulImage
import MemhaulReceiver
import Prometheus

/// The receiver agent's metrics (Protocol/metrics.md): rendered at each scrape
/// from ``ReceiverCounters``, and two latency histograms fed by every commit
/// as it happens (a histogram cannot be rebuilt from a snapshot).
public final class ReceiverMetrics: MetricsSource {
    /// Seconds: commits take milliseconds on a page cache, seconds on a slow disk.
    public static let latencyBuckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    /// Image directories summed for the disk-use gauge at most (a few `lstat`s each).
    public static let maxImagesMeasured = 4096

    private let agent: ReceiverAgent
    private let histograms = PrometheusCollectorRegistry()

    public init(agent: ReceiverAgent) {
        self.agent = agent
        let commit = histograms.makeValueHistogram(descriptor: .described("memhaul_receiver_commit_duration_seconds", "ROUND_END received to the commit point (durable), per commit chunk."), buckets: Self.latencyBuckets)
        let fsync = histograms.makeValueHistogram(descriptor: .described("memhaul_receiver_fsync_duration_seconds", "The journal flush, fsync and block reservation of a commit."), buckets: Self.latencyBuckets)
        agent.counters.observeCommits { c in
            commit.record(c.seconds)
            fsync.record(c.fsyncSeconds)
        }
    }

    public func exposition() -> [UInt8] {
        let v = agent.counters.values
        let registry = PrometheusCollectorRegistry()
        registry.makeGauge(descriptor: .described("memhaul_receiver_connections", "Migration connections open now.")).set(Int64(agent.connections.openConnections))
        registry.makeCounter(descriptor: .described("memhaul_receiver_connections_accepted_total", "Connections accepted, before limits and the handshake."))
            .increment(by: Int64(clamping: v.connectionsAccepted))
        for reason in RefusalReason.allCases {
            registry.makeCounter(descriptor: .described("memhaul_receiver_refusals_total", "Connections or migrations refused, by reason."), labels: [("reason", reason.rawValue)]).increment(by: Int64(clamping: v.refusals[reason.rawValue] ?? 0))
        }
        registry.makeCounter(descriptor: .described("memhaul_receiver_migrations_completed_total", "Migrations whose image completed (digest verified)."))
            .increment(by: Int64(clamping: v.migrationsCompleted))
        registry.makeCounter(descriptor: .described("memhaul_receiver_commits_total", "Commit chunks made durable.")).increment(by: Int64(clamping: v.commits))
        registry.makeCounter(descriptor: .described("memhaul_receiver_committed_page_bytes_total", "Page bytes written into images by committed chunks."))
            .increment(by: Int64(clamping: v.committedPageBytes))
        registry.makeCounter(descriptor: .described("memhaul_receiver_committed_fill_bytes_total", "Zeros written into short gaps between a batch's pages by committed chunks."))
            .increment(by: Int64(clamping: v.committedFillBytes))
        registry.makeCounter(descriptor: .described("memhaul_receiver_readahead_bytes_total", "Bytes of complete images read into the page cache ahead of their restore."))
            .increment(by: Int64(clamping: v.readaheadBytes))
        registry.makeGauge(descriptor: .described("memhaul_receiver_image_disk_bytes", "Bytes allocated to the images under the images root."))
            .set(Double(Self.diskUse(of: agent.imagesRoot)))
        return histograms.emitToBuffer() + registry.emitToBuffer()
    }

    /// The images' allocated bytes (`st_blocks`), at most ``maxImagesMeasured`` of them.
    static func diskUse(of root: String) -> UInt64 {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        return names.prefix(maxImagesMeasured).reduce(0) { $0 + ImageStore.diskBytes(ofImage: root + "/" + $1) }
    }
}

/// The counters of one migration, sender side: the one place they live
/// (as QEMU's `migration/migration-stats.h`). ``MigrationStatus`` carries them
/// (the control status, `migrate --json`) and the Prometheus exporter reads
/// them; nothing keeps a copy. JSON keys are the `counters` object of
/// `Protocol/control.md`; metric names are in `Protocol/metrics.md`.
public struct MigrationCounters: Codable, Sendable, Equatable {
    /// The engine round being sent or last sent (0 = the first full copy).
    public var round: Int = 0
    /// Engine rounds whose pages were sent and committed, the final delta included; count.
    public var rounds: Int = 0
    /// Bytes on the wire so far (frames, compressed), every connection; bytes.
    public var transferredBytes: UInt64 = 0
    /// Page bytes sent so far (uncompressed, zero pages excluded); bytes.
    public var pageBytes: UInt64 = 0
    /// Pages sent as zero runs (no payload), in bytes of memory; bytes.
    public var zeroBytes: UInt64 = 0
    /// Pages reported discarded (unmapped or dropped), in bytes of memory; bytes.
    public var discardedBytes: UInt64 = 0
    /// Pending dirty bytes the next round must send; bytes.
    public var remainingBytes: UInt64 = 0
    /// Tracked bytes of the target (populated or not); bytes.
    public var totalBytes: UInt64 = 0
    /// Bytes the target dirtied per second in the last round; bytes/s.
    public var dirtyRateBps: Double = 0
    /// Page bytes moved per second in the last round; bytes/s.
    public var throughputBps: Double = 0
    /// Wire bytes per second in the last round; bytes/s.
    public var wireBps: Double = 0
    /// The frozen window the policy predicts for a cutover now; milliseconds.
    public var expectedDowntimeMs: Double?
    /// Share of time the target is stopped by auto-converge; percent (0–99).
    public var throttlePercent: Int = 0
    /// Target frozen → final round committed by the receiver; milliseconds, set at the end.
    public var downtimeMs: Double?
    /// The whole frozen window: frozen → released (thawed, killed, or handed
    /// over stopped), the final delta and the proof included. Set whenever the
    /// target was frozen, also on failure; milliseconds.
    public var frozenMs: Double?
    /// Connections re-established after a break; count.
    public var resumes: Int = 0
    /// Wire bytes sent after the receiver's last commit on connections that
    /// broke: the receiver dropped them and they travelled again (what the breaks cost); bytes.
    public var resentBytesAfterResume: UInt64 = 0
    /// Pages sent as deltas against the content last sent (capability `pageDelta`); count.
    public var deltaPages: UInt64 = 0
    /// What those deltas saved against sending the pages raw (before compression); bytes.
    public var deltaSavedBytes: UInt64 = 0
    /// Data pages found in the delta cache / not found (only with the cache on); count.
    public var deltaCacheHits: UInt64 = 0
    public var deltaCacheMisses: UInt64 = 0
    /// Windows the compression governor (`--compression-level auto`) decided on; count.
    public var compressionDecisions: Int = 0
    /// Those windows by the reason decided at their end (`compression_reason` values); count each.
    public var compressionReasons: [String: Int] = [:]
    /// Those windows by the level they were sent at (`raw`, `zstd N`); count each.
    public var compressionWindowsByLevel: [String: Int] = [:]
    /// In the governor's last window, each a fraction (0–1) of its wall time: the
    /// sending thread blocked in the socket, the compression workers' CPU demand
    /// (per worker), and the receiver's last reported load (nil: not reported).
    public var sendBlockedFraction: Double?
    public var compressCPUFraction: Double?
    public var receiverNetworkBusy: Double?
    public var receiverStorageCPU: Double?
    public var receiverStorageBusy: Double?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case round, rounds
        case transferredBytes = "transferred_bytes"
        case pageBytes = "page_bytes"
        case zeroBytes = "zero_bytes"
        case discardedBytes = "discarded_bytes"
        case remainingBytes = "remaining_bytes"
        case totalBytes = "total_bytes"
        case dirtyRateBps = "dirty_rate_bytes_per_second"
        case throughputBps = "throughput_bytes_per_second"
        case wireBps = "wire_bytes_per_second"
        case expectedDowntimeMs = "expected_downtime_ms"
        case throttlePercent = "throttle_percent"
        case downtimeMs = "downtime_ms"
        case frozenMs = "frozen_ms"
        case resumes
        case resentBytesAfterResume = "resent_bytes_after_resume"
        case deltaPages = "delta_pages"
        case deltaSavedBytes = "delta_saved_bytes"
        case deltaCacheHits = "delta_cache_hits"
        case deltaCacheMisses = "delta_cache_misses"
        case compressionDecisions = "compression_decisions"
        case compressionReasons = "compression_reasons"
        case compressionWindowsByLevel = "compression_windows_by_level"
        case sendBlockedFraction = "send_blocked_fraction"
        case compressCPUFraction = "compress_cpu_fraction"
        case receiverNetworkBusy = "receiver_network_busy"
        case receiverStorageCPU = "receiver_storage_cpu"
        case receiverStorageBusy = "receiver_storage_busy"
    }
}

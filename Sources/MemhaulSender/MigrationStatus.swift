/// The state of one migration, as `status` reports it (QEMU `query-migrate` style).
public enum MigrationState: String, Codable, Sendable, CaseIterable {
    case setup, active, cutover, completed, failed, cancelled
    public var isFinal: Bool { self == .completed || self == .failed || self == .cancelled }
}

/// One migration's status. Field names are the JSON keys of `Protocol/control.md`.
@dynamicMemberLookup
public struct MigrationStatus: Codable, Sendable, Equatable {
    public var id: String
    public var pid: Int32
    public var destination: String
    public var state: MigrationState = .setup
    /// Bytes, rounds, rates and the frozen window: the one counters struct
    /// (read as `status.pageBytes` through the dynamic member lookup).
    public var counters = MigrationCounters()
    /// What the migration is doing now (the progress line's stage).
    public var stage: MigrationStage = .setup
    /// Dirty bytes the current engine round sends, and how many of them are out
    /// (updated per commit chunk).
    public var roundTotalBytes: UInt64 = 0
    public var roundSentBytes: UInt64 = 0
    /// The throttle auto-converge used: `cgroup` or `signals`; nil if it never throttled.
    public var throttleMechanism: ThrottleMechanism?
    /// Compression in use: `zstd N` or `raw`.
    public var compression: String?
    /// Why (`CompressionGovernor.Reason`): `fixed`, `network_bound`, `receiver_cpu`, `receiver_disk`,
    /// `sender_cpu`, `not_network_bound`, `holding`, `receiver_load_unknown`, `starting`.
    public var compressionReason: String?
    public var downtimeLimitMs: Double = 300
    public var maxBandwidth: Double?
    public var freezeMs: Double?
    /// The final round's scan (layout refresh and PAGEMAP_SCAN walks), target frozen.
    public var finalScanMs: Double?
    /// Of `finalScanMs`: re-reading the layout (`/proc/PID/maps`, registering new mappings).
    public var finalScanLayoutMs: Double?
    /// Of `finalScanMs`: the kernel's walks (`ioctl(PAGEMAP_SCAN)`, pagemap reads); the
    /// rest of it is the tracker's range bookkeeping.
    public var finalScanWalkMs: Double?
    /// The final scan's `ioctl(PAGEMAP_SCAN)` calls.
    public var finalScanIoctls: Int?
    /// The frozen window step by step (``FrozenTimeline``): each step's end, ms after the
    /// freeze began, up to the release; nil if the target never froze.
    public var frozenSteps: [FrozenStep]?
    /// The whole proof inside the frozen window (the exchange, and the re-read of `full_proof_ms`).
    public var verifyMs: Double?
    /// The proof that ran: `incremental` (ledger v3), `full` (v2: memory and image re-read) or `both`.
    public var proof: String?
    /// The sender's re-read of the frozen memory (`full`, `both`), part of `verify_ms`.
    public var fullProofMs: Double?
    /// Whether the re-read ran with the source frozen (it always does so far:
    /// the source is not released before it passes).
    public var fullProofInFrozenWindow: Bool?
    public var totalTimeMs: Double?
    public var digest: String?
    public var cutoverReason: String?
    /// `--strict`: cutovers aborted because the final round would overrun the limit.
    public var abortedCutovers: Int = 0
    public var cutoverAborts: [CutoverAbort] = []
    /// The receiver commit latency the final round is predicted with.
    public var commitEstimateMs: Double?
    public var warnings: [String] = []
    /// Set when `failed`: `{"code", "message"}` in JSON.
    public var failure: StatusError?
    /// The CRIU hand-over (`--restore criu`), after the proof; all nil without it.
    /// `criu dump` of the frozen source (no pages: the image has them).
    public var criuDumpMs: Double?
    /// The dump's files to the receiver, until RESTORE_BEGIN is sent.
    public var transferMs: Double?
    /// RESTORE_BEGIN received → restored process SIGCONTed, as the receiver measured it.
    public var restoreMs: Double?
    /// RESTORE_BEGIN received → every image page in the restored process (the source is killed after this).
    public var pagesCompleteMs: Double?
    /// Source frozen → process running on the receiver's host: freeze, final delta,
    /// verify, criu dump, transfer, restore (the service gap).
    public var frozenWindowMs: Double?
    public var criuFiles: Int?
    public var criuBytes: UInt64?
    /// The process's PID on the receiver's host.
    public var restoredPID: Int32?

    public subscript<T>(dynamicMember counter: WritableKeyPath<MigrationCounters, T>) -> T {
        get { counters[keyPath: counter] }
        set { counters[keyPath: counter] = newValue }
    }

    /// The failure's message (a new one set here has code `failed`).
    public var error: String? {
        get { failure?.message }
        set { failure = newValue.map { StatusError(code: "failed", message: $0) } }
    }

    public init(id: String, pid: Int32, destination: String) {
        self.id = id
        self.pid = pid
        self.destination = destination
    }

    enum CodingKeys: String, CodingKey {
        case id = "migration"
        case pid, destination, state, counters, stage
        case roundTotalBytes = "round_total_bytes"
        case roundSentBytes = "round_sent_bytes"
        case throttleMechanism = "throttle_mechanism"
        case compression
        case compressionReason = "compression_reason"
        case downtimeLimitMs = "downtime_limit_ms"
        case maxBandwidth = "max_bandwidth_bytes_per_second"
        case freezeMs = "freeze_ms"
        case finalScanMs = "final_scan_ms"
        case finalScanLayoutMs = "final_scan_layout_ms"
        case finalScanWalkMs = "final_scan_walk_ms"
        case finalScanIoctls = "final_scan_ioctls"
        case frozenSteps = "frozen_steps"
        case verifyMs = "verify_ms"
        case proof
        case fullProofMs = "full_proof_ms"
        case fullProofInFrozenWindow = "full_proof_in_frozen_window"
        case totalTimeMs = "total_time_ms"
        case digest
        case cutoverReason = "cutover_reason"
        case abortedCutovers = "aborted_cutovers"
        case cutoverAborts = "cutover_aborts"
        case commitEstimateMs = "commit_estimate_ms"
        case warnings
        case failure = "error"
        case criuDumpMs = "criu_dump_ms"
        case transferMs = "transfer_ms"
        case restoreMs = "restore_ms"
        case pagesCompleteMs = "pages_complete_ms"
        case frozenWindowMs = "frozen_window_ms"
        case criuFiles = "criu_files"
        case criuBytes = "criu_bytes"
        case restoredPID = "restored_pid"
    }
}

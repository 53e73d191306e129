import MemhaulWire
import Synchronization

/// Why the receiver turned a connection or a migration away: the label of
/// `memhaul_receiver_refusals_total`. A closed set, so the label's cardinality is bounded.
public enum RefusalReason: String, Codable, Sendable, CaseIterable {
    /// `--max-connections` connections were open.
    case connectionLimit = "connection_limit"
    /// `--max-connections-per-host` connections were open from the peer's host.
    case hostLimit = "host_limit"
    /// The TLS handshake failed or timed out.
    case handshake
    /// The session refused the peer with a wire ERROR (wire.md "Error codes"), by code.
    case unauthorized, limitExceeded = "limit_exceeded", migrationBusy = "migration_busy",
         resumeRejected = "resume_rejected", digestMismatch = "digest_mismatch",
         storageFailure = "storage_failure", restoreFailed = "restore_failed", cancelled
    /// Malformed or out-of-order frames, bad pages, a bad HELLO (protocol violations).
    case protocolViolation = "protocol"
    case internalError = "internal"

    /// The reason for a session's wire ERROR code.
    public init(code: ErrorCode) {
        switch code {
        case .unauthorized: self = .unauthorized
        case .limitExceeded: self = .limitExceeded
        case .migrationBusy: self = .migrationBusy
        case .resumeRejected: self = .resumeRejected
        case .digestMismatch: self = .digestMismatch
        case .storageFailure: self = .storageFailure
        case .restoreFailed: self = .restoreFailed
        case .cancelled: self = .cancelled
        case .internalError: self = .internalError
        default: self = .protocolViolation
        }
    }
}

/// The receiver agent's counters: the one place they live (the receiver's
/// `migration-stats.h`). The control status (`ReceiverControl`) and the
/// Prometheus exporter read ``values``; latency observers see each commit as
/// it happens (a histogram needs every observation, not a snapshot).
public final class ReceiverCounters: Sendable {
    /// A snapshot. JSON keys are the receiver status's `counters` object (`Protocol/control.md`).
    public struct Values: Codable, Sendable, Equatable {
        /// Connections the listener accepted, before limits and the handshake; count.
        public var connectionsAccepted: UInt64 = 0
        /// Connections or migrations refused, by ``RefusalReason`` raw value; count each.
        public var refusals: [String: UInt64] = [:]
        /// Migrations whose image completed (digest verified); count.
        public var migrationsCompleted: UInt64 = 0
        /// Commit chunks (wire rounds) made durable; count.
        public var commits: UInt64 = 0
        /// Sum of the commit latencies (ROUND_END received → commit point); seconds.
        public var commitSeconds: Double = 0
        /// Sum of the fsync parts of the commits (journal flush, fsync, block reservation); seconds.
        public var fsyncSeconds: Double = 0
        /// Page bytes (uncompressed) written into images by committed chunks; bytes.
        public var committedPageBytes: UInt64 = 0
        /// Zeros written into short gaps between a dense batch's pages by committed chunks (Protocol/image.md, "Filled gaps"): disk bytes that are not page bytes; bytes.
        public var committedFillBytes: UInt64 = 0
        /// Bytes of complete images read into the page cache ahead of their restore (``ImageReadahead``); bytes.
        public var readaheadBytes: UInt64 = 0
        /// Sum of the readaheads' durations (start → last call returned or stopped); seconds.
        public var readaheadSeconds: Double = 0

        public init() {}

        enum CodingKeys: String, CodingKey {
            case connectionsAccepted = "connections_accepted"
            case refusals
            case migrationsCompleted = "migrations_completed"
            case commits
            case commitSeconds = "commit_seconds"
            case fsyncSeconds = "fsync_seconds"
            case committedPageBytes = "committed_page_bytes"
            case committedFillBytes = "committed_fill_bytes"
            case readaheadBytes = "readahead_bytes"
            case readaheadSeconds = "readahead_seconds"
        }
    }

    /// One commit as it happened, for histograms.
    public struct Commit: Sendable {
        /// ROUND_END received → commit point returned; seconds.
        public var seconds: Double
        /// Its journal flush + fsync + block reservation; seconds.
        public var fsyncSeconds: Double
    }
    public typealias CommitObserver = @Sendable (Commit) -> Void

    private let state = Mutex<(values: Values, observers: [CommitObserver])>((Values(), []))

    public init() {}

    public var values: Values { state.withLock { $0.values } }

    /// Adds an observer of every later commit (the metrics exporter's histograms).
    public func observeCommits(_ observer: @escaping CommitObserver) {
        state.withLock { $0.observers.append(observer) }
    }

    func accepted() { state.withLock { $0.values.connectionsAccepted += 1 } }

    func refused(_ reason: RefusalReason) { state.withLock { $0.values.refusals[reason.rawValue, default: 0] += 1 } }

    func completed() { state.withLock { $0.values.migrationsCompleted += 1 } }

    func readAhead(bytes: UInt64, seconds: Double) {
        state.withLock {
            $0.values.readaheadBytes += bytes
            $0.values.readaheadSeconds += seconds
        }
    }

    func committed(seconds: Double, fsyncSeconds: Double, pageBytes: UInt64, fillBytes: UInt64) {
        let observers = state.withLock {
            $0.values.commits += 1
            $0.values.commitSeconds += seconds
            $0.values.fsyncSeconds += fsyncSeconds
            $0.values.committedPageBytes += pageBytes
            $0.values.committedFillBytes += fillBytes
            return $0.observers
        }
        let commit = Commit(seconds: seconds, fsyncSeconds: fsyncSeconds)
        for observe in observers { observe(commit) }
    }
}

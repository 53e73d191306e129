import Foundation
import MemhaulSystem
import Synchronization

/// What a migration did, round by round, for after the fact (`migrate --report
/// PATH`; Protocol/control.md, "Report"). Times are milliseconds since the
/// migration started; `started_at` anchors them (RFC 3339).
public struct MigrationReport: Codable, Sendable, Equatable {
    public var version = 1
    public var migration: String
    public var pid: Int32
    public var destination: String
    /// Wall clock at the start, RFC 3339 UTC.
    public var startedAt: String
    public var state: MigrationState = .setup
    public var error: StatusError?
    public var rounds: [Round] = []
    public var phases: [Phase] = []
    public var resumes: [Resume] = []
    public var downtime = Downtime()

    /// One engine round.
    public struct Round: Codable, Sendable, Equatable {
        public var round: Int
        public var startMs: Double
        public var endMs: Double
        /// Pages with data, zero-page runs and discards sent; pages.
        public var pages: UInt64
        public var zeroPages: UInt64
        public var discardedPages: UInt64
        /// Uncompressed page bytes and wire bytes of the round; bytes.
        public var pageBytes: UInt64
        public var wireBytes: UInt64
        /// Page bytes per second over the round; bytes/s.
        public var throughputBytesPerSecond: Double
        /// Bytes dirtied per second while it ran, as the next scan measured; bytes/s.
        public var dirtyRateBytesPerSecond: Double?
        /// Dirty bytes the scan after it found (what the next round must send); bytes.
        public var pendingBytesAfter: UInt64?
        /// `zstd N` or `raw`.
        public var compression: String?
        public var throttlePercent: Int
        /// How long the policy expected this round to take (its expected downtime before it); ms.
        public var predictedMs: Double?
        /// How long it took; ms.
        public var actualMs: Double
        /// Whether the target was frozen (the final delta).
        public var frozen: Bool
        /// What the policy decided after it: `next_round`, `throttle N%`, `cutover: REASON`.
        public var decision: String?
    }

    public struct Phase: Codable, Sendable, Equatable {
        /// `setup`, `precopy`, `freeze`, `final_delta`, `verify`, `after_proof` (the last ends with the migration).
        public var name: String
        public var startMs: Double
        public var endMs: Double?
    }

    public struct Resume: Codable, Sendable, Equatable {
        /// When the break was seen; ms.
        public var atMs: Double
        /// When the connection was back, and the receiver's committed wire round then.
        public var resumedAtMs: Double?
        public var committedRound: UInt64?
        /// Wire bytes lost by all breaks so far (status `resent_bytes_after_resume`); bytes.
        public var resentBytes: UInt64?
    }

    public struct Downtime: Codable, Sendable, Equatable {
        public var limitMs: Double?
        /// The expected downtime when the cutover was decided; ms.
        public var expectedMs: Double?
        public var downtimeMs: Double?
        public var frozenMs: Double?
        public var exceeded: Bool?
    }

    enum CodingKeys: String, CodingKey {
        case version, migration, pid, destination
        case startedAt = "started_at"
        case state, error, rounds, phases, resumes, downtime
    }
}

extension MigrationReport.Round {
    enum CodingKeys: String, CodingKey {
        case round
        case startMs = "start_ms"
        case endMs = "end_ms"
        case pages
        case zeroPages = "zero_pages"
        case discardedPages = "discarded_pages"
        case pageBytes = "page_bytes"
        case wireBytes = "wire_bytes"
        case throughputBytesPerSecond = "throughput_bytes_per_second"
        case dirtyRateBytesPerSecond = "dirty_rate_bytes_per_second"
        case pendingBytesAfter = "pending_bytes_after"
        case compression
        case throttlePercent = "throttle_percent"
        case predictedMs = "predicted_ms"
        case actualMs = "actual_ms"
        case frozen, decision
    }
}

extension MigrationReport.Phase {
    enum CodingKeys: String, CodingKey {
        case name
        case startMs = "start_ms"
        case endMs = "end_ms"
    }
}

extension MigrationReport.Resume {
    enum CodingKeys: String, CodingKey {
        case atMs = "at_ms"
        case resumedAtMs = "resumed_at_ms"
        case committedRound = "committed_round"
        case resentBytes = "resent_bytes"
    }
}

extension MigrationReport.Downtime {
    enum CodingKeys: String, CodingKey {
        case limitMs = "limit_ms"
        case expectedMs = "expected_ms"
        case downtimeMs = "downtime_ms"
        case frozenMs = "frozen_ms"
        case exceeded
    }
}

/// Builds a ``MigrationReport`` as the migration runs; any thread may read it.
/// Bounded: at most ``maxRounds`` round records and ``maxResumes`` resume
/// events (a migration is capped far lower by `max_rounds`; this guards memory).
final class ReportRecorder: Sendable {
    static let maxRounds = 100_000
    static let maxResumes = 10_000

    private let start: Double
    private let report: Mutex<MigrationReport>

    init(id: String, pid: Int32, destination: String) {
        start = MonotonicClock.seconds()
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        report = Mutex(MigrationReport(migration: id, pid: pid, destination: destination, startedAt: f.string(from: Date())))
        phase("setup")
    }

    var value: MigrationReport { report.withLock { $0 } }

    private func ms(_ at: Double) -> Double { (at - start) * 1000 }

    /// Ends the open phase and opens `name`.
    func phase(_ name: String, at: Double = MonotonicClock.seconds()) {
        report.withLock {
            if let last = $0.phases.indices.last, $0.phases[last].endMs == nil { $0.phases[last].endMs = ms(at) }
            $0.phases.append(.init(name: name, startMs: ms(at)))
        }
    }

    func round(_ r: MigrationReport.Round) {
        report.withLock { if $0.rounds.count < Self.maxRounds { $0.rounds.append(r) } }
    }

    func startMs(_ at: Double) -> Double { ms(at) }

    /// The policy's verdict on the last round, with what the scan after it found.
    func decided(_ decision: ConvergenceDecision, dirtyRate: Double, pendingBytes: UInt64, expectedDowntimeMs: Double?) {
        report.withLock {
            guard let last = $0.rounds.indices.last else { return }
            $0.rounds[last].dirtyRateBytesPerSecond = dirtyRate
            $0.rounds[last].pendingBytesAfter = pendingBytes
            $0.rounds[last].decision = switch decision {
            case .nextRound: "next_round"
            case .throttle(let percent): "throttle \(percent)%"
            case .cutover(let reason): "cutover: \(reason)"
            }
            if case .cutover = decision { $0.downtime.expectedMs = expectedDowntimeMs }
        }
    }

    func broke() {
        let now = MonotonicClock.seconds()
        report.withLock { if $0.resumes.count < Self.maxResumes { $0.resumes.append(.init(atMs: ms(now))) } }
    }

    func resumed(committedRound: UInt64, resentBytes: UInt64) {
        let now = MonotonicClock.seconds()
        report.withLock {
            guard let last = $0.resumes.indices.last else { return }
            $0.resumes[last].resumedAtMs = ms(now)
            $0.resumes[last].committedRound = committedRound
            $0.resumes[last].resentBytes = resentBytes
        }
    }

    /// The end: closes the last phase, copies the outcome from the status.
    func finish(_ status: MigrationStatus) {
        let now = MonotonicClock.seconds()
        report.withLock {
            if let last = $0.phases.indices.last, $0.phases[last].endMs == nil { $0.phases[last].endMs = ms(now) }
            $0.state = status.state
            $0.error = status.failure
            $0.downtime.limitMs = status.downtimeLimitMs
            $0.downtime.downtimeMs = status.downtimeMs
            $0.downtime.frozenMs = status.frozenMs
            $0.downtime.exceeded = status.frozenMs.map { $0 > status.downtimeLimitMs }
        }
    }
}

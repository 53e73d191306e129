/// When to stop pre-copying and cut over: the rule, in one place.
///
/// After every round the sender measures how fast pages move (throughput) and
/// how fast the target dirties them, and predicts the final round's length as
/// `pending dirty bytes / throughput + scan + commit latency`, the last a
/// conservative bound from the commits of rounds of a comparable size
/// (``CommitLatencyEstimator``: receiver commits swing from 30 ms to seconds). Once that prediction
/// fits `downtimeLimit` it cuts over, unless one more round is predicted to at
/// least halve it, or a delta of more than 16 MiB would be predicted with no
/// commit measured yet (`tighteningRounds`: the limit is a ceiling, not a target). If the dirty set stops shrinking for `stallRounds`
/// rounds it throttles the target (auto-converge, ``ThrottleStepper``: 20 %,
/// then +10 % per stall up to 99 % as QEMU does, or sooner and in larger
/// steps while the dirty rate far exceeds the throughput). It cuts over anyway at `maxRounds` or `maxTime`,
/// with a warning that states the downtime to expect.
public struct ConvergenceParameters: Sendable, Equatable {
    /// Cut over when the expected downtime is at or below this (QEMU's default: 300 ms).
    public var downtimeLimitMs: Double = 300
    /// Rounds run after the prediction fits the limit, each only while one more
    /// round is predicted to at least halve the frozen window and the previous
    /// one shrank it by a quarter or more. Where the pages, not the fixed
    /// costs, fill the window, a round of it takes about as long as the window
    /// itself and leaves only what the target dirties meanwhile: 4 GiB at
    /// 32 MB/s that fit the limit after round 0 froze 358-722 ms when cut
    /// there, 102-131 ms after one tightening round (BENCHMARKS.md,
    /// "Tightening rounds"). A round run only to measure a delta's commit
    /// (``ConvergencePolicy/unmeasuredCommitBytes``) counts as one too.
    /// 0 = cut over as soon as it fits (QEMU's rule).
    public var tighteningRounds: Int = 3
    /// Rounds after round 0 before a forced cutover; 0 = stop-and-copy.
    public var maxRounds: Int = 30
    /// Wall time before a forced cutover, seconds.
    public var maxTimeSeconds: Double = 600
    /// Send-rate cap in bytes/s of wire traffic; nil = unlimited.
    public var maxBandwidth: Double? = nil
    /// Throttle the target when rounds stall.
    public var autoConverge: Bool = true
    public var throttleInitialPct: Int = 20
    public var throttleIncrementPct: Int = 10
    public var throttleMaxPct: Int = 99
    /// How the throttle steps (``ThrottleStepper``).
    public var throttleSteps: ThrottleSteps = .adaptive
    /// `adaptive`: throttle while the dirty rate exceeds this fraction of the
    /// throughput (QEMU's throttle-trigger-threshold, 50 %).
    public var throttleTriggerRatio: Double = 0.5
    /// How long a broken connection may take to come back before the
    /// migration fails (the source is then resumed and untracked); 0 = no resume.
    public var resumeTimeoutSeconds: Double = 30
    /// A round's pages travel as wire rounds ("commit chunks") of at most this
    /// many bytes, each committed by the receiver on its own, so a break loses
    /// at most the chunks not yet committed. Sent back to back: the stream
    /// does not wait for commits.
    public var commitChunkBytes: UInt64 = 64 << 20
    /// The frozen round's commit chunks are at least this big (and at least
    /// `commitChunkBytes`). Each commit is a drain and a few fsyncs on the
    /// receiver's session thread, inside the frozen window: 13 of them for a
    /// 1 GiB stop-and-copy at 64 MiB, 15-20 ms each on ext4. A break in the
    /// frozen round thaws the source and resumes pre-copy, so finer chunks
    /// there only shorten what the resume sends again. 1 GiB stays far under
    /// the receiver's default 2^20 pages per wire round.
    public var frozenCommitChunkBytes: UInt64 = 1 << 30
    /// Rounds without enough shrinkage that count as a stall.
    public var stallRounds: Int = 2
    /// A round "shrinks" if its pending bytes are below this fraction of the
    /// previous round's.
    public var shrinkFactor: Double = 0.9
    /// `--strict`: a final round that would overrun `downtimeLimitMs` is
    /// aborted (the target thawed, pre-copy goes on) instead of finished.
    public var strict: Bool = false
    /// Aborted cutovers before a strict migration fails (the source running).
    public var strictAttempts: Int = 3

    public init() {}
}

/// What one round measured, as the policy needs it.
public struct RoundMeasurement: Sendable, Equatable {
    public var round: Int
    /// Page bytes sent in this round (uncompressed, zero pages excluded).
    public var pageBytesSent: Double
    /// Seconds the round took from scan to acknowledgement.
    public var seconds: Double
    /// Bytes dirtied since this round's scan, found by the next scan: what the
    /// final round would have to send now.
    public var pendingBytes: Double
    /// Seconds between this round's scan and the next scan.
    public var dirtyWindowSeconds: Double
    /// Seconds a round costs whatever its size: the scan. The final round pays it too.
    public var fixedSeconds: Double
    /// The receiver's commit of this round: last ROUND_END sent → its
    /// ROUND_ACK. Predicted from the rounds so far (``CommitLatencyEstimator``).
    public var commitSeconds: Double

    public init(round: Int, pageBytesSent: Double, seconds: Double, pendingBytes: Double, dirtyWindowSeconds: Double,
                fixedSeconds: Double = 0, commitSeconds: Double = 0) {
        self.round = round
        self.pageBytesSent = pageBytesSent
        self.seconds = seconds
        self.pendingBytes = pendingBytes
        self.dirtyWindowSeconds = dirtyWindowSeconds
        self.fixedSeconds = fixedSeconds
        self.commitSeconds = commitSeconds
    }
}

public enum ConvergenceDecision: Sendable, Equatable {
    /// Run another round.
    case nextRound
    /// The prediction fits the limit, but one more round is predicted to
    /// bring it from `expectedDowntimeMs` to at most half of it.
    case tighten(expectedDowntimeMs: Double, nextRoundMs: Double)
    /// The prediction fits the limit without a commit in it: no delta round
    /// has been acknowledged yet, and the pending bytes are more than
    /// ``ConvergencePolicy/unmeasuredCommitBytes``. One more round measures one.
    case measureCommit(expectedDowntimeMs: Double)
    /// Run another round with the target throttled to this percentage.
    case throttle(percent: Int)
    /// Freeze and send the final delta.
    case cutover(reason: CutoverReason)
}

extension ConvergenceDecision {
    /// The report's and the log's words for a tightening round.
    public static func tightenReason(expectedMs: Double, nextRoundMs: Double) -> String {
        "fits the limit at \(Int(expectedMs.rounded())) ms; one more round is predicted to bring it to \(Int(nextRoundMs.rounded())) ms"
    }

    /// The report's and the log's words for a round run to measure a commit.
    public static func measureCommitReason(expectedMs: Double) -> String {
        "fits the limit at \(Int(expectedMs.rounded())) ms with no commit of a delta measured yet; one more round measures one"
    }

    /// Why a round runs although the prediction already fits (the report's
    /// `decision_reason`, the sender's log); nil for every other decision.
    public var tighteningReason: String? {
        switch self {
        case .tighten(let ms, let next): Self.tightenReason(expectedMs: ms, nextRoundMs: next)
        case .measureCommit(let ms): Self.measureCommitReason(expectedMs: ms)
        default: nil
        }
    }
}

public enum CutoverReason: Sendable, Equatable, CustomStringConvertible {
    case converged(expectedDowntimeMs: Double)
    case stopAndCopy
    case maxRounds(expectedDowntimeMs: Double)
    case maxTime(expectedDowntimeMs: Double)
    case requested

    /// True when the cutover was forced before the prediction fit the limit.
    public var isForced: Bool {
        switch self {
        case .maxRounds, .maxTime: return true
        default: return false
        }
    }

    public var description: String {
        switch self {
        case .converged(let ms): return "converged (expected downtime \(Int(ms.rounded())) ms)"
        case .stopAndCopy: return "stop-and-copy (max-rounds 0)"
        case .maxRounds(let ms): return "max rounds reached; expected downtime \(Int(ms.rounded())) ms exceeds the limit"
        case .maxTime(let ms): return "max time reached; expected downtime \(Int(ms.rounded())) ms exceeds the limit"
        case .requested: return "cutover requested by operator"
        }
    }
}

/// The convergence state machine. Feed it one measurement per round.
public struct ConvergencePolicy: Sendable {
    public var parameters: ConvergenceParameters
    public private(set) var throttlePercent: Int = 0
    public private(set) var throughput: Double = 0  // page bytes/s, smoothed
    public private(set) var dirtyRate: Double = 0  // bytes/s
    public private(set) var expectedDowntimeMs: Double = .infinity
    /// The commit latency the final round is predicted with.
    public private(set) var commitLatency = CommitLatencyEstimator()
    /// The commit latency the last prediction used: for a delta of its pending bytes.
    public private(set) var commitEstimateSeconds: Double = 0
    /// How far an aborted (`--strict`) final round went past its prediction, at
    /// most, and at most the limit (an abort's own prediction can be wild: a
    /// rate measured over a few milliseconds): added to every later
    /// prediction, so the next cutover waits for a smaller dirty set instead
    /// of repeating the same overrun.
    public private(set) var overrunMs: Double = 0

    /// A strict cutover was aborted: the final round was predicted at
    /// `predictedMs` when the cutover was decided, and at the abort its frozen
    /// time plus the predicted rest was `abortMs`.
    public mutating func recordAbortedCutover(predictedMs: Double, abortMs: Double) {
        guard predictedMs.isFinite, abortMs.isFinite else { return }
        overrunMs = min(parameters.downtimeLimitMs, max(overrunMs, abortMs - predictedMs))
    }
    private var stalled = 0
    private var lastPending: Double?
    /// Tightening rounds run so far, and the prediction that started the last.
    public private(set) var tightened = 0
    private var lastTightenedFromMs: Double?

    public init(parameters: ConvergenceParameters) { self.parameters = parameters }

    /// Decides what to do after `m`, `elapsed` seconds into the migration.
    public mutating func decide(after m: RoundMeasurement, elapsed: Double) -> ConvergenceDecision {
        if parameters.maxRounds == 0 { return .cutover(reason: .stopAndCopy) }
        if m.seconds > 0, m.pageBytesSent > 0 {
            let sample = m.pageBytesSent / m.seconds
            // Smoothed, not optimistic: an over-estimate makes the final round overrun.
            throughput = throughput == 0 ? sample : 0.5 * throughput + 0.5 * sample
        }
        if m.dirtyWindowSeconds > 0 { dirtyRate = m.pendingBytes / m.dirtyWindowSeconds }
        let transfer = throughput > 0 ? m.pendingBytes / throughput * 1000 : (m.pendingBytes == 0 ? 0 : .infinity)
        // Round 0's acknowledgement waits for the receiver's backlog of the whole
        // copy, not for one commit; the final round follows a drain (no backlog).
        if m.round > 0 { commitLatency.record(seconds: m.commitSeconds, bytes: m.pageBytesSent) }
        commitEstimateSeconds = commitLatency.estimateSeconds(forBytes: m.pendingBytes)
        expectedDowntimeMs = transfer + m.fixedSeconds * 1000 + commitEstimateSeconds * 1000 + overrunMs

        if expectedDowntimeMs <= parameters.downtimeLimitMs {
            if m.round < parameters.maxRounds, elapsed < parameters.maxTimeSeconds, tightened < parameters.tighteningRounds,
               let tighten = tighteningRound(after: m) {
                tightened += 1
                lastTightenedFromMs = expectedDowntimeMs
                return tighten
            }
            return .cutover(reason: .converged(expectedDowntimeMs: expectedDowntimeMs))
        }
        if m.round >= parameters.maxRounds {
            return .cutover(reason: .maxRounds(expectedDowntimeMs: expectedDowntimeMs))
        }
        if elapsed >= parameters.maxTimeSeconds {
            return .cutover(reason: .maxTime(expectedDowntimeMs: expectedDowntimeMs))
        }
        if let last = lastPending, m.pendingBytes >= last * parameters.shrinkFactor {
            stalled += 1
        } else {
            stalled = 0
        }
        lastPending = m.pendingBytes
        if let next = ThrottleStepper.next(current: throttlePercent, stalled: stalled, afterFullCopy: m.round == 0, dirtyRate: dirtyRate,
                                           throughput: throughput, parameters: parameters) {
            stalled = 0
            throttlePercent = next
            return .throttle(percent: throttlePercent)
        }
        return .nextRound
    }

    /// A final delta up to this size may be predicted without a measured
    /// commit; a larger one waits for a delta round's commit first (a
    /// tightening round, ``ConvergenceDecision/measureCommit(expectedDowntimeMs:)``).
    /// Round 0's commit is no guide: its chunks are written in place, with
    /// their writeback started as they arrive, while a delta is journaled.
    /// Redis under the README demo's SET load cut over after round 0 at fits
    /// of 160–284 ms and froze 193–479 ms, 4 times in 7 over the 300 ms limit;
    /// its final commits of 150 MB took 59–62 ms against round 0's 8–23 ms
    /// (BENCHMARKS.md, "A commit measured before the first cutover").
    public static let unmeasuredCommitBytes: Double = 16 * 1_048_576

    /// A tightening round after a fit, if one is worth it: one predicted to
    /// halve the window, or one that measures a delta's commit.
    private func tighteningRound(after m: RoundMeasurement) -> ConvergenceDecision? {
        if let next = tighteningPrediction(after: m) {
            return .tighten(expectedDowntimeMs: expectedDowntimeMs, nextRoundMs: next)
        }
        if commitLatency.samples.isEmpty, m.pendingBytes > Self.unmeasuredCommitBytes {
            return .measureCommit(expectedDowntimeMs: expectedDowntimeMs)
        }
        return nil
    }

    /// The frozen window predicted after one more round, if another round is
    /// worth it: the last tightening round (if any) shrank the
    /// prediction to ¾ or less, and the next is predicted to halve it. The
    /// round sends the pending bytes at the measured throughput and pays the
    /// scan and a commit, about the window's own length; the target dirties
    /// at the measured rate meanwhile.
    private func tighteningPrediction(after m: RoundMeasurement) -> Double? {
        guard throughput > 0, dirtyRate.isFinite else { return nil }
        if let last = lastTightenedFromMs, expectedDowntimeMs > 0.75 * last { return nil }
        let roundSeconds = (expectedDowntimeMs - overrunMs) / 1000
        let nextPending = dirtyRate * roundSeconds
        let nextMs = (nextPending / throughput + m.fixedSeconds + commitLatency.estimateSeconds(forBytes: nextPending)) * 1000 + overrunMs
        return nextMs <= 0.5 * expectedDowntimeMs ? nextMs : nil
    }
}

import MemhaulSystem

/// One step of the frozen window: when it ended, milliseconds after the freeze began
/// (`frozen_steps` in `Protocol/control.md`).
public struct FrozenStep: Codable, Sendable, Equatable {
    public var step: String
    public var atMs: Double

    public init(step: String, atMs: Double) {
        self.step = step
        self.atMs = atMs
    }

    enum CodingKeys: String, CodingKey {
        case step
        case atMs = "at_ms"
    }
}

/// The frozen window step by step, on the monotonic clock: what each part of
/// `frozen_ms` (freeze → source released) was spent on, so that no part of
/// it is left unexplained. The migration's thread marks; a new freeze (after
/// a `--strict` abort) starts it again.
struct FrozenTimeline {
    /// The steps, in the order they happen in a completed migration.
    enum Step: String, CaseIterable {
        /// Every thread of the target stopped.
        case frozen
        /// The final scan (layout refresh, PAGEMAP_SCAN walks) returned.
        case finalScan = "final_scan"
        /// The final delta's last ROUND_END is out.
        case finalDeltaSent = "final_delta_sent"
        /// Its last ROUND_ACK is in (the receiver's durable commit).
        case finalDeltaAcked = "final_delta_acked"
        /// Status, report and log updated for the final round.
        case finalRoundRecorded = "final_round_recorded"
        /// The sender's digest is known (ledger sum, or the memory re-read).
        case digest
        /// The verification round's LAYOUT and ROUND_END are out.
        case verifySent = "verify_sent"
        /// Its ROUND_ACK, with the image's digest, is in.
        case verifyAcked = "verify_acked"
        /// The digests compared and the status updated: the proof passed.
        case proved
        /// The check for file pages the image lacks (``UnresidentFilePages``) done.
        case unresidentChecked = "unresident_checked"
        /// The step after the proof (`--restore criu`) done.
        case afterProof = "after_proof"
        /// CLOSE `complete` sent.
        case closeSent = "close_sent"
        /// The release (``TargetHold/release(_:)``) begins.
        case releaseStart = "release_start"
        /// The target runs again (or, with `--after stop|kill`, is stopped or killed for good).
        case released
    }

    private var origin: Double?
    private var marks: [(step: Step, at: Double)] = []

    /// Starts again at a new freeze (`frozenAt`: when it began).
    mutating func start(frozenAt: Double) {
        origin = frozenAt
        marks = []
    }

    mutating func mark(_ step: Step, at: Double = MonotonicClock.seconds()) {
        guard origin != nil else { return }
        marks.append((step, at))
    }

    /// The steps as offsets from the freeze, in milliseconds; nil if the target never froze.
    var steps: [FrozenStep]? {
        guard let origin else { return nil }
        return marks.map { FrozenStep(step: $0.step.rawValue, atMs: ($0.at - origin) * 1000) }
    }
}

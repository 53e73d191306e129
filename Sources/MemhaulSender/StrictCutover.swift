/// One aborted cutover, as the status reports it (`cutover_aborts`).
public struct CutoverAbort: Codable, Sendable, Equatable {
    /// Where the final round was when the overrun became certain.
    public enum Phase: String, Codable, Sendable {
        /// After the final scan, before any page was sent.
        case beforeSend = "before-send"
        /// While the final delta streamed.
        case streaming
        /// Waiting for the receiver's commit of the final delta.
        case commit
    }
    public var phase: Phase
    /// Freeze → the decision.
    public var frozenMs: Double
    /// `frozenMs` + what the rest would have taken, as predicted then.
    public var predictedMs: Double
    public var limitMs: Double
    /// Page bytes of the final delta not sent yet.
    public var remainingBytes: UInt64

    enum CodingKeys: String, CodingKey {
        case phase
        case frozenMs = "frozen_ms"
        case predictedMs = "predicted_ms"
        case limitMs = "limit_ms"
        case remainingBytes = "remaining_bytes"
    }

    public var description: String {
        "cutover aborted (\(phase.rawValue)): frozen \(Int(frozenMs.rounded())) ms, predicted \(Int(predictedMs.rounded())) ms "
            + "> limit \(MigrationLimitFormat.ms(limitMs)) ms, \(remainingBytes >> 10) KiB of the final delta unsent; the source runs on, pre-copy continues"
    }
}

enum MigrationLimitFormat {
    static func ms(_ v: Double) -> String { v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(v) }
}

/// `--strict`: decides, while the target is frozen, whether the final round
/// can still end (its last commit acknowledged) within the limit. Pure: the
/// sender feeds it the clock and its progress.
///
/// The rest is predicted as unsent bytes / rate + commit latency, where the
/// rate is the final round's own wire rate once it has streamed for
/// `ownRateAfterSeconds`, and the pre-copy throughput before; unsent bytes
/// are page bytes minus wire bytes sent, which compression makes an
/// over-estimate (the guard errs towards aborting).
struct StrictCutover {
    var limitMs: Double
    /// Monotonic seconds of the freeze.
    var frozenAt: Double
    /// Page bytes of the final delta.
    var deltaBytes: Double
    /// Pre-copy page throughput, bytes/s (0 = unknown).
    var throughput: Double
    var commitSeconds: Double
    var ownRateAfterSeconds = 0.02

    func predictedRestSeconds(wireSent: Double, streamSeconds: Double) -> Double {
        let unsent = max(0, deltaBytes - wireSent)
        let rate = streamSeconds >= ownRateAfterSeconds && wireSent > 0 ? wireSent / streamSeconds : throughput
        let transfer = unsent == 0 ? 0 : rate > 0 ? unsent / rate : .infinity
        return transfer + commitSeconds
    }

    /// An abort if `now` plus the predicted rest passes the limit.
    func check(_ phase: CutoverAbort.Phase, now: Double, wireSent: Double = 0, streamSeconds: Double = 0) -> CutoverAbort? {
        let frozen = (now - frozenAt) * 1000
        let rest = phase == .commit ? 0 : predictedRestSeconds(wireSent: wireSent, streamSeconds: streamSeconds) * 1000
        guard frozen + rest > limitMs else { return nil }
        return CutoverAbort(phase: phase, frozenMs: frozen, predictedMs: frozen + rest, limitMs: limitMs,
                            remainingBytes: UInt64(max(0, deltaBytes - wireSent)))
    }

    /// Monotonic seconds at which waiting for the commit passes the limit.
    var commitDeadline: Double { frozenAt + limitMs / 1000 }
}

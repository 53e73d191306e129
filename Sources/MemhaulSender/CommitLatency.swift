/// The receiver's commit latency (ROUND_END sent → ROUND_ACK received) as the
/// final round must expect it: it swings from tens of milliseconds to seconds
/// with the receiver's disk and CPU, so a mean under-predicts.
///
/// The estimate is the larger of a TCP-style retransmission bound (smoothed
/// mean + 4 × smoothed mean deviation, RFC 6298) and the largest of the last
/// `window` samples: one slow commit raises it at once, and it decays only
/// after `window` quick ones.
public struct CommitLatencyEstimator: Sendable, Equatable {
    public var window = 4
    public private(set) var smoothed: Double?
    public private(set) var deviation: Double = 0
    public private(set) var recent: [Double] = []

    public init() {}

    public mutating func record(seconds sample: Double) {
        guard sample.isFinite, sample >= 0 else { return }
        if let s = smoothed {
            deviation = 0.75 * deviation + 0.25 * abs(sample - s)
            smoothed = 0.875 * s + 0.125 * sample
        } else {
            smoothed = sample
            deviation = sample / 2
        }
        recent.append(sample)
        if recent.count > window { recent.removeFirst(recent.count - window) }
    }

    /// Seconds to expect; 0 before any sample.
    public var estimateSeconds: Double {
        guard let s = smoothed else { return 0 }
        return max(s + 4 * deviation, recent.max() ?? 0)
    }
}

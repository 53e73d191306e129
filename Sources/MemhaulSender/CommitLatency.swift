/// The receiver's commit latency (ROUND_END sent → ROUND_ACK received) as the
/// final round must expect it: it swings from tens of milliseconds to seconds
/// with the receiver's disk and CPU, so a mean under-predicts.
///
/// The estimate is the larger of a TCP-style retransmission bound (smoothed
/// mean + 4 × smoothed mean deviation, RFC 6298) and the largest of the last
/// `window` samples: one slow commit raises it at once, and it decays only
/// after `window` quick ones.
///
/// A commit's latency grows with what the receiver still has to write and
/// flush, so the bound for a final delta of B bytes is taken over the commits
/// of rounds no larger than `max(4 × B, 16 MiB)` when there are at least two
/// of them: the early rounds' hundreds of megabytes no longer hold the
/// prediction for a 10 MB delta above the limit for a dozen rounds. With
/// fewer comparable commits every commit counts, as before.
public struct CommitLatencyEstimator: Sendable, Equatable {
    public struct Sample: Sendable, Equatable {
        public var seconds: Double
        /// Page bytes of the round the commit closed; nil: unknown (comparable to any).
        public var bytes: Double?
    }
    public var window = 4
    /// Samples kept (newest last).
    public var history = 32
    public private(set) var samples: [Sample] = []

    public init() {}

    public mutating func record(seconds sample: Double, bytes: Double? = nil) {
        guard sample.isFinite, sample >= 0 else { return }
        samples.append(Sample(seconds: sample, bytes: bytes.flatMap { $0.isFinite && $0 >= 0 ? $0 : nil }))
        if samples.count > history { samples.removeFirst(samples.count - history) }
    }

    /// Seconds to expect for a commit of any size; 0 before any sample.
    public var estimateSeconds: Double { Self.bound(samples[...], window: window) }

    /// Seconds to expect for the commit of a final delta of `bytes`; 0 before any sample.
    public func estimateSeconds(forBytes bytes: Double) -> Double {
        let cap = max(4 * bytes, 16 * 1_048_576)
        let comparable = samples.filter { ($0.bytes ?? 0) <= cap }
        return Self.bound(comparable.count >= 2 ? comparable[...] : samples[...], window: window)
    }

    private static func bound(_ s: ArraySlice<Sample>, window: Int) -> Double {
        guard let first = s.first?.seconds else { return 0 }
        var smoothed = first, deviation = first / 2
        for x in s.dropFirst().map(\.seconds) {
            deviation = 0.75 * deviation + 0.25 * abs(x - smoothed)
            smoothed = 0.875 * smoothed + 0.125 * x
        }
        return max(smoothed + 4 * deviation, s.suffix(window).map(\.seconds).max() ?? 0)
    }
}

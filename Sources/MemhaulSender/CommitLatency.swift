/// The receiver's commit latency (ROUND_END sent → ROUND_ACK received) as the
/// final round must expect it: it swings from tens of milliseconds to seconds
/// with the receiver's disk and CPU, so a mean under-predicts.
///
/// The estimate is the larger of a retransmission-style bound (mean + 4 × mean
/// deviation, RFC 6298's shape, each weighted by 0.875 per newer sample) and
/// the largest of the last `window` samples: one slow commit raises it at
/// once, and it decays only after `window` quick ones.
///
/// The weights are normalised (the mean of what was seen, not an EWMA started
/// at the first sample): RFC 6298 seeds its deviation with half the first
/// sample, which puts 3 × that commit into the bound, and here the first
/// comparable commit is the oldest and largest one (the rounds shrink), so the
/// seed and the smoothed mean's lag behind the falling commits held the
/// prediction at 3–5 × the commits that followed (issue 11's converge reports:
/// median 4.7 × the next round's commit, 2.7 × the final commit).
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
    /// Weight of a sample relative to the next newer one (RFC 6298's 1 − α).
    public var decay = 0.875
    public private(set) var samples: [Sample] = []

    public init() {}

    public mutating func record(seconds sample: Double, bytes: Double? = nil) {
        guard sample.isFinite, sample >= 0 else { return }
        samples.append(Sample(seconds: sample, bytes: bytes.flatMap { $0.isFinite && $0 >= 0 ? $0 : nil }))
        if samples.count > history { samples.removeFirst(samples.count - history) }
    }

    /// Seconds to expect for a commit of any size; 0 before any sample.
    public var estimateSeconds: Double { bound(samples[...]) }

    /// Seconds to expect for the commit of a final delta of `bytes`; 0 before any sample.
    public func estimateSeconds(forBytes bytes: Double) -> Double {
        let cap = max(4 * bytes, 16 * 1_048_576)
        let comparable = samples.filter { ($0.bytes ?? 0) <= cap }
        return bound(comparable.count >= 2 ? comparable[...] : samples[...])
    }

    private func bound(_ s: ArraySlice<Sample>) -> Double {
        guard !s.isEmpty else { return 0 }
        let seconds = s.map(\.seconds)
        // Newest weight 1, each older one `decay` times the next.
        var weights = [Double](repeating: 1, count: seconds.count)
        for i in weights.indices.dropLast().reversed() { weights[i] = weights[i + 1] * decay }
        let total = weights.reduce(0, +)
        let mean = zip(weights, seconds).reduce(0) { $0 + $1.0 * $1.1 } / total
        let deviation = zip(weights, seconds).reduce(0) { $0 + $1.0 * abs($1.1 - mean) } / total
        return max(mean + 4 * deviation, seconds.suffix(window).max() ?? 0)
    }
}

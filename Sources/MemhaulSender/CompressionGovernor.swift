import Synchronization

/// Chooses the zstd level while a migration runs (`--compression-level auto`).
///
/// It climbs the hill of delivered page throughput: every `window` batches it
/// measures page bytes per second, starting raw, keeps moving one step along the ladder
/// `raw, -5, -3, -1, 1, 3, 6` while that improves, and turns back when it does
/// not. Measuring the outcome rather than guessing the bottleneck matters when
/// sender, receiver and target share a few cores (loopback): there a busy
/// socket means a busy receiver CPU, not a slow network. A slow link ends up
/// compressing more, a fast one near raw. A fixed level turns it off.
final class CompressionGovernor: Sendable {
    /// zstd levels; nil = send raw without trying to compress.
    static let ladder: [Int32?] = [nil, -5, -3, -1, 1, 3, 6]

    let adaptive: Bool
    private let fixedLevel: Int32?
    private let index: Atomic<Int>
    private let window = 32
    private struct Climb {
        var batches = 0
        var bytes = 0.0
        var seconds = 0.0
        var direction = 1
        var lastRate = 0.0
    }
    private let state = Mutex(Climb())

    init(fixed level: Int32?) {
        fixedLevel = level
        adaptive = level == nil
        // Adaptive starts raw (cheapest for the CPU) and climbs if that pays.
        index = Atomic(level.map { Self.ladder.firstIndex(of: $0) ?? Self.ladder.firstIndex(of: 1)! } ?? 0)
    }

    /// The level for the next batch (nil = raw).
    var level: Int32? {
        if !adaptive { return fixedLevel }
        return Self.ladder[index.load(ordering: .relaxed)]
    }

    /// Called by the sending thread once per batch: page bytes it carried and
    /// the wall time since the previous batch.
    func record(pageBytes: Int, seconds: Double) {
        guard adaptive else { return }
        state.withLock { c in
            c.batches += 1
            c.bytes += Double(pageBytes)
            c.seconds += seconds
            guard c.batches >= window, c.seconds > 0 else { return }
            let rate = c.bytes / c.seconds
            if c.lastRate > 0 && rate < c.lastRate { c.direction = -c.direction }
            let i = index.load(ordering: .relaxed)
            let next = min(max(i + c.direction, 0), Self.ladder.count - 1)
            if next == i { c.direction = -c.direction }
            index.store(next, ordering: .relaxed)
            c.lastRate = rate
            c.batches = 0
            c.bytes = 0
            c.seconds = 0
        }
    }

    var description: String { level.map { "zstd \($0)" } ?? "raw" }
}

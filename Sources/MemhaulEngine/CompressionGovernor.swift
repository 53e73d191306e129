import Synchronization

/// Chooses the zstd level while a migration runs (`--compression-level auto`).
///
/// The sending thread knows which side of it is the bottleneck: if it mostly
/// waits for compressed batches, the CPU is (compress less); if it mostly
/// waits for the socket, the network is (compress more). Every `window`
/// batches it moves one step along the ladder `raw, -5, -3, -1, 1, 3, 6`, so
/// loopback ends up near raw and a slow link near level 3–6. A fixed level
/// turns the governor off.
final class CompressionGovernor: Sendable {
    /// zstd levels; nil = send raw without trying to compress.
    static let ladder: [Int32?] = [nil, -5, -3, -1, 1, 3, 6]

    let adaptive: Bool
    private let index: Atomic<Int>
    private let window = 16
    private let state = Mutex<(batches: Int, waiting: Double, sending: Double)>((0, 0, 0))

    init(fixed level: Int32?) {
        if let level {
            adaptive = false
            let i = Self.ladder.firstIndex(of: level) ?? Self.ladder.firstIndex(of: 1)!
            index = Atomic(i)
            fixedLevel = level
        } else {
            adaptive = true
            index = Atomic(Self.ladder.firstIndex(of: 1)!)
            fixedLevel = nil
        }
    }

    private let fixedLevel: Int32?

    /// The level for the next batch (nil = raw).
    var level: Int32? {
        if let fixedLevel { return fixedLevel }
        return Self.ladder[index.load(ordering: .relaxed)]
    }

    /// Called by the sending thread once per batch with the seconds it spent
    /// waiting for the batch and sending it.
    func record(waiting: Double, sending: Double) {
        guard adaptive else { return }
        state.withLock { s in
            s.batches += 1
            s.waiting += waiting
            s.sending += sending
            guard s.batches >= window else { return }
            let busy = s.sending / max(1e-9, s.sending + s.waiting)
            let i = index.load(ordering: .relaxed)
            if busy > 0.75, i < Self.ladder.count - 1 {
                index.store(i + 1, ordering: .relaxed)  // network-bound: squeeze harder
            } else if busy < 0.35, i > 0 {
                index.store(i - 1, ordering: .relaxed)  // CPU-bound: compress less
            }
            s = (0, 0, 0)
        }
    }

    var description: String { level.map { "zstd \($0)" } ?? "raw" }
}

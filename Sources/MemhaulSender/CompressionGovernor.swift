import MemhaulSystem
import MemhaulWire
import Synchronization

/// Chooses the zstd level while a migration runs (`--compression-level auto`)
/// from what limits the pipeline, not from the throughput it happened to get.
///
/// Compression pays only when the network is the bottleneck and both sides have
/// CPU to spare for it; everywhere else it costs CPU on a side that is already
/// the limit, so the governor stays raw. Every `window` batches it looks at:
/// - how much of the sending thread's wall time went blocked in the socket
///   (wall in `send` minus the thread's CPU demand there): the network, or a
///   receiver that does not read;
/// - the compression workers' CPU demand (CPU + run-queue wait) per worker;
/// - the receiver's load from its last ROUND_ACK (capability `receiverLoad`):
///   its network thread, its storage stage's CPU and its stage's wall time at
///   work (disk).
/// It then applies ``decide(_:_:)`` and moves at most one step (two on a clearly slow link) along the ladder
/// `raw, -5, -3, -1, 1, 3, 6`. A fixed level turns it off.
final class CompressionGovernor: Sendable {
    /// zstd levels; nil = send raw without trying to compress.
    static let ladder: [Int32?] = [nil, -5, -3, -1, 1, 3, 6]
    /// A stage at least this busy is the bottleneck: compression must not add to it.
    static let saturated = 0.85
    /// Below this a stage has room for more compression work (between the two: hold).
    static let headroom = 0.6
    /// The sending thread blocked in the socket at least this share of its time: network-bound.
    static let networkBound = 0.5
    /// Blocked at least this long with every side below `idle`: two steps at once (a slow link).
    static let stronglyBound = 0.9
    static let idle = 0.3
    /// The first commit chunk of an `auto` migration, at most: the receiver's
    /// load comes only with a ROUND_ACK, and until then the governor stays raw
    /// (`receiver_load_unknown`), so a 64 MiB first chunk went raw on a slow link.
    /// 8 MiB: its ack is back within the first 16-batch window.
    static let firstCommitChunkBytes: UInt64 = 8 << 20

    /// Why the level is what it is (status `compression_reason`).
    enum Reason: String, Codable, Sendable, CaseIterable {
        /// `--compression-level N` or `raw`.
        case fixed
        /// No window measured yet.
        case starting
        /// The network is the bottleneck and both sides have CPU to spare: compress (more).
        case networkBound = "network_bound"
        /// Network-bound, but a side is busy enough that more compression could make it the limit.
        case holding
        /// The receiver did not report its load (an older receiver, or no ack yet): raw.
        case receiverLoadUnknown = "receiver_load_unknown"
        /// The receiver's network thread or storage stage is CPU-bound.
        case receiverCPU = "receiver_cpu"
        /// The receiver's storage stage waits for its disk: compression does not shrink writes.
        case receiverDisk = "receiver_disk"
        /// The sender's compression workers are CPU-bound.
        case senderCPU = "sender_cpu"
        /// The sending thread seldom waits for the socket: reading or encoding limits, not the network (one step less).
        case notNetworkBound = "not_network_bound"
    }

    /// One window's measurements, each a fraction of the window's wall time.
    struct Inputs: Sendable, Equatable {
        var sendBlocked: Double
        /// Compression workers' CPU demand, mean per worker.
        var senderCPU: Double
        var receiver: ReceiverLoad?
    }

    /// The decision table: the ladder index to use next and why.
    static func decide(_ index: Int, _ inputs: Inputs) -> (index: Int, reason: Reason) {
        guard let r = inputs.receiver else { return (0, .receiverLoadUnknown) }
        if r.storageBusy >= saturated && r.storageCPU < saturated { return (0, .receiverDisk) }
        if r.network >= saturated || r.storageCPU >= saturated { return (0, .receiverCPU) }
        if inputs.senderCPU >= saturated { return (max(index - 1, 0), .senderCPU) }
        // Not blocked while compressing: this level is slower than the link. One step less, not
        // raw: from raw it would be network-bound again and climb back (on a 200 Mbit/s link it dropped to raw twice a migration and climbed back).
        if inputs.sendBlocked < networkBound { return (max(index - 1, 0), .notNetworkBound) }
        let busiest = max(inputs.senderCPU, r.network, r.storageCPU, r.storageBusy)
        guard busiest < headroom else { return (index, .holding) }
        let step = inputs.sendBlocked >= stronglyBound && busiest < idle ? 2 : 1
        return (min(index + step, ladder.count - 1), .networkBound)
    }

    /// What the last window saw and decided: the status's counters.
    struct Snapshot: Sendable, Equatable {
        var reason: Reason
        var inputs: Inputs?
        var decisions = 0
        /// Windows decided for each reason, and sent at each level (`raw`, `zstd N`): the history in two counts.
        var reasons: [String: Int] = [:]
        var levels: [String: Int] = [:]
    }

    let adaptive: Bool
    private let fixedLevel: Int32?
    private let index: Atomic<Int>
    /// Batches per decision (16 MiB of pages): a slow link climbs within seconds.
    private let window = 16
    private struct Window {
        var batches = 0
        var seconds = 0.0
        var blockedSeconds = 0.0
        var workerNanoseconds: UInt64 = 0
        var receiver: ReceiverLoad?
        var snapshot: Snapshot
    }
    private let state: Mutex<Window>
    private let workers: Int

    init(fixed level: Int32?, workers: Int = 2) {
        fixedLevel = level
        adaptive = level == nil
        self.workers = max(workers, 1)
        index = Atomic(level.map { Self.ladder.firstIndex(of: $0) ?? Self.ladder.firstIndex(of: 1)! } ?? 0)
        state = Mutex(Window(snapshot: Snapshot(reason: level == nil ? .starting : .fixed)))
    }

    /// The level for the next batch (nil = raw).
    var level: Int32? {
        if !adaptive { return fixedLevel }
        return Self.ladder[index.load(ordering: .relaxed)]
    }

    var snapshot: Snapshot { state.withLock { $0.snapshot } }

    /// A worker's CPU demand for one batch (read, classify, checksum, compress).
    func recordWork(nanoseconds: UInt64) {
        guard adaptive else { return }
        state.withLock { $0.workerNanoseconds &+= nanoseconds }
    }

    /// The receiver's load from a ROUND_ACK.
    func recordReceiver(_ load: ReceiverLoad) {
        guard adaptive else { return }
        state.withLock { $0.receiver = load }
    }

    /// Called by the sending thread once per batch: the wall time since the
    /// previous batch and how much of it the thread spent blocked in the socket.
    func record(seconds: Double, blockedSeconds: Double) {
        guard adaptive else { return }
        state.withLock { w in
            w.batches += 1
            w.seconds += seconds
            w.blockedSeconds += blockedSeconds
            guard w.batches >= window, w.seconds > 0 else { return }
            let inputs = Inputs(
                sendBlocked: min(w.blockedSeconds / w.seconds, 1),
                senderCPU: min(Double(w.workerNanoseconds) / 1e9 / (w.seconds * Double(workers)), 1),
                receiver: w.receiver)
            let current = index.load(ordering: .relaxed)
            let (next, reason) = Self.decide(current, inputs)
            index.store(next, ordering: .relaxed)
            var s = w.snapshot
            s.levels[Self.ladder[current].map { "zstd \($0)" } ?? "raw", default: 0] += 1
            s.reasons[reason.rawValue, default: 0] += 1
            s.reason = reason
            s.inputs = inputs
            s.decisions += 1
            w.snapshot = s
            w.batches = 0
            w.seconds = 0
            w.blockedSeconds = 0
            w.workerNanoseconds = 0
        }
    }

    var description: String { level.map { "zstd \($0)" } ?? "raw" }
}

extension MigrationStatus {
    /// The governor's last decision and what it saw, into the status and its counters.
    mutating func governed(_ s: CompressionGovernor.Snapshot) {
        compressionReason = s.reason.rawValue
        counters.compressionDecisions = s.decisions
        counters.compressionReasons = s.reasons
        counters.compressionWindowsByLevel = s.levels
        guard let inputs = s.inputs else { return }
        counters.sendBlockedFraction = inputs.sendBlocked
        counters.compressCPUFraction = inputs.senderCPU
        counters.receiverNetworkBusy = inputs.receiver?.network
        counters.receiverStorageCPU = inputs.receiver?.storageCPU
        counters.receiverStorageBusy = inputs.receiver?.storageBusy
    }
}

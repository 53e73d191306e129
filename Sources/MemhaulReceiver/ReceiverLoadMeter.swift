import MemhaulSystem
import MemhaulWire

/// Measures ``ReceiverLoad`` over one commit chunk, from its LAYOUT to its
/// ROUND_END with the storage stage drained: how much of that wall time the
/// session thread (network, decrypt) and the stage (decompress, checksum,
/// store) were at work. Used on the session thread only.
struct ReceiverLoadMeter {
    private var start: (wall: UInt64, network: UInt64, stageBusy: UInt64, stageDemand: UInt64)?

    /// At the chunk's LAYOUT (its round begins), on the session thread.
    mutating func begin(_ stage: StorageStage) {
        let s = stage.load
        start = (MonotonicClock.nanoseconds(), ThreadDemand.current().totalNanoseconds, s.busyNanoseconds, s.demandNanoseconds)
    }

    /// At the chunk's ROUND_END, after `stage.drain()`; nil without a `begin`.
    mutating func end(_ stage: StorageStage) -> ReceiverLoad? {
        guard let start else { return nil }
        self.start = nil
        let wall = Double(max(MonotonicClock.nanoseconds() - start.wall, 1))
        let s = stage.load
        return ReceiverLoad(
            network: Double(ThreadDemand.current().totalNanoseconds &- start.network) / wall,
            storageCPU: Double(s.demandNanoseconds &- start.stageDemand) / wall,
            storageBusy: Double(s.busyNanoseconds &- start.stageBusy) / wall)
    }
}

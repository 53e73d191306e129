import Foundation
import MemhaulSystem
import MemhaulWire
import Testing
@testable import MemhaulReceiver
@testable import MemhaulSender
import MemhaulTestSupport

/// The compression governor (`--compression-level auto`): compress only when the
/// network is the bottleneck and both sides have CPU to spare; raw otherwise.
@Suite struct CompressionGovernorTests {
    typealias G = CompressionGovernor
    static let idle = ReceiverLoad(network: 0.2, storageCPU: 0.2, storageBusy: 0.3)
    static let raw = 0, minus5 = 1, minus1 = 3

    func decide(_ index: Int, blocked: Double, sender: Double, receiver: ReceiverLoad?) -> (Int, G.Reason) {
        let d = G.decide(index, G.Inputs(sendBlocked: blocked, senderCPU: sender, receiver: receiver))
        return (d.index, d.reason)
    }

    @Test(arguments: [
        // (from, send blocked, sender workers, receiver network, storage CPU, storage busy) → (to, reason)
        (minus1, 0.8, 0.2, 0.2, 0.2, 0.3, minus1 + 1, G.Reason.networkBound),  // the link limits, CPUs idle: one step more
        (raw, 0.8, 0.2, 0.2, 0.2, 0.5, minus5, .networkBound),
        (raw, 0.95, 0.1, 0.1, 0.1, 0.2, minus5 + 1, .networkBound),  // a clearly slow link, everything idle: two steps
        (G.ladder.count - 1, 0.9, 0.2, 0.2, 0.2, 0.3, G.ladder.count - 1, .networkBound),  // top of the ladder
        (minus1, 0.9, 0.7, 0.2, 0.2, 0.3, minus1, .holding),  // network-bound, sender 70 %: hold
        (minus1, 0.9, 0.2, 0.7, 0.2, 0.3, minus1, .holding),  // receiver network thread 70 %: hold
        (minus1, 0.9, 0.9, 0.2, 0.2, 0.3, minus1 - 1, .senderCPU),  // workers saturated: one step less
        (raw, 0.9, 0.9, 0.2, 0.2, 0.3, raw, .senderCPU),
        (minus1, 0.9, 0.2, 0.9, 0.2, 0.3, raw, .receiverCPU),  // receiver decrypt-bound: raw at once
        (minus1, 0.9, 0.2, 0.2, 0.9, 0.95, raw, .receiverCPU),  // receiver stage CPU-bound
        (minus1, 0.9, 0.2, 0.2, 0.3, 0.95, raw, .receiverDisk),  // stage waits for the disk
        (minus1, 0.2, 0.2, 0.2, 0.2, 0.3, minus1 - 1, .notNetworkBound),  // the socket never pushes back: one step less
        (raw, 0.2, 0.2, 0.2, 0.2, 0.3, raw, .notNetworkBound),  // and raw stays raw (loopback)
        (minus1, 0.2, 0.9, 0.2, 0.2, 0.3, minus1 - 1, .senderCPU),
    ] as [(Int, Double, Double, Double, Double, Double, Int, G.Reason)])
    func decisionTable(_ c: (Int, Double, Double, Double, Double, Double, Int, G.Reason)) {
        let receiver = ReceiverLoad(network: c.3, storageCPU: c.4, storageBusy: c.5)
        let (to, reason) = decide(c.0, blocked: c.1, sender: c.2, receiver: receiver)
        #expect(reason == c.7)
        #expect(to == c.6)
    }

    @Test func withoutTheReceiversLoadItStaysRaw() {
        let (to, reason) = decide(Self.minus1, blocked: 1, sender: 0, receiver: nil)
        #expect(to == Self.raw)
        #expect(reason == .receiverLoadUnknown)
    }

    @Test func windowsFeedTheTableAndAFixedLevelIgnoresThem() {
        let g = G(fixed: nil, workers: 2)
        #expect(g.level == nil)
        #expect(g.snapshot.reason == .starting)
        g.recordReceiver(Self.idle)
        // 16 batches of 10 ms, 8 ms of each blocked in the socket; workers 1 ms per batch.
        for _ in 0..<16 {
            g.recordWork(nanoseconds: 1_000_000)
            g.record(seconds: 0.01, blockedSeconds: 0.008)
        }
        #expect(g.snapshot.reason == .networkBound)
        #expect(g.level == -5)
        #expect(abs((g.snapshot.inputs?.sendBlocked ?? 0) - 0.8) < 1e-9)
        g.recordReceiver(ReceiverLoad(network: 0.95, storageCPU: 0.3, storageBusy: 0.4))
        for _ in 0..<16 { g.record(seconds: 0.01, blockedSeconds: 0.009) }
        #expect(g.snapshot.reason == .receiverCPU)
        #expect(g.level == nil)
        #expect(g.snapshot.decisions == 2)
        #expect(g.snapshot.levels == ["raw": 1, "zstd -5": 1])
        #expect(g.snapshot.reasons == ["network_bound": 1, "receiver_cpu": 1])

        let fixed = G(fixed: 3)
        for _ in 0..<64 { fixed.record(seconds: 0.01, blockedSeconds: 0.01) }
        #expect(fixed.level == 3)
        #expect(fixed.snapshot.reason == .fixed)
    }

    /// `auto` cannot leave raw before a ROUND_ACK brings the receiver's load,
    /// so its migration's first commit chunk is 8 MiB (its ack comes back within
    /// the first 16-batch window), not 64: a 32 MiB stop-and-copy commits one
    /// chunk more than with a fixed level, which has nothing to wait for.
    @Test func autoCommitsASmallFirstChunkSoTheReceiversLoadComesEarly() throws {
        let receiver = try TestReceiver(pki: nil)
        let workload = try startWorkload(["--size", "32M", "--threads", "1", "--rate", "0"])
        var commits: [UInt64] = []
        for level in [1, nil] as [Int32?] {
            let before = receiver.agent.counters.values
            var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "governor-first-chunk-\(level ?? 0)")
            r.parameters.maxRounds = 0
            r.compressionLevel = level
            r.after = .resume
            let migration = SenderMigration(request: r, connect: try connector(nil))
            migration.run()
            let s = migration.status
            #expect(s.state == .completed, "\(s.error ?? "")")
            let after = receiver.agent.counters.values
            let pageBytes = after.committedPageBytes - before.committedPageBytes
            #expect(pageBytes > G.firstCommitChunkBytes && pageBytes < r.parameters.commitChunkBytes, "\(pageBytes) page bytes")
            commits.append(after.commits - before.commits)
        }
        #expect(commits.count == 2 && commits[1] == commits[0] + 1, "commits at zstd 1, auto: \(commits)")
        #expect(workload.state != "T")
    }

    /// A receiver whose storage stage is CPU-bound (a test hook spins 100 ms of
    /// CPU per batch, so it stays the bottleneck on a loaded machine) reports it in its ROUND_ACKs, and the sender's governor decides
    /// raw for that reason, though its socket pushes back as a slow network would.
    @Test func aCPUBoundReceiverDrivesTheGovernorToRaw() throws {
        let receiver = try TestReceiver(pki: nil)
        receiver.agent.testHooks.beforeStoringBatch = {
            let end = ThreadDemand.current().cpuNanoseconds + 100_000_000
            while ThreadDemand.current().cpuNanoseconds < end {}
        }
        let workload = try startWorkload(["--size", "64M", "--threads", "1", "--rate", "0"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "governor-cpu")
        r.parameters.maxRounds = 0
        r.parameters.commitChunkBytes = 8 << 20  // an ack (with the load) every 8 batches
        r.parameters.frozenCommitChunkBytes = 8 << 20  // this stop-and-copy's round is frozen
        r.after = .resume
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        let s = migration.status
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(s.compressionDecisions >= 1, "at least one 16-batch window")
        #expect(s.compressionReason == G.Reason.receiverCPU.rawValue)
        #expect(s.compression == "raw")
        #expect((s.receiverStorageCPU ?? 0) >= G.saturated)
        #expect(workload.state != "T")
    }
}

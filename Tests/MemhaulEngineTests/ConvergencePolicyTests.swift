import Testing
import MemhaulKernel
import MemhaulSystem
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver

@Suite struct ConvergencePolicyTests {
    func measurement(_ round: Int, pending: Double, sent: Double = 1e9, seconds: Double = 1) -> RoundMeasurement {
        RoundMeasurement(round: round, pageBytesSent: sent, seconds: seconds, pendingBytes: pending, dirtyWindowSeconds: seconds)
    }

    @Test func cutsOverWhenPredictionFitsTheLimit() {
        var policy = ConvergencePolicy(parameters: ConvergenceParameters())
        // 1 GB/s throughput, 100 MB pending => 100 ms <= 300 ms.
        #expect(policy.decide(after: measurement(0, pending: 100e6), elapsed: 1) == .cutover(reason: .converged(expectedDowntimeMs: 100)))
    }

    @Test func fixedRoundCostsCountInThePrediction() {
        var policy = ConvergencePolicy(parameters: ConvergenceParameters())
        // 100 MB at 1 GB/s is 100 ms, but scan + commit take 250 ms more: 350 ms > 300 ms.
        var m = measurement(0, pending: 100e6)
        m.fixedSeconds = 0.25
        #expect(policy.decide(after: m, elapsed: 1) == .nextRound)
        #expect(abs(policy.expectedDowntimeMs - 350) < 0.001)
    }

    @Test func keepsGoingWhileShrinking() {
        var policy = ConvergencePolicy(parameters: ConvergenceParameters())
        #expect(policy.decide(after: measurement(0, pending: 800e6), elapsed: 1) == .nextRound)
        #expect(policy.decide(after: measurement(1, pending: 500e6), elapsed: 2) == .nextRound)
        #expect(policy.decide(after: measurement(2, pending: 301e6), elapsed: 3) == .nextRound)
        if case .cutover = policy.decide(after: measurement(3, pending: 200e6), elapsed: 4) {} else {
            Issue.record("expected cutover once 200 ms fits")
        }
    }

    @Test func stallEscalatesThrottleLikeQEMU() {
        var p = ConvergenceParameters()
        p.maxRounds = 100
        p.throttleSteps = .classic
        var policy = ConvergencePolicy(parameters: p)
        var throttles: [Int] = []
        for round in 0..<40 {
            if case .throttle(let pct) = policy.decide(after: measurement(round, pending: 900e6), elapsed: Double(round)) {
                throttles.append(pct)
            }
        }
        #expect(throttles.prefix(3) == [20, 30, 40])
        #expect(throttles.last == 99)
        #expect(throttles.allSatisfy { $0 <= 99 })
    }

    @Test func forcedCutoverAtMaxRoundsSaysWhy() {
        var p = ConvergenceParameters()
        p.maxRounds = 2
        p.autoConverge = false
        var policy = ConvergencePolicy(parameters: p)
        _ = policy.decide(after: measurement(0, pending: 900e6), elapsed: 1)
        _ = policy.decide(after: measurement(1, pending: 900e6), elapsed: 2)
        let d = policy.decide(after: measurement(2, pending: 900e6), elapsed: 3)
        guard case .cutover(let reason) = d else { Issue.record("expected cutover"); return }
        #expect(reason.isForced)
        #expect(reason.description.contains("900 ms"))
    }

    @Test func stopAndCopyCutsOverImmediately() {
        var p = ConvergenceParameters()
        p.maxRounds = 0
        var policy = ConvergencePolicy(parameters: p)
        #expect(policy.decide(after: measurement(0, pending: 5e9), elapsed: 0) == .cutover(reason: .stopAndCopy))
    }

    @Test func maxTimeForcesCutover() {
        var p = ConvergenceParameters()
        p.maxTimeSeconds = 10
        var policy = ConvergencePolicy(parameters: p)
        let d = policy.decide(after: measurement(1, pending: 5e9), elapsed: 11)
        #expect(d == .cutover(reason: .maxTime(expectedDowntimeMs: 5000)))
    }
}

/// How a round is cut into commit chunks (wire rounds committed one by one).
@Suite struct CommitChunkTests {
    let mib: UInt64 = 1 << 20
    func range(_ startMiB: UInt64, _ endMiB: UInt64) -> AddressRange { AddressRange(start: 0x1000_0000 + startMiB * mib, end: 0x1000_0000 + endMiB * mib) }

    @Test func splitsRangesAtTheLimitAndKeepsDiscardsWithTheFirstChunk() {
        let scan = RoundScan(round: 0, dirty: [range(0, 10), range(20, 23)], discarded: [range(40, 41)], stats: ScanStats())
        let chunks = scan.commitChunks(maxBytes: 4 * mib)
        #expect(chunks.map { $0.dirty.reduce(0) { $0 + $1.byteCount } } == [4 * mib, 4 * mib, 4 * mib, 1 * mib])
        #expect(chunks[0].discarded == [range(40, 41)])
        #expect(chunks.dropFirst().allSatisfy { $0.discarded.isEmpty })
        // Together they are exactly the round.
        #expect(chunks.flatMap(\.dirty).coalesced() == scan.dirty)
        #expect(chunks[2].dirty == [range(8, 10), range(20, 22)])
    }

    @Test func aSmallerFirstChunkThenFullOnes() {
        let scan = RoundScan(round: 0, dirty: [range(0, 10), range(20, 23)], discarded: [range(40, 41)], stats: ScanStats())
        let chunks = scan.commitChunks(maxBytes: 4 * mib, firstMaxBytes: 1 * mib)
        #expect(chunks.map { $0.dirty.reduce(0) { $0 + $1.byteCount } } == [1 * mib, 4 * mib, 4 * mib, 4 * mib])
        #expect(chunks[0].discarded == [range(40, 41)])
        #expect(chunks.flatMap(\.dirty).coalesced() == scan.dirty)
        // A first limit above the others is the others'.
        #expect(scan.commitChunks(maxBytes: 4 * mib, firstMaxBytes: 64 * mib).count == 4)
    }

    @Test func anEmptyRoundIsOneChunk() {
        let chunks = RoundScan(round: 3, dirty: [], discarded: [], stats: ScanStats()).commitChunks(maxBytes: 64 * mib)
        #expect(chunks.count == 1)
    }

    @Test func oddLimitsRoundDownToWholePages() {
        let scan = RoundScan(round: 0, dirty: [range(0, 1)], discarded: [], stats: ScanStats())
        let chunks = scan.commitChunks(maxBytes: 100_000)
        #expect(chunks.allSatisfy { $0.dirty.allSatisfy(\.isPageAligned) })
        #expect(chunks.count == Int((mib + 98_304 - 1) / 98_304))
    }
}

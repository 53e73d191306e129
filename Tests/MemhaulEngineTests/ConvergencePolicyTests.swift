import Testing
@testable import MemhaulControl
import MemhaulKernel
import MemhaulSystem
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver

@Suite struct ConvergencePolicyTests {
    func measurement(_ round: Int, pending: Double, sent: Double = 1e9, seconds: Double = 1) -> RoundMeasurement {
        RoundMeasurement(round: round, pageBytesSent: sent, seconds: seconds, pendingBytes: pending, dirtyWindowSeconds: seconds)
    }

    /// QEMU's rule (`tighteningRounds` 0).
    func cutAtTheFit() -> ConvergenceParameters {
        var p = ConvergenceParameters()
        p.tighteningRounds = 0
        return p
    }

    @Test func cutsOverWhenPredictionFitsTheLimit() {
        var policy = ConvergencePolicy(parameters: cutAtTheFit())
        // 1 GB/s throughput, 100 MB pending => 100 ms <= 300 ms.
        #expect(policy.decide(after: measurement(0, pending: 100e6), elapsed: 1) == .cutover(reason: .converged(expectedDowntimeMs: 100)))
    }

    /// 100 MB pending at 1 GB/s and 100 MB/s of dirtying, 50 ms of scan: 150 ms
    /// fits, but a round of about 150 ms leaves 15 MB, 65 ms. After it, one
    /// more would leave 6.5 MB, 56.5 ms: not half, so it cuts over.
    @Test func fitsButOneMoreRoundHalvesTheWindow() {
        var policy = ConvergencePolicy(parameters: ConvergenceParameters())
        var m = measurement(0, pending: 100e6)
        m.fixedSeconds = 0.05
        guard case .tighten(let now, let next) = policy.decide(after: m, elapsed: 1) else {
            Issue.record("expected a tightening round at \(policy.expectedDowntimeMs) ms"); return
        }
        #expect(abs(now - 150) < 1e-6)
        #expect(abs(next - 65) < 1e-6)
        let m1 = RoundMeasurement(round: 1, pageBytesSent: 100e6, seconds: 0.1, pendingBytes: 15e6, dirtyWindowSeconds: 0.15, fixedSeconds: 0.05)
        #expect(policy.decide(after: m1, elapsed: 1.2) == .cutover(reason: .converged(expectedDowntimeMs: 65)))
        #expect(policy.tightened == 1)
    }

    /// A tightening round that did not shrink the prediction to ¾ is the last:
    /// the model was wrong about this workload.
    @Test func aTighteningRoundThatDidNotShrinkItEndsThem() {
        var policy = ConvergencePolicy(parameters: ConvergenceParameters())
        var m = measurement(0, pending: 100e6)
        m.fixedSeconds = 0.05
        guard case .tighten = policy.decide(after: m, elapsed: 1) else { Issue.record("expected a tightening round"); return }
        m.round = 1
        m.pendingBytes = 90e6  // 140 ms: more than ¾ of 150
        #expect(policy.decide(after: m, elapsed: 2) == .cutover(reason: .converged(expectedDowntimeMs: 140)))
    }

    /// With no fixed cost every round would halve the window again: the count
    /// of tightening rounds bounds them, and max rounds does too.
    @Test(arguments: [(3, 30, 3), (1, 30, 1), (3, 2, 2)])
    func tighteningRoundsAreBounded(_ c: (tightening: Int, maxRounds: Int, expected: Int)) {
        var p = ConvergenceParameters()
        p.tighteningRounds = c.tightening
        p.maxRounds = c.maxRounds
        var policy = ConvergencePolicy(parameters: p)
        var pending = 100e6
        for round in 0..<10 {
            let d = policy.decide(after: RoundMeasurement(round: round, pageBytesSent: 1e9, seconds: 1, pendingBytes: pending, dirtyWindowSeconds: pending / 1e9 * 10), elapsed: Double(round))
            guard case .tighten = d else {
                guard case .cutover(let reason) = d, !reason.isForced else { Issue.record("\(d)"); return }
                break
            }
            pending /= 10
        }
        #expect(policy.tightened == c.expected)
    }

    @Test func controlMigrateTakesTighteningRounds() throws {
        let base: [String: Any] = ["pid": 1, "to": "h:1"]
        #expect(try SenderControl.request(from: ControlRequest(op: "migrate", args: base)).parameters.tighteningRounds == 3)
        let off = try SenderControl.request(from: ControlRequest(op: "migrate", args: base.merging(["tightening_rounds": 0]) { $1 }))
        #expect(off.parameters.tighteningRounds == 0)
        #expect(throws: ControlError.self) {
            try SenderControl.request(from: ControlRequest(op: "migrate", args: base.merging(["tightening_rounds": 101]) { $1 }))
        }
    }

    /// 200 MB pending at 1 GB/s fits (200 ms), and one more round would not
    /// halve it (the target dirties 667 MB/s), but no delta's commit has been
    /// measured: one more round measures one. With its 60 ms commit the
    /// prediction is 210 ms, which fits and did not shrink by a quarter: cut.
    @Test func aFitWithNoMeasuredCommitRunsOneMoreRound() {
        var policy = ConvergencePolicy(parameters: ConvergenceParameters())
        let m0 = RoundMeasurement(round: 0, pageBytesSent: 1e9, seconds: 1, pendingBytes: 200e6, dirtyWindowSeconds: 0.3)
        #expect(policy.decide(after: m0, elapsed: 1) == .measureCommit(expectedDowntimeMs: 200))
        #expect(policy.tightened == 1)
        #expect(ConvergenceDecision.measureCommitReason(expectedMs: 200)
                == "fits the limit at 200 ms with no commit of a delta measured yet; one more round measures one")
        let m1 = RoundMeasurement(round: 1, pageBytesSent: 200e6, seconds: 0.2, pendingBytes: 150e6, dirtyWindowSeconds: 0.225,
                                  commitSeconds: 0.06)
        guard case .cutover(.converged(let ms)) = policy.decide(after: m1, elapsed: 1.3) else {
            Issue.record("expected a converged cutover at \(policy.expectedDowntimeMs) ms"); return
        }
        #expect(abs(ms - 210) < 1e-6, "the commit is in the prediction now")
    }

    /// A small delta is predicted without a commit (`unmeasuredCommitBytes`),
    /// and QEMU's rule (`tighteningRounds` 0) never runs the extra round.
    @Test func aSmallDeltaOrQEMUsRuleCutsWithoutAMeasuredCommit() {
        var policy = ConvergencePolicy(parameters: ConvergenceParameters())
        let small = ConvergencePolicy.unmeasuredCommitBytes
        let m = RoundMeasurement(round: 0, pageBytesSent: 1e9, seconds: 1, pendingBytes: small, dirtyWindowSeconds: small / 1e9 / 0.6)
        guard case .cutover(.converged(let ms)) = policy.decide(after: m, elapsed: 1) else {
            Issue.record("expected a converged cutover at \(policy.expectedDowntimeMs) ms"); return
        }
        #expect(abs(ms - small / 1e6) < 1e-6)
        var qemu = ConvergencePolicy(parameters: cutAtTheFit())
        let big = RoundMeasurement(round: 0, pageBytesSent: 1e9, seconds: 1, pendingBytes: 200e6, dirtyWindowSeconds: 0.3)
        #expect(qemu.decide(after: big, elapsed: 1) == .cutover(reason: .converged(expectedDowntimeMs: 200)))
    }

    /// An idle target: nothing pending, nothing to halve.
    @Test func nothingPendingCutsOverAtOnce() {
        var policy = ConvergencePolicy(parameters: ConvergenceParameters())
        var m = measurement(0, pending: 0)
        m.fixedSeconds = 0.005
        #expect(policy.decide(after: m, elapsed: 1) == .cutover(reason: .converged(expectedDowntimeMs: 5)))
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
        var policy = ConvergencePolicy(parameters: cutAtTheFit())
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

import Testing
@testable import MemhaulSender

/// Auto-converge's steps on a write-everything target: every round finds the
/// whole working set dirty again until the throttle is high enough.
@Suite struct ThrottleStepperTests {
    /// 1 GB/s throughput; the target dirties `dirty` bytes/s (its whole 900 MB
    /// every round while unthrottled).
    func throttles(_ steps: ThrottleSteps, dirty: Double, rounds: Int = 40) -> [(round: Int, percent: Int)] {
        var p = ConvergenceParameters()
        p.maxRounds = 100
        p.throttleSteps = steps
        var policy = ConvergencePolicy(parameters: p)
        var out: [(Int, Int)] = []
        for round in 0..<rounds {
            let m = RoundMeasurement(round: round, pageBytesSent: 1e9, seconds: 1, pendingBytes: dirty, dirtyWindowSeconds: 1)
            if case .throttle(let pct) = policy.decide(after: m, elapsed: Double(round)) { out.append((round, pct)) }
        }
        return out
    }

    @Test func adaptiveStartsAtOnceAndStepsByTheExcessWhenFarAbove() {
        // Dirty rate 3 × the trigger (1.5 GB/s against 50 % of 1 GB/s).
        let a = throttles(.adaptive, dirty: 1.5e9)
        let c = throttles(.classic, dirty: 1.5e9)
        #expect(a.first?.round == 0, "right after the full copy")
        #expect(c.first?.round == 2, "classic waits for two stalled rounds")
        #expect(a.first?.percent == 67, "the CPU share that meets the trigger: 100 − 100/3")
        #expect(c.first?.percent == 20)
        // 90 % reached in a few rounds, not 16.
        let a90 = a.first { $0.percent >= 90 }?.round ?? .max
        let c90 = c.first { $0.percent >= 90 }?.round ?? .max
        #expect(a90 <= 4, "\(a)")
        #expect(c90 >= 14, "\(c)")
        #expect(a.allSatisfy { $0.percent <= 99 })
        #expect(a.last?.percent == 99)
    }

    @Test func adaptiveIsClassicNearTheTrigger() {
        // 1.2 × the trigger: not far above, so the classic pace.
        let a = throttles(.adaptive, dirty: 0.6e9)
        let c = throttles(.classic, dirty: 0.6e9)
        #expect(a.map(\.percent) == c.map(\.percent))
        #expect(a.map(\.round) == c.map(\.round))
        #expect(a.prefix(2).map(\.percent) == [20, 30])
    }
}

/// How auto-converge steps the throttle (`--throttle-steps`).
public enum ThrottleSteps: String, Sendable, Codable, CaseIterable {
    /// QEMU's default: start at `throttleInitialPct` after `stallRounds`
    /// stalled rounds, then `throttleIncrementPct` per further stall.
    case classic
    /// Classic while the dirty rate is near the throughput; while it is far
    /// above (≥ `farRatio` × `throttleTriggerRatio` × throughput, a
    /// write-everything workload) it starts right after round 0 and steps by
    /// the measured excess (QEMU's cpu-throttle-tailslow arithmetic): to the
    /// CPU share that would bring the dirty rate down to the trigger, never
    /// less than the classic step.
    case adaptive
}

/// The throttle step after a round: the one place that decides it.
///
/// QEMU (migration/ram.c, `mig_throttle_guest_down`): with tail-slow on,
/// `cpu_now = 100 − throttle`, `cpu_ideal = cpu_now × threshold / dirty`, step =
/// min(cpu_now − cpu_ideal, increment), where threshold is
/// `throttle-trigger-threshold` (50 %) of the bytes transferred. Tail-slow only
/// slows the last steps; a write-everything workload whose dirty rate is many
/// times the throughput still climbs 10 % per two stalled rounds. `adaptive`
/// takes the whole computed step (at least the increment) while the dirty rate
/// is at least `farRatio` × the threshold, and then starts right after round 0
/// (or after one stalled round) instead of after `stallRounds`. Near the
/// threshold it steps as classic does: the threshold is not the goal (the
/// cutover needs pending / throughput ≤ the limit, usually well below it), so
/// QEMU's slow tail would only take smaller steps there.
struct ThrottleStepper: Sendable {
    /// Dirty rate / (trigger × throughput) above which a step is "far".
    static let farRatio = 2.0

    /// The next throttle percentage, or nil to leave it as it is.
    /// `stalled`: consecutive rounds whose pending set did not shrink enough;
    /// `afterFullCopy`: judged after round 0 (nothing to compare with yet).
    static func next(current: Int, stalled: Int, afterFullCopy: Bool, dirtyRate: Double, throughput: Double,
                     parameters p: ConvergenceParameters) -> Int? {
        guard p.autoConverge, current < p.throttleMaxPct else { return nil }
        switch p.throttleSteps {
        case .classic:
            guard stalled >= p.stallRounds else { return nil }
            return current == 0 ? p.throttleInitialPct : min(p.throttleMaxPct, current + p.throttleIncrementPct)
        case .adaptive:
            let threshold = p.throttleTriggerRatio * throughput
            // Unmeasured throughput: no ratio to act on, fall back to stalls.
            let pressure = threshold > 0 ? dirtyRate / threshold : 0
            let far = pressure >= farRatio
            // Far above: right after the full copy, or after one stalled round.
            guard stalled >= (far ? (afterFullCopy ? 0 : 1) : p.stallRounds) else { return nil }
            let cpuNow = Double(100 - current)
            let gap = far ? Int((cpuNow - cpuNow / pressure).rounded()) : 0
            let step = max(current == 0 ? p.throttleInitialPct : p.throttleIncrementPct, gap)
            return min(p.throttleMaxPct, current + step)
        }
    }
}

/// Where a migration is, finer than ``MigrationState``: what an operator's
/// progress line names (`status.stage`). Pre-copy rounds are `precopy` (with
/// `round` and `throttle_percent`); the source is frozen from `frozen` to the
/// end of `restoring`.
public enum MigrationStage: String, Codable, Sendable, CaseIterable {
    /// Connecting, shaking hands, attaching to the target.
    case setup
    /// A pre-copy round: the source runs while its pages are sent.
    case precopy
    /// The source has been stopped; its last dirty pages are being scanned.
    case frozen
    /// The final delta goes out with the source frozen.
    case finalDelta = "final_delta"
    /// Both sides digest the memory and compare.
    case verifying
    /// The step after the proof (`--restore criu`): the process is being restored on the receiver.
    case restoring
    case done, failed, cancelled
}

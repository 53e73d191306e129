import MemhaulWire

/// Test seams of the receiver agent, set before `serve()`; none is set in
/// production (`coldImage` only by the hidden bench flag `--bench-cold-image`).
public struct ReceiverTestHooks: Sendable {
    /// Runs on the storage stage's thread before each page batch is stored: a
    /// test makes the receiver CPU-bound with it (the governor must then stay raw).
    public var beforeStoringBatch: (@Sendable () -> Void)?
    /// Bench only (`memhaul receive --bench-cold-image`): when a restore will
    /// follow, drop the image's region files from the page cache once the final
    /// round is checkpointed
    /// (``ImageReadahead/dropFromCache(directory:)``), as if other work had
    /// evicted them before the restore reads them.
    public var coldImage = false
    /// Capabilities left out of WELCOME, as a receiver that predates them would.
    public var withheldCapabilities: Capabilities = []

    public init() {}
}

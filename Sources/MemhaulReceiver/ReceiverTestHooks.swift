import MemhaulWire

/// Test seams of the receiver agent, set before `serve()`; none is set in production.
public struct ReceiverTestHooks: Sendable {
    /// Runs on the storage stage's thread before each page batch is stored: a
    /// test makes the receiver CPU-bound with it (the governor must then stay raw).
    public var beforeStoringBatch: (@Sendable () -> Void)?
    /// Capabilities left out of WELCOME, as a receiver that predates them would.
    public var withheldCapabilities: Capabilities = []

    public init() {}
}

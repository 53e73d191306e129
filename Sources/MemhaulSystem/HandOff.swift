/// Moves a non-Sendable value to exactly one other thread, which then owns it.
public struct HandOff<Value>: @unchecked Sendable {  // single owner after the hand-off
    public let value: Value
    public init(_ value: Value) { self.value = value }
}

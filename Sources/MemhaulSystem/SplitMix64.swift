/// SplitMix64: a tiny, seeded, reproducible generator for test and benchmark
/// content (not for anything secret). The one copy: benchmarks, the image
/// torture generator and the tests all use it.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        let z = Self.mix(state)
        state &+= 0x9E37_79B9_7F4A_7C15
        return z
    }

    /// The output for state `x`: `SplitMix64(seed: x).next() == mix(x)`.
    /// Stateless, for generators that derive each value from a key.
    @inline(__always)
    public static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

import CXXHash

// TEMPORARY COPY written by the image helper so MemhaulImage builds on its own
// branch; the digest helper owns the real implementation (the lead keeps theirs).

/// The XXH3-128 memory digest (ARCHITECTURE.md "Memory digest").
public struct MemoryDigest: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }
    /// 32 lower-case hex digits, high 64 bits first.
    public var hex: String {
        func pad(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return pad(high) + pad(low)
    }
    public var description: String { hex }
}

/// Streams the canonical form into XXH3-128 (`XXH3_128bits_update`).
public final class MemoryDigester {
    private let state: OpaquePointer
    // Read-only after initialisation: a shared block of zeros for updateZeros.
    nonisolated(unsafe) private static let zeros: UnsafeRawBufferPointer = {
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 4096)
        p.initializeMemory(as: UInt8.self, repeating: 0)
        return UnsafeRawBufferPointer(p)
    }()

    public init() {
        state = XXH3_createState()
        XXH3_128bits_reset(state)
    }
    deinit { XXH3_freeState(state) }

    /// Feeds the region header: `start` and `end`, u64 little-endian.
    public func beginRegion(start: UInt64, end: UInt64) {
        var header = (start.littleEndian, end.littleEndian)
        withUnsafeBytes(of: &header) { _ = XXH3_128bits_update(state, $0.baseAddress, $0.count) }
    }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        XXH3_128bits_update(state, bytes.baseAddress, bytes.count)
    }

    public func updateZeros(count: Int) {
        var left = count
        let zeros = Self.zeros
        while left > 0 {
            let n = min(left, zeros.count)
            XXH3_128bits_update(state, zeros.baseAddress, n)
            left -= n
        }
    }

    public func finalize() -> MemoryDigest {
        let h = XXH3_128bits_digest(state)
        return MemoryDigest(high: h.high64, low: h.low64)
    }
}

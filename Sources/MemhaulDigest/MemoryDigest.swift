import CXXHash

/// The memory digest both sides of a migration compute: XXH3-128 over the
/// canonical form (ARCHITECTURE.md "Memory digest").
///
/// Shown as 32 lower-case hex digits, high 64 bits first (the same text
/// `xxhsum -H2` prints for the canonical byte stream).
public struct MemoryDigest: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses 32 hex digits (either case), high 64 bits first; nil otherwise.
    public init?(hex: String) {
        let utf8 = Array(hex.utf8)
        guard utf8.count == 32 else { return nil }
        var high: UInt64 = 0
        var low: UInt64 = 0
        for (i, c) in utf8.enumerated() {
            let nibble: UInt64
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = UInt64(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = UInt64(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = UInt64(c - UInt8(ascii: "A") + 10)
            default: return nil
            }
            if i < 16 { high = high << 4 | nibble } else { low = low << 4 | nibble }
        }
        self.init(high: high, low: low)
    }

    /// 32 lower-case hex digits, high 64 bits first.
    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8](repeating: 0, count: 32)
        for i in 0..<16 {
            out[i] = digits[Int((high >> UInt64(60 - 4 * i)) & 0xF)]
            out[16 + i] = digits[Int((low >> UInt64(60 - 4 * i)) & 0xF)]
        }
        return String(decoding: out, as: UTF8.self)
    }

    public var description: String { hex }
}

/// Streams the canonical form of a process's memory into XXH3-128.
///
/// For each region in ascending address order: ``beginRegion(start:end:)``
/// (hashes `start` and `end` as u64 little-endian), then exactly `end - start`
/// bytes through ``update(_:)`` and ``updateZeros(count:)`` (unpopulated pages
/// are zeros). ``finalize()`` does not consume the state, so it may be called
/// again after further updates.
///
/// Owns an `XXH3_state_t` (`XXH3_createState`), freed in deinit. Not
/// thread-safe: one digester per thread.
public final class MemoryDigester {
    private let state: OpaquePointer

    /// `XXH3_createState` + `XXH3_128bits_reset`.
    public init() {
        guard let state = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        self.state = state
        XXH3_128bits_reset(state)
    }

    deinit { XXH3_freeState(state) }

    /// Starts over, as if freshly created (`XXH3_128bits_reset`).
    public func reset() {
        XXH3_128bits_reset(state)
    }

    /// Hashes the region header: `start` then `end`, each u64 little-endian.
    public func beginRegion(start: UInt64, end: UInt64) {
        var header = (start.littleEndian, end.littleEndian)
        withUnsafeBytes(of: &header) { _ = XXH3_128bits_update(state, $0.baseAddress, $0.count) }
    }

    /// Hashes region content bytes (`XXH3_128bits_update`).
    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        XXH3_128bits_update(state, bytes.baseAddress, bytes.count)
    }

    /// Hashes `count` zero bytes, fed from one static zeroed 64 KiB buffer
    /// (no allocation: digesting a sparse 64 GiB region costs only the hashing).
    public func updateZeros(count: Int) {
        precondition(count >= 0, "updateZeros: negative count")
        var left = count
        let zeros = ZeroBuffer.bytes
        while left > 0 {
            let n = min(left, zeros.count)
            XXH3_128bits_update(state, zeros.baseAddress, n)
            left -= n
        }
    }

    /// The digest of everything hashed so far (`XXH3_128bits_digest`).
    public func finalize() -> MemoryDigest {
        let h = XXH3_128bits_digest(state)
        return MemoryDigest(high: h.high64, low: h.low64)
    }
}

/// One process-wide zeroed 64 KiB buffer.
enum ZeroBuffer {
    static let count = 64 * 1024
    // Allocated once, never written after initialisation nor freed: safe to share.
    nonisolated(unsafe) static let bytes: UnsafeRawBufferPointer = {
        let p = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: 64)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: count)
        return UnsafeRawBufferPointer(start: p, count: count)
    }()
}

import CXXHash

#if canImport(Glibc)
import Glibc
#endif

/// An XXH3-128 memory digest (ARCHITECTURE.md, "Memory digest").
///
/// Shown as 32 lower-case hex digits, high 64 bits first.
public struct MemoryDigest: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses the 32-hex-digit form; nil if malformed.
    public init?(hex: String) {
        guard hex.utf8.count == 32,
            let h = UInt64(hex.prefix(16), radix: 16),
            let l = UInt64(hex.suffix(16), radix: 16)
        else { return nil }
        self.init(high: h, low: l)
    }

    /// 32 lower-case hex digits, high 64 bits first.
    public var hex: String { Self.hex16(high) + Self.hex16(low) }

    public var description: String { hex }

    private static func hex16(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// Zeros fed to XXH3 for unpopulated pages; allocated once, never written.
nonisolated(unsafe) private let zeroChunk: UnsafeRawBufferPointer = {
    let count = 1 << 16
    return UnsafeRawBufferPointer(start: calloc(1, count)!, count: count)
}()

/// Streams the canonical memory form into XXH3-128 (`XXH3_128bits_update`).
///
/// Canonical form: for each region in ascending address order, `start` and
/// `end` as u64 little-endian, then the region's `end - start` bytes, with
/// unpopulated pages given as zeros (``updateZeros(count:)``).
///
/// The XXH3 state lives in a reference-counted box: copies of a digester share
/// one state, so use one digester per digest.
public struct MemoryDigester {
    /// Owns the `XXH3_state_t` (`XXH3_createState` / `XXH3_freeState`).
    private final class State {
        let raw: OpaquePointer
        init() {
            raw = XXH3_createState()
            XXH3_128bits_reset(raw)
        }
        deinit { XXH3_freeState(raw) }
    }

    private let state = State()

    public init() {}

    /// Starts a region: feeds its 16-byte header (`start`, `end`, u64 LE).
    public mutating func beginRegion(start: UInt64, end: UInt64) {
        var header = (start.littleEndian, end.littleEndian)
        withUnsafeBytes(of: &header) { update($0) }
    }

    /// Feeds region bytes.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        XXH3_128bits_update(state.raw, bytes.baseAddress, bytes.count)
    }

    /// Feeds `count` zero bytes (unpopulated pages) without a caller buffer.
    public mutating func updateZeros(count: Int) {
        var left = count
        while left > 0 {
            let n = min(left, zeroChunk.count)
            XXH3_128bits_update(state.raw, zeroChunk.baseAddress, n)
            left -= n
        }
    }

    /// The digest of everything fed so far (`XXH3_128bits_digest`); the
    /// digester may keep being fed afterwards.
    public func finalize() -> MemoryDigest {
        let h = XXH3_128bits_digest(state.raw)
        return MemoryDigest(high: h.high64, low: h.low64)
    }
}

import CXXHash

/// The memory digest both sides of a migration compute: XXH3-128 over the
/// canonical form (ARCHITECTURE.md "Memory digest").
///
/// Shown as 32 lower-case hex digits, high 64 bits first (the same text
/// `xxhsum -H2` prints for the canonical byte stream).
public struct MemoryDigest: Hashable, Sendable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64
    /// Which canonical form was hashed: digests of different versions never compare equal.
    public var version: DigestVersion

    public init(high: UInt64, low: UInt64, version: DigestVersion = .v1) {
        self.high = high
        self.low = low
        self.version = version
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
        self.init(high: high, low: low, version: .v1)
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

/// The canonical form a ``MemoryDigester`` hashes (ARCHITECTURE.md "Memory digest").
///
/// - v1: per region `start`, `end` (u64 LE), then all `end - start` bytes, pages
///   without content as zeros. Cost: the declared layout (a sender declaring
///   1000 regions of 8 TiB makes the other side hash 8 PiB of zeros).
/// - v2: the stream opens with the 16 bytes `MEMHAUL-DIGEST2\0`; per region
///   `'R'` `start` `end` (17 bytes); then, in address order, every maximal run of
///   all-zero pages as `'Z'` `start` `pageCount` (u64 LE, 17 bytes) and every
///   other page as `'P'` and its 4096 bytes. A page is classified by its bytes
///   alone (present but all-zero counts as zero), so both sides agree whatever
///   they know about population. Cost: the content plus O(1) per zero run.
/// - v3 (the ledger digest, ``PageLedger``): a combinable sum of one hash per
///   non-zero page, over the layout; both sides keep it as they go, so at
///   cutover it costs O(regions). Streamed here too (the full proof in v3).
public enum DigestVersion: UInt8, Sendable, Hashable, CustomStringConvertible {
    case v1 = 1
    case v2 = 2
    case v3 = 3

    public var description: String { "v\(rawValue)" }
}

/// Streams the canonical form of a process's memory into XXH3-128.
///
/// For each region in ascending address order: ``beginRegion(start:end:)``,
/// then exactly `end - start` bytes through ``update(_:)`` and
/// ``updateZeros(count:)`` (unpopulated pages are zeros), in any split.
/// ``finalize()`` does not consume the state, so it may be called again after
/// further updates. v1 hashes the bytes as they come; v2 (``DigestVersion``)
/// classifies each 4096-byte page and hashes zero runs in O(1): `updateZeros`
/// of any length costs nothing more than a counter.
///
/// Owns an `XXH3_state_t` (`XXH3_createState`), freed in deinit. Not
/// thread-safe: one digester per thread.
public final class MemoryDigester {
    /// The page the v2 form classifies by (the wire's page size on x86-64).
    public static let pageSize = 4096
    static let v2Magic: [UInt8] = Array("MEMHAUL-DIGEST2\0".utf8)

    public let version: DigestVersion
    private let state: OpaquePointer
    /// v2: the address the next byte belongs to.
    private var cursor: UInt64 = 0
    /// v2: a pending zero run (start, pages), hashed when content or a region follows.
    private var zeroRunStart: UInt64 = 0
    private var zeroRunPages: UInt64 = 0
    /// v2: bytes of a page not complete yet (updates need not be page-aligned).
    private var partial: UnsafeMutableRawBufferPointer?
    private var partialCount = 0
    /// v3: the regions, the non-zero pages and their sum (``PageLedger``).
    private var ledgerLayout: [Range<UInt64>] = []
    private var ledgerPages: UInt64 = 0
    private var ledgerSum = LedgerSum()
    /// v3: where each non-zero page's hash is also recorded (a receiver
    /// rebuilding its ledger from the image).
    private let recording: PageLedger?

    /// `XXH3_createState` + `XXH3_128bits_reset`. `recording` (v3 only) gets every non-zero page's hash.
    public init(version: DigestVersion = .v1, recording: PageLedger? = nil) {
        precondition(recording == nil || version == .v3, "MemoryDigester: only v3 records a ledger")
        guard let state = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        self.state = state
        self.version = version
        self.recording = recording
        reset()
    }

    deinit {
        XXH3_freeState(state)
        partial?.deallocate()
    }

    /// Starts over, as if freshly created (`XXH3_128bits_reset`).
    public func reset() {
        XXH3_128bits_reset(state)
        cursor = 0
        zeroRunPages = 0
        partialCount = 0
        ledgerLayout = []
        ledgerPages = 0
        ledgerSum = LedgerSum()
        if version == .v2 { Self.v2Magic.withUnsafeBytes { feed($0) } }
    }

    private func feed(_ bytes: UnsafeRawBufferPointer) {
        _ = XXH3_128bits_update(state, bytes.baseAddress, bytes.count)
    }

    private func record(_ tag: UInt8, _ a: UInt64, _ b: UInt64, into s: OpaquePointer) {
        var r = (tag, a.littleEndian, b.littleEndian)
        // 17 bytes: the tuple is padded in memory, so copy the fields packed.
        var packed = [UInt8](repeating: 0, count: 17)
        packed[0] = r.0
        withUnsafeBytes(of: &r.1) { for i in 0..<8 { packed[1 + i] = $0[i] } }
        withUnsafeBytes(of: &r.2) { for i in 0..<8 { packed[9 + i] = $0[i] } }
        packed.withUnsafeBytes { _ = XXH3_128bits_update(s, $0.baseAddress, 17) }
    }

    private func flushZeroRun(into s: OpaquePointer) {
        guard zeroRunPages > 0 else { return }
        record(0x5A, zeroRunStart, zeroRunPages, into: s)  // 'Z'
    }

    /// Hashes the region header: v1 `start` then `end`, each u64 little-endian; v2 `'R' start end`.
    public func beginRegion(start: UInt64, end: UInt64) {
        guard version != .v1 else {
            var header = (start.littleEndian, end.littleEndian)
            withUnsafeBytes(of: &header) { _ = XXH3_128bits_update(state, $0.baseAddress, $0.count) }
            return
        }
        precondition(partialCount == 0, "MemoryDigester v2: region ended inside a page")
        if version == .v3 {
            ledgerLayout.append(start..<end)
            cursor = start
            return
        }
        flushZeroRun(into: state)
        zeroRunPages = 0
        record(0x52, start, end, into: state)  // 'R'
        cursor = start
    }

    /// v2: one whole page at `cursor`.
    private func page(_ p: UnsafeRawPointer) {
        if version == .v3 {
            if !Self.isZero(p, Self.pageSize) {
                let h = PageLedger.pageHash(address: cursor, p)
                ledgerPages += 1
                ledgerSum += h
                // The rebuild of a ledger the receiver already bounds (its layout and disk).
                try? recording?.record(address: cursor, hash: h)
            }
            cursor &+= UInt64(Self.pageSize)
            return
        }
        if Self.isZero(p, Self.pageSize) {
            if zeroRunPages == 0 { zeroRunStart = cursor }
            zeroRunPages += 1
        } else {
            flushZeroRun(into: state)
            zeroRunPages = 0
            var tag: UInt8 = 0x50  // 'P'
            _ = XXH3_128bits_update(state, &tag, 1)
            _ = XXH3_128bits_update(state, p, Self.pageSize)
        }
        cursor &+= UInt64(Self.pageSize)
    }

    private func zeroPages(_ n: UInt64) {
        guard n > 0 else { return }
        if version == .v3 {
            cursor &+= n * UInt64(Self.pageSize)
            return
        }
        if zeroRunPages == 0 { zeroRunStart = cursor }
        zeroRunPages += n
        cursor &+= n * UInt64(Self.pageSize)
    }

    private var partialBuffer: UnsafeMutableRawBufferPointer {
        if let partial { return partial }
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.pageSize, alignment: 64)
        partial = p
        return p
    }

    /// Whether `count` bytes at `p` are all zero (word at a time).
    static func isZero(_ p: UnsafeRawPointer, _ count: Int) -> Bool {
        var i = 0
        while i + 64 <= count {
            var acc: UInt64 = 0
            for k in stride(from: 0, to: 64, by: 8) { acc |= p.loadUnaligned(fromByteOffset: i + k, as: UInt64.self) }
            if acc != 0 { return false }
            i += 64
        }
        while i < count {
            if p.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
            i += 1
        }
        return true
    }

    /// Hashes region content bytes.
    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        guard version != .v1 else {
            XXH3_128bits_update(state, bytes.baseAddress, bytes.count)
            return
        }
        var at = 0
        if partialCount > 0 {
            let n = min(Self.pageSize - partialCount, bytes.count)
            partialBuffer.baseAddress!.advanced(by: partialCount).copyMemory(from: bytes.baseAddress!, byteCount: n)
            partialCount += n
            at = n
            if partialCount < Self.pageSize { return }
            page(UnsafeRawPointer(partialBuffer.baseAddress!))
            partialCount = 0
        }
        while bytes.count - at >= Self.pageSize {
            page(bytes.baseAddress! + at)
            at += Self.pageSize
        }
        if at < bytes.count {
            partialBuffer.baseAddress!.copyMemory(from: bytes.baseAddress! + at, byteCount: bytes.count - at)
            partialCount = bytes.count - at
        }
    }

    /// Hashes `count` zero bytes: v1 from one static zeroed 64 KiB buffer (no
    /// allocation, but the cost of hashing them); v2 in O(1).
    public func updateZeros(count: Int) {
        precondition(count >= 0, "updateZeros: negative count")
        guard version != .v1 else {
            var left = count
            let zeros = ZeroBuffer.bytes
            while left > 0 {
                let n = min(left, zeros.count)
                XXH3_128bits_update(state, zeros.baseAddress, n)
                left -= n
            }
            return
        }
        var left = count
        if partialCount > 0 {
            let n = min(Self.pageSize - partialCount, left)
            partialBuffer.baseAddress!.advanced(by: partialCount).initializeMemory(as: UInt8.self, repeating: 0, count: n)
            partialCount += n
            left -= n
            if partialCount < Self.pageSize { return }
            page(UnsafeRawPointer(partialBuffer.baseAddress!))
            partialCount = 0
        }
        zeroPages(UInt64(left / Self.pageSize))
        let rest = left % Self.pageSize
        if rest > 0 {
            partialBuffer.baseAddress!.initializeMemory(as: UInt8.self, repeating: 0, count: rest)
            partialCount = rest
        }
    }

    /// The digest of everything hashed so far (`XXH3_128bits_digest`). v2: a
    /// pending zero run is hashed into a copy of the state, which is left as it was.
    public func finalize() -> MemoryDigest {
        if version == .v3 {
            recording?.adopt(layout: ledgerLayout)
            return PageLedger.digest(layout: ledgerLayout, pages: ledgerPages, sum: ledgerSum)
        }
        guard version == .v2, zeroRunPages > 0 else {
            let h = XXH3_128bits_digest(state)
            return MemoryDigest(high: h.high64, low: h.low64, version: version)
        }
        guard let copy = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        defer { XXH3_freeState(copy) }
        XXH3_copyState(copy, state)
        flushZeroRun(into: copy)
        let h = XXH3_128bits_digest(copy)
        return MemoryDigest(high: h.high64, low: h.low64, version: version)
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

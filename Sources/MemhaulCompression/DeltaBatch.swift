/// Why a delta batch payload was refused by ``DeltaBatch/decode(_:pageCount:pageSize:into:base:)``.
public enum DeltaBatchError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The payload ends inside page `page`'s tag or body.
    case truncated(page: Int)
    /// A tag that is neither 0xFFFF (whole page) nor a delta length ≤ page size / 2.
    case badTag(page: Int, tag: UInt16)
    /// Page `page`'s delta does not decode.
    case badDelta(page: Int, PageDeltaError)
    /// Page `page` is a delta but the receiver holds no committed page there to apply it to.
    case noBase(page: Int)
    /// Bytes after the last page's record.
    case trailingBytes(count: Int)

    public var description: String {
        switch self {
        case .truncated(let p): "delta batch truncated in page \(p)"
        case .badTag(let p, let t): "delta batch page \(p) has tag \(t)"
        case .badDelta(let p, let e): "delta batch page \(p): \(e)"
        case .noBase(let p): "delta batch page \(p) is a delta of a page not in the committed image"
        case .trailingBytes(let n): "delta batch has \(n) bytes after its last page"
        }
    }
}

/// The payload of PAGE_BATCH encoding 2 (wire.md, "PAGE_BATCH"): for each page of the runs,
/// in order, a u16 tag; tag 0xFFFF is followed by the page whole, any other tag ≤ page size / 2
/// by that many bytes of ``PageDelta`` against the page the receiver has committed at that
/// address. The batch checksum covers the rebuilt pages, so a wrong base is caught.
public enum DeltaBatch {
    /// The tag of a page sent whole.
    public static let wholePage: UInt16 = 0xFFFF

    /// The longest delta a page may carry: beyond half a page it is sent whole.
    public static func deltaLimit(pageSize: Int) -> Int { pageSize / 2 }

    /// Encodes `pageCount` pages of `pages` into `out`, each as a delta against its base in
    /// `bases` (same offsets) where `hasBase[i]`, else whole. Returns the payload size and the
    /// pages sent as deltas, or nil once the payload would reach `limit` bytes (send it another way).
    public static func encode(
        _ pages: UnsafeRawBufferPointer, bases: UnsafeRawBufferPointer, hasBase: [Bool], pageSize: Int,
        into out: UnsafeMutableRawBufferPointer, limit: Int
    ) -> (count: Int, deltaPages: Int)? {
        let pageCount = pages.count / pageSize
        precondition(hasBase.count == pageCount && bases.count >= pages.count, "delta batch: bases do not match the pages")
        let bound = min(limit, out.count)
        var d = 0
        var deltas = 0
        for i in 0..<pageCount {
            let page = UnsafeRawBufferPointer(rebasing: pages[(i * pageSize)..<((i + 1) * pageSize)])
            guard d + 2 <= bound else { return nil }
            if hasBase[i] {
                let base = UnsafeRawBufferPointer(rebasing: bases[(i * pageSize)..<((i + 1) * pageSize)])
                let room = UnsafeMutableRawBufferPointer(rebasing: out[(d + 2)..<bound])
                if let n = PageDelta.encode(old: base, new: page, into: room, limit: deltaLimit(pageSize: pageSize)) {
                    writeTag(UInt16(n), out, at: d)
                    d += 2 + n
                    deltas += 1
                    continue
                }
            }
            guard d + 2 + pageSize <= bound else { return nil }
            writeTag(wholePage, out, at: d)
            (out.baseAddress! + d + 2).copyMemory(from: page.baseAddress!, byteCount: pageSize)
            d += 2 + pageSize
        }
        return d < bound ? (d, deltas) : nil
    }

    /// Rebuilds `pageCount` pages from `payload` into `dst`. For a delta page, `base(i, page)`
    /// must fill `page` (page `i` of `dst`) with the committed content and return true, or
    /// return false when there is none; its errors are rethrown. Work is bounded by
    /// `pageCount` pages of `pageSize` bytes: one base read and one page patched per page.
    public static func decode(
        _ payload: UnsafeRawBufferPointer, pageCount: Int, pageSize: Int, into dst: UnsafeMutableRawBufferPointer,
        base: (Int, UnsafeMutableRawBufferPointer) throws -> Bool
    ) throws {
        precondition(dst.count >= pageCount * pageSize, "delta batch: destination too small")
        var i = 0
        for p in 0..<pageCount {
            guard payload.count - i >= 2 else { throw DeltaBatchError.truncated(page: p) }
            let tag = UInt16(payload[i]) | UInt16(payload[i + 1]) << 8
            i += 2
            let page = UnsafeMutableRawBufferPointer(rebasing: dst[(p * pageSize)..<((p + 1) * pageSize)])
            if tag == wholePage {
                guard payload.count - i >= pageSize else { throw DeltaBatchError.truncated(page: p) }
                page.baseAddress!.copyMemory(from: payload.baseAddress! + i, byteCount: pageSize)
                i += pageSize
                continue
            }
            let n = Int(tag)
            guard n <= deltaLimit(pageSize: pageSize) else { throw DeltaBatchError.badTag(page: p, tag: tag) }
            guard payload.count - i >= n else { throw DeltaBatchError.truncated(page: p) }
            guard try base(p, page) else { throw DeltaBatchError.noBase(page: p) }
            do {
                try PageDelta.decode(UnsafeRawBufferPointer(rebasing: payload[i..<(i + n)]), into: page,
                                     pageSize: pageSize, limit: deltaLimit(pageSize: pageSize))
            } catch {
                throw DeltaBatchError.badDelta(page: p, error)
            }
            i += n
        }
        guard i == payload.count else { throw DeltaBatchError.trailingBytes(count: payload.count - i) }
    }

    private static func writeTag(_ tag: UInt16, _ out: UnsafeMutableRawBufferPointer, at d: Int) {
        out[d] = UInt8(tag & 0xFF)
        out[d + 1] = UInt8(tag >> 8)
    }
}

extension DeltaBatch {
    /// Array convenience for tests, vectors and fuzzing: `bases[i]` nil sends page `i` whole.
    public static func encode(pages: [[UInt8]], bases: [[UInt8]?], limit: Int = .max) -> (payload: [UInt8], deltaPages: Int)? {
        let pageSize = pages.first?.count ?? 4096
        let plain = pages.flatMap { $0 }
        let based = bases.enumerated().flatMap { $0.element ?? [UInt8](repeating: 0, count: pages[$0.offset].count) }
        var out = [UInt8](repeating: 0, count: pages.count * (pageSize + 2) + 1)
        let result = plain.withUnsafeBytes { p in
            based.withUnsafeBytes { b in
                out.withUnsafeMutableBytes {
                    encode(p, bases: b, hasBase: bases.map { $0 != nil }, pageSize: pageSize, into: $0, limit: min(limit, $0.count))
                }
            }
        }
        guard let result else { return nil }
        return (Array(out[0..<result.count]), result.deltaPages)
    }

    /// Array convenience: the pages rebuilt from `payload` against `bases` (nil: no committed page).
    public static func decode(_ payload: [UInt8], bases: [[UInt8]?], pageSize: Int = 4096) throws -> [[UInt8]] {
        var dst = [UInt8](repeating: 0, count: bases.count * pageSize)
        try payload.withUnsafeBytes { p in
            try dst.withUnsafeMutableBytes { d in
                try decode(p, pageCount: bases.count, pageSize: pageSize, into: d) { i, page in
                    guard let b = bases[i] else { return false }
                    b.withUnsafeBytes { page.copyMemory(from: $0) }
                    return true
                }
            }
        }
        return (0..<bases.count).map { Array(dst[($0 * pageSize)..<(($0 + 1) * pageSize)]) }
    }
}

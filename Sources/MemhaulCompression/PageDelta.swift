/// Why a page delta was refused by ``PageDelta/decode(_:into:)``.
public enum PageDeltaError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The encoding is longer than the bound the decoder accepts.
    case tooLong(length: Int, limit: Int)
    /// A length or a literal run is cut off by the end of the input.
    case truncated(offset: Int)
    /// A length varint is longer than 2 bytes or not in its shortest form.
    case overlongVarint(offset: Int)
    /// A changed run of 0 bytes, or an unchanged run of 0 bytes after the first.
    case emptyRun(offset: Int)
    /// A run reaches or passes the page end (an unchanged tail is left implicit).
    case runPastPageEnd(offset: Int)
    /// Input left after the page end was reached.
    case trailingBytes(offset: Int)
    /// The destination is not exactly one page.
    case pageSizeMismatch(expected: Int, actual: Int)

    public var description: String {
        switch self {
        case .tooLong(let n, let limit): "page delta of \(n) bytes exceeds \(limit)"
        case .truncated(let o): "page delta truncated at byte \(o)"
        case .overlongVarint(let o): "page delta length at byte \(o) is overlong"
        case .emptyRun(let o): "page delta run of length 0 at byte \(o)"
        case .runPastPageEnd(let o): "page delta run at byte \(o) passes the page end"
        case .trailingBytes(let o): "page delta has bytes after the page end at byte \(o)"
        case .pageSizeMismatch(let e, let a): "page delta target is \(a) bytes, page is \(e)"
        }
    }
}

/// XBZRLE-style page delta (as QEMU's migration/xbzrle.c): the new page compared with the
/// version the peer already holds, as pairs of
/// `unchanged_length (uleb128) changed_length (uleb128) changed bytes…`; the unchanged tail
/// after the last pair is implicit, so an identical page encodes as 0 bytes. Lengths are at
/// most 2 bytes (pages up to 16 KiB). Canonical: only the first unchanged run may be 0, no
/// changed run is 0, no run reaches the page end without a pair after it.
///
/// Pays when a re-dirtied page changed in a few places; the encoder gives up (nil) once the
/// output would exceed `limit`, and the caller sends the page whole instead.
public enum PageDelta {
    /// Largest length a 2-byte uleb128 holds.
    static let maxLength = 0x3FFF
    /// The default bound: half a 4 KiB page, beyond which sending it whole (or zstd) is better.
    public static let defaultLimit = 2048

    /// Encodes `new` against `old` (same length) into `out`; returns the bytes written, or nil
    /// when the encoding would exceed `min(limit, out.count)`.
    public static func encode(
        old: UnsafeRawBufferPointer, new: UnsafeRawBufferPointer,
        into out: UnsafeMutableRawBufferPointer, limit: Int = defaultLimit
    ) -> Int? {
        precondition(old.count == new.count && new.count <= maxLength, "page delta: pages of unequal or excessive size")
        let bound = min(limit, out.count)
        let n = new.count
        var i = 0
        var d = 0
        while i < n {
            let zeroStart = i
            while i < n && old[i] == new[i] { i += 1 }
            if i == n { break }
            let zeroLength = i - zeroStart
            let changedStart = i
            while i < n && old[i] != new[i] { i += 1 }
            let changedLength = i - changedStart
            let need = varintSize(zeroLength) + varintSize(changedLength) + changedLength
            guard d + need <= bound else { return nil }
            d += writeVarint(zeroLength, out, at: d)
            d += writeVarint(changedLength, out, at: d)
            out.baseAddress!.advanced(by: d).copyMemory(from: new.baseAddress!.advanced(by: changedStart), byteCount: changedLength)
            d += changedLength
        }
        return d
    }

    /// Applies `delta` to `page` in place (`page` holds the old version on entry, the new one on
    /// success). On error the page may be partly patched: the caller discards it.
    public static func decode(
        _ delta: UnsafeRawBufferPointer, into page: UnsafeMutableRawBufferPointer,
        pageSize: Int = 4096, limit: Int = defaultLimit
    ) throws(PageDeltaError) {
        guard page.count == pageSize, pageSize <= maxLength else {
            throw .pageSizeMismatch(expected: pageSize, actual: page.count)
        }
        guard delta.count <= limit else { throw .tooLong(length: delta.count, limit: limit) }
        var i = 0
        var p = 0
        var first = true
        while i < delta.count {
            if p == pageSize { throw .trailingBytes(offset: i) }
            let zeroAt = i
            let zero = try readVarint(delta, &i)
            if zero == 0 && !first { throw .emptyRun(offset: zeroAt) }
            first = false
            guard zero < pageSize - p else { throw .runPastPageEnd(offset: zeroAt) }
            p += zero
            let changedAt = i
            let changed = try readVarint(delta, &i)
            if changed == 0 { throw .emptyRun(offset: changedAt) }
            guard changed <= pageSize - p else { throw .runPastPageEnd(offset: changedAt) }
            guard changed <= delta.count - i else { throw .truncated(offset: i) }
            page.baseAddress!.advanced(by: p).copyMemory(from: delta.baseAddress!.advanced(by: i), byteCount: changed)
            p += changed
            i += changed
        }
    }

    static func varintSize(_ v: Int) -> Int { v < 0x80 ? 1 : 2 }

    private static func writeVarint(_ v: Int, _ out: UnsafeMutableRawBufferPointer, at d: Int) -> Int {
        if v < 0x80 {
            out[d] = UInt8(v)
            return 1
        }
        out[d] = UInt8(v & 0x7F) | 0x80
        out[d + 1] = UInt8(v >> 7)
        return 2
    }

    private static func readVarint(_ b: UnsafeRawBufferPointer, _ i: inout Int) throws(PageDeltaError) -> Int {
        let at = i
        guard i < b.count else { throw .truncated(offset: at) }
        let b0 = Int(b[i])
        i += 1
        if b0 < 0x80 { return b0 }
        guard i < b.count else { throw .truncated(offset: at) }
        let b1 = Int(b[i])
        i += 1
        // A second byte of 0 is a non-shortest form; a continuation bit would make it 3 bytes.
        guard b1 != 0, b1 < 0x80 else { throw .overlongVarint(offset: at) }
        return (b0 & 0x7F) | (b1 << 7)
    }
}

extension PageDelta {
    /// Array convenience for tests, vectors and fuzzing: nil when over `limit`.
    public static func encode(old: [UInt8], new: [UInt8], limit: Int = defaultLimit) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: limit)
        let n: Int? = old.withUnsafeBytes { o in
            new.withUnsafeBytes { nw in out.withUnsafeMutableBytes { encode(old: o, new: nw, into: $0, limit: limit) } }
        }
        guard let n else { return nil }
        return Array(out[0..<n])
    }

    /// Array convenience: the new page from `old` and `delta`.
    public static func decode(_ delta: [UInt8], old: [UInt8], limit: Int = defaultLimit) throws(PageDeltaError) -> [UInt8] {
        var page = old
        let result: Result<Void, PageDeltaError> = delta.withUnsafeBytes { d in
            page.withUnsafeMutableBytes { p in
                Result { () throws(PageDeltaError) in try decode(d, into: p, pageSize: old.count, limit: limit) }
            }
        }
        try result.get()
        return page
    }
}

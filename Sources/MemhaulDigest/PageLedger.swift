import CXXHash

/// A 128-bit value added and subtracted with wrap-around (the carry runs
/// from `low` into `high`): the combinable sum of the ledger digest.
public struct LedgerSum: Hashable, Sendable {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64 = 0, low: UInt64 = 0) {
        self.high = high
        self.low = low
    }

    public static func += (a: inout LedgerSum, b: LedgerSum) {
        let (low, carry) = a.low.addingReportingOverflow(b.low)
        a.low = low
        a.high = a.high &+ b.high &+ (carry ? 1 : 0)
    }

    public static func -= (a: inout LedgerSum, b: LedgerSum) {
        let (low, borrow) = a.low.subtractingReportingOverflow(b.low)
        a.low = low
        a.high = a.high &- b.high &- (borrow ? 1 : 0)
    }
}

/// The incremental proof's record of a layout's content (digest v3,
/// ARCHITECTURE.md "Memory digest"): one 128-bit hash per page that is not
/// all zeros, `XXH3_128bits_withSeed(page, 4096, seed: address)`, and their
/// running sum. Zero pages, discarded pages and holes have no entry.
///
/// The sender records each page as it reads it for sending; the receiver
/// stages each page it stores in the open round and applies the stage when
/// the round commits (``abortRound()`` drops it), so its ledger always
/// describes the committed image. At cutover the digest costs O(regions):
/// the sum is already there.
///
/// Memory: one entry per non-zero page, at most ``maxPages``: about 17 bytes
/// a page where pages are dense (0.4% of the content; 17 MiB at 4 GiB), up
/// to about 100 bytes for isolated pages (``PageHashTable``).
/// Not thread-safe: one owner.
public final class PageLedger {
    public static let pageSize = 4096
    static let magic: [UInt8] = Array("MEMHAUL-LEDGER3\0".utf8)

    /// The most entries it holds; ``record(address:hash:)`` beyond it throws.
    public let maxPages: Int
    /// Σ of the entries' hashes.
    public private(set) var sum = LedgerSum()
    private var entries = PageHashTable()
    /// The layout the entries lie in, once known: a restriction to the same
    /// layout costs O(regions), to another one the pages it removes.
    private var layout: [Range<UInt64>]?

    /// The open round's changes (receiver), applied by ``commitRound()``.
    private enum Change {
        case set(UInt64, LedgerSum)
        case clear(Range<UInt64>)
        case restrict([Range<UInt64>])
    }
    private var staged: [Change]?

    public struct Full: Error, Equatable, CustomStringConvertible {
        public var maxPages: Int
        public var description: String { "the page ledger would hold more than \(maxPages) pages" }
    }

    public init(maxPages: Int = 1 << 28) {
        self.maxPages = maxPages
    }

    /// Non-zero pages recorded.
    public var pageCount: Int { entries.count }

    /// The hash of one non-zero page at `address` (`XXH3_128bits_withSeed`).
    public static func pageHash(address: UInt64, _ page: UnsafeRawPointer) -> LedgerSum {
        let h = XXH3_128bits_withSeed(page, pageSize, address)
        return LedgerSum(high: h.high64, low: h.low64)
    }

    /// Whether the page at `page` is all zeros (it then has no entry).
    public static func isZero(_ page: UnsafeRawPointer) -> Bool { MemoryDigester.isZero(page, pageSize) }

    // MARK: changes (applied now, or staged inside a round)

    /// Starts staging: changes wait for ``commitRound()``.
    public func beginRound() { staged = [] }

    /// Applies the staged changes in order.
    public func commitRound() throws(Full) {
        guard let changes = staged else { return }
        staged = nil
        for c in changes { try apply(c) }
    }

    /// Drops the staged changes: the ledger describes the last commit again.
    public func abortRound() { staged = nil }

    /// Records the pages of `bytes` (whole pages) from `address` on: a
    /// non-zero page gets its hash, an all-zero one loses its entry.
    public func record(address: UInt64, pages bytes: UnsafeRawBufferPointer) throws(Full) {
        precondition(bytes.count % Self.pageSize == 0, "PageLedger.record: not whole pages")
        var at = 0
        while at < bytes.count {
            let p = bytes.baseAddress! + at
            let a = address &+ UInt64(at)
            if Self.isZero(p) {
                try change(.clear(a..<(a &+ UInt64(Self.pageSize))))
            } else {
                try change(.set(a, Self.pageHash(address: a, p)))
            }
            at += Self.pageSize
        }
    }

    /// Records a page whose hash was computed elsewhere (a sender worker).
    public func record(address: UInt64, hash: LedgerSum) throws(Full) { try change(.set(address, hash)) }

    /// The pages of `range` are zero now (ZERO or DISCARD): no entries.
    public func clear(_ range: Range<UInt64>) {
        try! change(.clear(range))  // clearing never grows the ledger
    }

    /// Drops every entry outside `layout` (ranges sorted, disjoint): the
    /// layout changed and its removed parts hold nothing any more.
    public func restrict(to layout: [Range<UInt64>]) {
        try! change(.restrict(layout))
    }

    private func change(_ c: Change) throws(Full) {
        if staged != nil { staged!.append(c); return }
        try apply(c)
    }

    private func apply(_ c: Change) throws(Full) {
        switch c {
        case .set(let a, let h):
            let (old, stored) = entries.update(h, at: a, allowNew: entries.count < maxPages)
            guard stored else { throw Full(maxPages: maxPages) }
            if let old { sum -= old }
            sum += h
        case .clear(let r):
            removeEntries(where: { r.contains($0) }, pagesOf: [r])
        case .restrict(let new):
            defer { layout = new }
            guard !entries.isEmpty, new != layout else { return }
            removeEntries(where: { !Self.contains(new, $0) }, pagesOf: layout.map { Self.subtracting(new, from: $0) })
        }
    }

    /// Removes the entries `drop` selects: by walking the blocks of `ranges`
    /// where they are fewer than the entries, or else the entries. Cost:
    /// min(blocks of the ranges, entries).
    private func removeEntries(where drop: (UInt64) -> Bool, pagesOf ranges: [Range<UInt64>]?) {
        if let ranges {
            let blocks = ranges.reduce(UInt64(0)) { $0 &+ UInt64($1.count) / PageHashTable.blockBytes + 1 }
            if blocks <= UInt64(entries.count) {
                for r in ranges { sum -= entries.remove(r).sum }
                return
            }
        }
        sum -= entries.removeAll(where: drop)
    }

    /// The layout a rebuild from an image found (its entries lie in it).
    func adopt(layout: [Range<UInt64>]) { self.layout = layout }

    /// `a \ b` for sorted, disjoint ranges.
    static func subtracting(_ b: [Range<UInt64>], from a: [Range<UInt64>]) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        var j = 0
        for r in a {
            var lo = r.lowerBound
            while j < b.count, b[j].upperBound <= lo { j += 1 }
            var k = j
            while lo < r.upperBound {
                guard k < b.count, b[k].lowerBound < r.upperBound else {
                    out.append(lo..<r.upperBound)
                    break
                }
                if b[k].lowerBound > lo { out.append(lo..<b[k].lowerBound) }
                lo = max(lo, b[k].upperBound)
                k += 1
            }
        }
        return out
    }

    /// Whether `a` lies in one of `sorted` (ascending, disjoint): a binary search.
    public static func contains(_ sorted: [Range<UInt64>], _ a: UInt64) -> Bool {
        var lo = 0
        var hi = sorted.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if sorted[mid].upperBound <= a { lo = mid + 1 } else { hi = mid }
        }
        return lo < sorted.count && sorted[lo].contains(a)
    }

    // MARK: the digest

    /// The v3 digest of the ledger over `layout` (ascending regions): XXH3-128
    /// of `MEMHAUL-LEDGER3\0`, `'R' start end` per region, `'N' pages`,
    /// `'S' sumHigh sumLow` (u64 LE). O(regions). Staged changes do not count.
    public func digest(layout: [Range<UInt64>]) -> MemoryDigest {
        Self.digest(layout: layout, pages: UInt64(entries.count), sum: sum)
    }

    static func digest(layout: [Range<UInt64>], pages: UInt64, sum: LedgerSum) -> MemoryDigest {
        guard let s = XXH3_createState() else { fatalError("XXH3_createState: out of memory") }
        defer { XXH3_freeState(s) }
        XXH3_128bits_reset(s)
        magic.withUnsafeBytes { _ = XXH3_128bits_update(s, $0.baseAddress, $0.count) }
        var record: [UInt8] = []
        record.reserveCapacity(17 * layout.count + 9 + 17)
        func put(_ tag: UInt8, _ values: UInt64...) {
            record.append(tag)
            for v in values { withUnsafeBytes(of: v.littleEndian) { record.append(contentsOf: $0) } }
        }
        for r in layout { put(0x52, r.lowerBound, r.upperBound) }  // 'R'
        put(0x4E, pages)  // 'N'
        put(0x53, sum.high, sum.low)  // 'S'
        record.withUnsafeBytes { _ = XXH3_128bits_update(s, $0.baseAddress, $0.count) }
        let h = XXH3_128bits_digest(s)
        return MemoryDigest(high: h.high64, low: h.low64, version: .v3)
    }
}

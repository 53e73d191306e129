#if canImport(Glibc)
import Glibc
#endif

/// The page size memhaul assumes: 4096 bytes, checked against `sysconf(_SC_PAGESIZE)` once.
public enum PageSize {
    public static let bytes: UInt64 = 4096
    public static let shift: UInt64 = 12

    /// True when the running kernel uses 4 KiB pages (checked once).
    public static let matchesSystem: Bool = sysconf(Int32(_SC_PAGESIZE)) == Int(bytes)

    @inline(__always) public static func roundDown(_ address: UInt64) -> UInt64 { address & ~(bytes - 1) }
    @inline(__always) public static func roundUp(_ address: UInt64) -> UInt64 { (address + bytes - 1) & ~(bytes - 1) }
    @inline(__always) public static func isAligned(_ address: UInt64) -> Bool { address & (bytes - 1) == 0 }
}

/// A half-open, page-aligned address range `[start, end)`.
public struct PageRange: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64

    public init(start: UInt64, end: UInt64) {
        precondition(start <= end, "PageRange start > end")
        self.start = start
        self.end = end
    }

    /// `pages` pages from `start`.
    public init(start: UInt64, pages: Int) {
        self.init(start: start, end: start + UInt64(pages) << PageSize.shift)
    }

    public var pageCount: Int { Int((end - start) >> PageSize.shift) }
    public var byteCount: UInt64 { end - start }
    public var isEmpty: Bool { start >= end }
    public var isPageAligned: Bool { PageSize.isAligned(start) && PageSize.isAligned(end) }

    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }
    public func contains(_ other: PageRange) -> Bool { other.start >= start && other.end <= end }
    public func overlaps(_ other: PageRange) -> Bool { other.start < end && start < other.end }

    public static func < (a: PageRange, b: PageRange) -> Bool {
        a.start != b.start ? a.start < b.start : a.end < b.end
    }

    public var description: String { "0x\(String(start, radix: 16))-0x\(String(end, radix: 16))" }
}

// Set algebra over range lists. All inputs and outputs are sorted, disjoint
// and coalesced (what `coalesced()` returns); operations are linear merges.
extension Array where Element == PageRange {
    /// Total pages in the list.
    public var pageCount: Int { reduce(0) { $0 + $1.pageCount } }

    /// Sorted, with empty ranges dropped and overlapping or touching ranges merged.
    public func coalesced() -> [PageRange] {
        var sorted = self
        var isSorted = true
        for i in 1..<Swift.max(1, count) where self[i] < self[i - 1] {
            isSorted = false
            break
        }
        if !isSorted { sorted.sort() }
        var out: [PageRange] = []
        out.reserveCapacity(sorted.count)
        for r in sorted where !r.isEmpty {
            if let last = out.last, r.start <= last.end {
                if r.end > last.end { out[out.count - 1].end = r.end }
            } else {
                out.append(r)
            }
        }
        return out
    }

    /// Appends `r`, merging it into the last range when they touch (caller appends in order).
    @inline(__always)
    public mutating func appendCoalescing(_ r: PageRange) {
        guard !r.isEmpty else { return }
        if let last = self.last, r.start <= last.end, r.start >= last.start {
            if r.end > last.end { self[count - 1].end = r.end }
        } else {
            append(r)
        }
    }

    /// Pages in `self` and not in `other`.
    public func subtracting(_ other: [PageRange]) -> [PageRange] {
        var out: [PageRange] = []
        out.reserveCapacity(count)
        var j = 0
        for r in self {
            var cur = r.start
            while j < other.count && other[j].end <= cur { j += 1 }
            var k = j
            while k < other.count && other[k].start < r.end {
                if other[k].start > cur { out.append(PageRange(start: cur, end: other[k].start)) }
                cur = Swift.max(cur, other[k].end)
                if cur >= r.end { break }
                k += 1
            }
            if cur < r.end { out.append(PageRange(start: cur, end: r.end)) }
        }
        return out
    }

    /// Pages in both lists.
    public func intersecting(_ other: [PageRange]) -> [PageRange] {
        var out: [PageRange] = []
        var i = 0
        var j = 0
        while i < count && j < other.count {
            let lo = Swift.max(self[i].start, other[j].start)
            let hi = Swift.min(self[i].end, other[j].end)
            if lo < hi { out.appendCoalescing(PageRange(start: lo, end: hi)) }
            if self[i].end < other[j].end { i += 1 } else { j += 1 }
        }
        return out
    }

    /// Pages in either list.
    public func union(_ other: [PageRange]) -> [PageRange] {
        if other.isEmpty { return self }
        if isEmpty { return other }
        var out: [PageRange] = []
        out.reserveCapacity(count + other.count)
        var i = 0
        var j = 0
        while i < count || j < other.count {
            let next: PageRange
            if j >= other.count || (i < count && self[i].start <= other[j].start) {
                next = self[i]
                i += 1
            } else {
                next = other[j]
                j += 1
            }
            if let last = out.last, next.start <= last.end {
                if next.end > last.end { out[out.count - 1].end = next.end }
            } else {
                out.append(next)
            }
        }
        return out
    }
}

// Set algebra over range lists. All inputs and outputs are sorted, disjoint
// and coalesced (what `coalesced()` returns); operations are linear merges.
extension Array where Element == AddressRange {
    /// Total pages in the list.
    public var pageCount: Int { reduce(0) { $0 + $1.pageCount } }

    /// Sorted, with empty ranges dropped and overlapping or touching ranges merged.
    public func coalesced() -> [AddressRange] {
        var sorted = self
        var isSorted = true
        for i in 1..<Swift.max(1, count) where self[i] < self[i - 1] {
            isSorted = false
            break
        }
        if !isSorted { sorted.sort() }
        var out: [AddressRange] = []
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
    public mutating func appendCoalescing(_ r: AddressRange) {
        guard !r.isEmpty else { return }
        if let last = self.last, r.start <= last.end, r.start >= last.start {
            if r.end > last.end { self[count - 1].end = r.end }
        } else {
            append(r)
        }
    }

    /// Pages in `self` and not in `other`.
    public func subtracting(_ other: [AddressRange]) -> [AddressRange] {
        var out: [AddressRange] = []
        out.reserveCapacity(count)
        var j = 0
        for r in self {
            var cur = r.start
            j = other.firstIndex(endingAfter: cur, from: j)
            var k = j
            while k < other.count && other[k].start < r.end {
                if other[k].start > cur { out.append(AddressRange(start: cur, end: other[k].start)) }
                cur = Swift.max(cur, other[k].end)
                if cur >= r.end { break }
                k += 1
            }
            if cur < r.end { out.append(AddressRange(start: cur, end: r.end)) }
        }
        return out
    }

    /// Pages in both lists.
    public func intersecting(_ other: [AddressRange]) -> [AddressRange] {
        var out: [AddressRange] = []
        var i = 0
        var j = 0
        while i < count && j < other.count {
            // Skip what lies wholly before the other list's range: a small list meets a large one in O(small × log large).
            if self[i].end <= other[j].start {
                i = firstIndex(endingAfter: other[j].start, from: i)
                continue
            }
            if other[j].end <= self[i].start {
                j = other.firstIndex(endingAfter: self[i].start, from: j)
                continue
            }
            let lo = Swift.max(self[i].start, other[j].start)
            let hi = Swift.min(self[i].end, other[j].end)
            out.appendCoalescing(AddressRange(start: lo, end: hi))
            if self[i].end < other[j].end { i += 1 } else { j += 1 }
        }
        return out
    }

    /// The first index ≥ `from` whose range ends after `address` (`count` if
    /// none): galloping then binary search, so a skip of n ranges costs O(log n).
    @inline(__always)
    func firstIndex(endingAfter address: UInt64, from: Int) -> Int {
        if from >= count || self[from].end > address { return from }
        // self[lo].end <= address throughout; the answer lies in (lo, hi].
        var lo = from
        var step = 1
        var hi = from + 1
        while hi < count && self[hi].end <= address {
            lo = hi
            step *= 2
            hi = lo + step
        }
        var l = lo + 1
        var h = Swift.min(hi, count)
        while l < h {
            let m = (l + h) / 2
            if self[m].end <= address { l = m + 1 } else { h = m }
        }
        return l
    }

    /// Pages in either list.
    public func union(_ other: [AddressRange]) -> [AddressRange] {
        if other.isEmpty { return self }
        if isEmpty { return other }
        var out: [AddressRange] = []
        out.reserveCapacity(count + other.count)
        var i = 0
        var j = 0
        while i < count || j < other.count {
            let next: AddressRange
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

    /// The pieces of each range that lie inside some range of `other` (sorted,
    /// disjoint), without merging: a range meeting two ranges of `other` gives
    /// two pieces (each mapping of /proc/PID/maps stays its own piece). `self`
    /// need only be sorted.
    public func clipped(to other: [AddressRange]) -> [AddressRange] {
        var out: [AddressRange] = []
        var j = 0
        for r in self {
            while j < other.count && other[j].end <= r.start { j += 1 }
            var k = j
            while k < other.count && other[k].start < r.end {
                let piece = AddressRange(start: Swift.max(r.start, other[k].start), end: Swift.min(r.end, other[k].end))
                if !piece.isEmpty { out.append(piece) }
                k += 1
            }
        }
        return out
    }

    /// Calls `body(start, end, inside)` for consecutive pieces of `[start, end)`
    /// split at this list's boundaries (sorted, disjoint): `inside` tells
    /// whether the piece lies in one of its ranges. Binary search, then one pass.
    public func forEachPiece<E: Error>(
        of start: UInt64, _ end: UInt64, _ body: (UInt64, UInt64, Bool) throws(E) -> Void
    ) throws(E) {
        var lo = 0, hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if self[mid].end <= start { lo = mid + 1 } else { hi = mid }
        }
        var cursor = start
        var i = lo
        while cursor < end {
            if i < count, self[i].start <= cursor {
                let e = Swift.min(end, self[i].end)
                try body(cursor, e, true)
                cursor = e
                i += 1
            } else {
                let e = i < count ? Swift.min(end, self[i].start) : end
                try body(cursor, e, false)
                cursor = e
            }
        }
    }
}

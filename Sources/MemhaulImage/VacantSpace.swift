import MemhaulSystem

/// Vacant ranges (Protocol/image.md, "Vacant ranges"): addresses of the
/// committed layout that read as zeros, are holes in their region file, and
/// that no pending journal touches. A round writes pages there in place,
/// like fresh addresses; recovery and readers take them as zeros, which
/// undoes the writes of a round that did not commit.
enum VacantSpace {
    /// At most this many ranges are kept in the manifest: the smallest are
    /// dropped first (their pages are then journaled, which is always safe).
    static let maxRanges = 4096
    /// Gaps up to this size between a round's in-place writes leave the vacant
    /// set with them, so zero pages between data pages do not fragment it.
    static let mergeGap: UInt64 = 1 << 20

    /// The vacant set after a commit: the round's in-place ranges (its vacant
    /// and fresh ranges, sorted, disjoint) minus what it wrote there.
    static func after(inPlace: [AddressRange], written: SortedRanges) -> [AddressRange] {
        var left = inPlace.subtracting(written.bridged(mergeGap))
        if left.count > maxRanges {
            let keep = Set(left.indices.sorted { left[$0].byteCount > left[$1].byteCount }.prefix(maxRanges))
            left = left.indices.filter { keep.contains($0) }.map { left[$0] }
        }
        return left
    }
}

/// Sorted, disjoint, coalesced ranges built by inserts that mostly come in
/// ascending order (a round's writes), which append in O(1).
struct SortedRanges {
    private(set) var ranges: [AddressRange] = []

    var isEmpty: Bool { ranges.isEmpty }

    mutating func insert(_ r: AddressRange) {
        guard !r.isEmpty else { return }
        if let last = ranges.last, r.start >= last.start {
            if r.start <= last.end {
                ranges[ranges.count - 1].end = max(last.end, r.end)
            } else {
                ranges.append(r)
            }
            return
        }
        // Out of order: merge every range r overlaps or touches.
        let i = firstIndex(endingAtOrAfter: r.start)
        var j = i
        var merged = r
        while j < ranges.count, ranges[j].start <= r.end {
            merged.start = min(merged.start, ranges[j].start)
            merged.end = max(merged.end, ranges[j].end)
            j += 1
        }
        ranges.replaceSubrange(i..<j, with: [merged])
    }

    /// The parts of `r` in the set, ascending.
    func intersection(with r: AddressRange) -> [AddressRange] {
        var out: [AddressRange] = []
        var i = firstIndex(endingAtOrAfter: r.start + 1)
        while i < ranges.count, ranges[i].start < r.end {
            out.append(AddressRange(start: max(r.start, ranges[i].start), end: min(r.end, ranges[i].end)))
            i += 1
        }
        return out
    }

    /// The ranges with gaps of at most `gap` bytes closed.
    func bridged(_ gap: UInt64) -> [AddressRange] {
        var out: [AddressRange] = []
        for r in ranges {
            if let last = out.last, r.start - last.end <= gap { out[out.count - 1].end = r.end } else { out.append(r) }
        }
        return out
    }

    /// Index of the first range whose end is at or after `address`.
    private func firstIndex(endingAtOrAfter address: UInt64) -> Int {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].end < address { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }
}

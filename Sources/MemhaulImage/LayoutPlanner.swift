import MemhaulSystem
/// Where a round's layout lives in the region files (Protocol/image.md,
/// "Region files and segments"). Pure: no file is touched, so every case of
/// growth, split, merge and removal is unit-testable on values alone.
struct LayoutPlan: Equatable {
    /// The new layout cut into segments `{start, end, fileID}`, sorted, disjoint.
    var segments: [Segment]
    /// The region files the new layout uses, by id.
    var files: [FileEntry]
    /// The next unused file id (ids are never reused).
    var nextFileID: UInt32
    /// Added ranges in new files (written in place, not journaled).
    var fresh: [AddressRange]
    /// Added ranges in files that exist (journaled: an earlier apply of that file may
    /// not be durable yet, so in-place writes would need its fsync).
    var grown: [AddressRange]
}

enum LayoutPlanner {
    /// Regions end at or below this address (see ``ImageStore/maxLayoutAddress``).
    static let maxLayoutAddress: UInt64 = 1 << 57

    /// Sorts a declared layout and checks it: page-aligned, non-empty, disjoint, below 2^57.
    static func validated(_ layout: [ImageRegion]) throws(ImageError) -> [ImageRegion] {
        let sorted = layout.sorted { $0.start < $1.start }
        var last: UInt64 = 0
        for r in sorted {
            guard r.end <= maxLayoutAddress else {
                throw .invalidLayout("region 0x\(String(r.start, radix: 16))-0x\(String(r.end, radix: 16)) ends above 2^57")
            }
            guard r.start % imagePageSize == 0, r.end % imagePageSize == 0 else {
                throw .invalidLayout("region 0x\(String(r.start, radix: 16))-0x\(String(r.end, radix: 16)) is not page-aligned")
            }
            guard r.start < r.end else { throw .invalidLayout("empty region at 0x\(String(r.start, radix: 16))") }
            guard r.start >= last else { throw .invalidLayout("regions overlap at 0x\(String(r.start, radix: 16))") }
            last = r.end
        }
        return sorted
    }

    /// Maps the new layout (validated regions) onto region files, given the
    /// committed segments and files: kept addresses stay in their file; an added
    /// range extends the file that ends right before it (heap growth) or gets a
    /// new file; files left without addresses are dropped.
    static func plan(
        _ regions: [ImageRegion], segments old: [Segment], files committedFiles: [FileEntry], nextFileID: UInt32
    ) -> LayoutPlan {
        // Union of the new regions.
        var wanted: [(UInt64, UInt64)] = []
        for r in regions {
            if let last = wanted.last, last.1 == r.start { wanted[wanted.count - 1].1 = r.end } else { wanted.append((r.start, r.end)) }
        }
        var pieces: [Segment] = []
        var added: [(UInt64, UInt64)] = []
        var j = 0
        for (ws, we) in wanted {
            var cursor = ws
            while j < old.count && old[j].end <= ws { j += 1 }
            var k = j
            while k < old.count && old[k].start < we {
                let s = max(old[k].start, ws), e = min(old[k].end, we)
                if s > cursor { added.append((cursor, s)) }
                pieces.append(Segment(start: s, end: e, fileID: old[k].fileID))
                cursor = e
                k += 1
            }
            if cursor < we { added.append((cursor, we)) }
        }
        let oldFiles = Dictionary(committedFiles.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        var sizes: [UInt32: UInt64] = [:]
        for p in pieces { sizes[p.fileID] = max(sizes[p.fileID] ?? 0, p.end - oldFiles[p.fileID]!.base) }
        var endsAt: [UInt64: UInt32] = [:]
        for (id, size) in sizes { endsAt[oldFiles[id]!.base + size] = id }
        var bases: [UInt32: UInt64] = oldFiles.mapValues(\.base)
        var nextID = nextFileID
        var fresh: [AddressRange] = []
        var grown: [AddressRange] = []
        for (s, e) in added {
            let id: UInt32
            if let extend = endsAt.removeValue(forKey: s) {
                id = extend
            } else {
                id = nextID
                nextID += 1
                bases[id] = s
            }
            sizes[id] = e - bases[id]!
            endsAt[e] = id
            pieces.append(Segment(start: s, end: e, fileID: id))
            if id < nextFileID { grown.append(AddressRange(start: s, end: e)) } else { fresh.append(AddressRange(start: s, end: e)) }
        }
        pieces.sort { $0.start < $1.start }
        var segments: [Segment] = []
        for p in pieces {
            if let last = segments.last, last.end == p.start, last.fileID == p.fileID {
                segments[segments.count - 1].end = p.end
            } else {
                segments.append(p)
            }
        }
        let files = sizes.map { FileEntry(id: $0.key, base: bases[$0.key]!, size: $0.value) }.sorted { $0.id < $1.id }
        return LayoutPlan(segments: segments, files: files, nextFileID: nextID, fresh: fresh, grown: grown)
    }
}

/// Calls `body(segment, start, end)` for each piece of `[start, end)`;
/// throws `outsideLayout` naming the first address no segment covers.
func forEachPiece(
    _ segments: [Segment], _ start: UInt64, _ end: UInt64, _ body: (Segment, UInt64, UInt64) throws(ImageError) -> Void
) throws(ImageError) {
    var lo = 0, hi = segments.count
    while lo < hi {
        let mid = (lo + hi) / 2
        if segments[mid].end <= start { lo = mid + 1 } else { hi = mid }
    }
    var cursor = start
    var i = lo
    while cursor < end {
        guard i < segments.count, segments[i].start <= cursor else { throw .outsideLayout(cursor) }
        let e = min(end, segments[i].end)
        try body(segments[i], cursor, e)
        cursor = e
        i += 1
    }
}

/// Like forEachPiece, but skips parts no segment covers (discards may name unmapped pages).
func forEachCoveredPiece(
    _ segments: [Segment], _ start: UInt64, _ end: UInt64, _ body: (Segment, UInt64, UInt64) throws(ImageError) -> Void
) throws(ImageError) {
    for s in segments where s.end > start && s.start < end {
        try body(s, max(s.start, start), min(s.end, end))
    }
}

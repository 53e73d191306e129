/// The ``PageLedger``'s entries: one ``LedgerSum`` per page address, stored by
/// blocks of 64 pages (256 KiB of address space) with a bit mask of the pages
/// present and their sums packed in page order.
///
/// Why not `[UInt64: LedgerSum]`: a dictionary slot is 24 bytes at a load
/// factor ≤ 0.75 and doubles when it grows, so 1 Mi pages (4 GiB) held 48 MiB
/// and 72 MiB while growing (old and new storage); packed blocks hold the same
/// pages in about 17 MiB (16 bytes a page plus about 1 byte of block overhead).
/// A block with a single page costs about 100 bytes (the array's header and
/// the block's slot), the worst case for scattered pages.
struct PageHashTable {
    static let pageShift: UInt64 = 12
    static let blockShift: UInt64 = 6  // 64 pages, one UInt64 mask
    static var blockBytes: UInt64 { 1 << (pageShift + blockShift) }

    private struct Block {
        var mask: UInt64 = 0
        /// The sums of the pages in `mask`, in ascending address order.
        var sums: [LedgerSum] = []

        func index(of bit: UInt64) -> Int { (mask & ((1 << bit) &- 1)).nonzeroBitCount }
    }

    private var blocks: [UInt64: Block] = [:]
    private(set) var count = 0

    var isEmpty: Bool { count == 0 }

    private static func split(_ address: UInt64) -> (block: UInt64, bit: UInt64) {
        let page = address >> pageShift
        return (page >> blockShift, page & 63)
    }

    /// Sets the sum of the page at `address`; returns the one it replaces.
    /// `allowNew: false` refuses (returns nil, changes nothing) a page not present.
    mutating func update(_ sum: LedgerSum, at address: UInt64, allowNew: Bool) -> (old: LedgerSum?, stored: Bool) {
        let (key, bit) = Self.split(address)
        if !allowNew, (blocks[key]?.mask ?? 0) & (1 << bit) == 0 { return (nil, false) }
        return Self.set(sum, bit: bit, in: &blocks[key, default: Block()], count: &count)  // in place: no copy of the block
    }

    private static func set(_ sum: LedgerSum, bit: UInt64, in block: inout Block, count: inout Int) -> (old: LedgerSum?, stored: Bool) {
        let i = block.index(of: bit)
        if block.mask & (1 << bit) != 0 {
            let old = block.sums[i]
            block.sums[i] = sum
            return (old, true)
        }
        block.mask |= 1 << bit
        block.sums.insert(sum, at: i)
        count += 1
        return (nil, true)
    }

    /// Removes the pages of `range`; returns the sum of their sums. Cost:
    /// min(blocks the range spans, blocks held).
    mutating func remove(_ range: Range<UInt64>) -> (pages: Int, sum: LedgerSum) {
        var removed = (pages: 0, sum: LedgerSum())
        guard !range.isEmpty, count > 0 else { return removed }
        let first = range.lowerBound >> (Self.pageShift + Self.blockShift)
        let last = (range.upperBound - 1) >> (Self.pageShift + Self.blockShift)
        if last - first < UInt64(blocks.count) {
            for key in first...last where blocks[key] != nil { removeInBlock(key, range, &removed) }
        } else {
            for key in blocks.keys.filter({ $0 >= first && $0 <= last }) { removeInBlock(key, range, &removed) }
        }
        return removed
    }

    /// Removes every page `drop` selects; returns the sum of their sums. Cost: the pages held.
    mutating func removeAll(where drop: (UInt64) -> Bool) -> LedgerSum {
        var removed = LedgerSum()
        for key in Array(blocks.keys) {
            var block = blocks.removeValue(forKey: key)!
            var keptMask: UInt64 = 0
            var kept: [LedgerSum] = []
            var i = 0
            var bits = block.mask
            while bits != 0 {
                let bit = UInt64(bits.trailingZeroBitCount)
                bits &= bits - 1
                if drop(((key << Self.blockShift) | bit) << Self.pageShift) {
                    removed += block.sums[i]
                    count -= 1
                } else {
                    keptMask |= 1 << bit
                    kept.append(block.sums[i])
                }
                i += 1
            }
            if keptMask == block.mask { blocks[key] = block; continue }
            block.mask = keptMask
            block.sums = kept
            if keptMask != 0 { blocks[key] = block }
        }
        return removed
    }

    private mutating func removeInBlock(_ key: UInt64, _ range: Range<UInt64>, _ removed: inout (pages: Int, sum: LedgerSum)) {
        let base = key << (Self.pageShift + Self.blockShift)
        let lo = range.lowerBound > base ? (range.lowerBound - base + (1 << Self.pageShift) - 1) >> Self.pageShift : 0
        let hi = min(64, (range.upperBound - base + (1 << Self.pageShift) - 1) >> Self.pageShift)
        guard lo < hi else { return }
        let span: UInt64 = hi - lo == 64 ? ~0 : ((1 << (hi - lo)) - 1) << lo
        var block = blocks.removeValue(forKey: key)!
        let doomed = block.mask & span
        guard doomed != 0 else { blocks[key] = block; return }
        var bits = doomed
        var offset = 0
        while bits != 0 {
            let bit = UInt64(bits.trailingZeroBitCount)
            bits &= bits - 1
            let i = block.index(of: bit) - offset
            removed.sum += block.sums.remove(at: i)
            offset += 1
        }
        removed.pages += doomed.nonzeroBitCount
        count -= doomed.nonzeroBitCount
        block.mask &= ~doomed
        if block.mask != 0 { blocks[key] = block }
    }
}

import CMemhaulLinux
import Dispatch
import MemhaulSystem

#if canImport(Glibc)
import Glibc
#endif

/// PAGE_IS_* categories reported by `ioctl(PAGEMAP_SCAN)`.
public struct PageCategories: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let wpAllowed = PageCategories(rawValue: cmh_PAGE_IS_WPALLOWED)
    public static let written = PageCategories(rawValue: cmh_PAGE_IS_WRITTEN)
    public static let file = PageCategories(rawValue: cmh_PAGE_IS_FILE)
    public static let present = PageCategories(rawValue: cmh_PAGE_IS_PRESENT)
    public static let swapped = PageCategories(rawValue: cmh_PAGE_IS_SWAPPED)
    public static let pfnZero = PageCategories(rawValue: cmh_PAGE_IS_PFNZERO)
    public static let huge = PageCategories(rawValue: cmh_PAGE_IS_HUGE)
    public static let softDirty = PageCategories(rawValue: cmh_PAGE_IS_SOFT_DIRTY)
    public static let guardRegion = PageCategories(rawValue: cmh_PAGE_IS_GUARD)
}

/// PM_SCAN_* operation flags of `ioctl(PAGEMAP_SCAN)`.
public struct PagemapScanFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// Write-protect the matched pages (atomically with reporting them).
    public static let wpMatching = PagemapScanFlags(rawValue: cmh_PM_SCAN_WP_MATCHING)
    /// Fail with EPERM on a VMA not registered for uffd async write-protect.
    public static let checkWPAsync = PagemapScanFlags(rawValue: cmh_PM_SCAN_CHECK_WPASYNC)
}

/// Counters of one scan (scanner call) or one round (tracker).
public struct ScanStats: Hashable, Sendable {
    /// Address-space pages walked.
    public var pagesScanned: Int = 0
    /// `page_region` entries the kernel returned.
    public var regions: Int = 0
    public var ioctls: Int = 0
    public var nanoseconds: UInt64 = 0
    /// Round results (tracker only).
    public var dirtyPages: Int = 0
    public var discardedPages: Int = 0
    /// `/proc/PID/pagemap` entries read to tell uffd-wp markers from swap entries.
    public var pagemapEntriesRead: Int = 0

    public init() {}

    public static func += (a: inout ScanStats, b: ScanStats) {
        a.pagesScanned += b.pagesScanned
        a.regions += b.regions
        a.ioctls += b.ioctls
        a.nanoseconds += b.nanoseconds
        a.dirtyPages += b.dirtyPages
        a.discardedPages += b.discardedPages
        a.pagemapEntriesRead += b.pagemapEntriesRead
    }
}

/// Why a pagemap scan failed; one readable line each.
public enum PagemapScanError: Error, Hashable, Sendable, CustomStringConvertible {
    /// ENOTTY/EINVAL: the ioctl does not exist on this kernel.
    case unsupportedKernel(SystemError)
    /// EPERM under PM_SCAN_CHECK_WPASYNC: part of the range is not registered for uffd async WP.
    case notRegisteredForAsyncWP(AddressRange, SystemError)
    case misaligned(AddressRange)
    /// The kernel returned walk_end == start with nothing reported; retrying would spin.
    case noProgress(at: UInt64)
    case system(SystemError)

    public var description: String {
        switch self {
        case .unsupportedKernel(let e):
            return "\(e): the kernel lacks PAGEMAP_SCAN with uffd async write-protect (needs Linux >= 6.7)"
        case .notRegisteredForAsyncWP(let r, let e):
            return "\(e): range \(r) is not registered with userfaultfd for async write-protect"
        case .misaligned(let r):
            return "ioctl(PAGEMAP_SCAN): range \(r) is not page-aligned"
        case .noProgress(let a):
            return "ioctl(PAGEMAP_SCAN): no progress at 0x\(String(a, radix: 16))"
        case .system(let e):
            return e.description
        }
    }
}


/// `ioctl(PAGEMAP_SCAN)` over one process's `/proc/PID/pagemap`.
///
/// Each call walks its ranges to the end, resuming from `walk_end` whenever the
/// output vector fills or `maxPagesPerCall` is hit, and reuses one
/// `page_region` vector (no per-call allocation in the kernel interface).
/// Not thread-safe: one scanner per thread.
public final class PagemapScanner {
    public let pagemap: FileDescriptor
    public let vectorCapacity: Int
    /// `max_pages` per ioctl, 0 = unlimited (a knob for tests of resumption).
    public var maxPagesPerCall: UInt64 = 0
    /// Counters of the last public call.
    public private(set) var lastStats = ScanStats()

    private let vector: UnsafeMutablePointer<page_region>
    private let arg: UnsafeMutablePointer<pm_scan_arg>
    private var entries: UnsafeMutablePointer<UInt64>?
    private static let entryCapacity = 1 << 16

    /// `pagemap` is an open `/proc/PID/pagemap` (read-only is enough).
    public init(pagemap: FileDescriptor, vectorCapacity: Int = 1 << 16) {
        precondition(vectorCapacity >= 1)
        precondition(PageSize.matchesSystem, "memhaul needs 4 KiB pages")
        self.pagemap = pagemap
        self.vectorCapacity = vectorCapacity
        vector = .allocate(capacity: vectorCapacity)
        arg = .allocate(capacity: 1)
        arg.initialize(to: pm_scan_arg())
    }

    /// Opens `/proc/PID/pagemap` (`open(/proc/PID/pagemap)`).
    public convenience init(pid: Int32, vectorCapacity: Int = 1 << 16) throws {
        let fd = try FileDescriptor.open("/proc/\(pid)/pagemap", O_RDONLY)
        self.init(pagemap: fd, vectorCapacity: vectorCapacity)
    }

    deinit {
        vector.deallocate()
        arg.deallocate()
        entries?.deallocate()
    }

    // MARK: Public operations

    /// Write-protects every populated page of `ranges` (PM_SCAN_WP_MATCHING|
    /// PM_SCAN_CHECK_WPASYNC on PAGE_IS_WPALLOWED and PRESENT or SWAPPED, no
    /// output vector). Unpopulated pages are left alone: protecting them would
    /// allocate page tables full of markers for every empty range (16 MiB for
    /// an 8 GiB sparse mapping), and a write into one shows as written anyway
    /// (a new page carries no uffd-wp bit). The populated-set comparison of the
    /// tracker covers what a marker would have told.
    public func protectAll(_ ranges: [AddressRange]) throws {
        var stats = ScanStats()
        let t0 = MonotonicClock.nanoseconds()
        defer { stats.nanoseconds = MonotonicClock.nanoseconds() - t0; lastStats = stats }
        for r in try Self.checked(ranges) {
            try walk(r, flags: [.wpMatching, .checkWPAsync], mask: .wpAllowed, anyOf: [.present, .swapped],
                     output: false, stats: &stats) { _, _, _ in }
        }
    }

    /// Atomically reports the pages written since they were last protected and
    /// re-protects them (PM_SCAN_WP_MATCHING|PM_SCAN_CHECK_WPASYNC on PAGE_IS_WRITTEN).
    ///
    /// The kernel counts an empty entry as written and would protect it,
    /// allocating page tables for holes. A range at least half populated
    /// according to `populatedHint` (the last populated set) takes the kernel's
    /// fast path, which does that (at most doubling its page tables); any other
    /// range also requires PRESENT or SWAPPED, which skips holes at about 1.5×
    /// the cost per page. Without a hint every range skips holes. Empty entries
    /// reported as written are not content; callers intersect with the populated set.
    public func collectWritten(_ ranges: [AddressRange], populatedHint: [AddressRange]? = nil) throws -> [AddressRange] {
        var stats = ScanStats()
        let t0 = MonotonicClock.nanoseconds()
        defer { stats.nanoseconds = MonotonicClock.nanoseconds() - t0; lastStats = stats }
        var out: [AddressRange] = []
        let checked = try Self.checked(ranges)
        let covered = populatedHint.map { Self.coveredBytes(of: checked, by: $0.coalesced()) }
        for (i, r) in checked.enumerated() {
            let dense = covered.map { $0[i] * 2 >= r.byteCount } ?? false
            try walk(r, flags: [.wpMatching, .checkWPAsync], mask: .written, anyOf: dense ? [] : [.present, .swapped],
                     returnMask: .written, output: true, stats: &stats) { start, end, _ in
                out.appendCoalescing(AddressRange(start: start, end: end))
            }
        }
        return out
    }

    /// Pages that are not write-protected, without protecting anything
    /// (PM_SCAN_CHECK_WPASYNC on PAGE_IS_WRITTEN, no PM_SCAN_WP_MATCHING): the
    /// pages written since their last protection, and every unpopulated page,
    /// whether its page table entry is empty or its page table is gone (a
    /// hole). A populated page a discard took away (MADV_DONTNEED, a reclaimed
    /// MADV_FREE page, a zapped THP) is unpopulated and so reported too;
    /// a protected page that sits in swap is not. This is the kernel's fast
    /// path (one bit test per entry, about 1/30 of a ``populated(_:fileContent:)``
    /// walk), and without protection it allocates nothing in holes.
    public func collectUnprotected(_ ranges: [AddressRange]) throws -> [AddressRange] {
        var stats = ScanStats()
        let t0 = MonotonicClock.nanoseconds()
        defer { stats.nanoseconds = MonotonicClock.nanoseconds() - t0; lastStats = stats }
        var out: [AddressRange] = []
        for r in try Self.checked(ranges) {
            try walk(r, flags: [.checkWPAsync], mask: .written, returnMask: .written, output: true, stats: &stats) { start, end, _ in
                out.appendCoalescing(AddressRange(start: start, end: end))
            }
        }
        return out
    }

    /// ``collectUnprotected(_:)`` with the walk cut in two halves of equal
    /// page count, the upper one walked by `helper` (a second scanner of the
    /// same pagemap: one scanner per thread) on a second thread meanwhile.
    /// For the frozen final round, whose cores the frozen target leaves idle:
    /// the walk of every tracked page table is most of its final scan. Below
    /// `minimumPages` it is one walk on this thread. The same result;
    /// ``lastStats`` counts both walks' ioctls and the wall time.
    public func collectUnprotected(_ ranges: [AddressRange], alongside helper: PagemapScanner, minimumPages: Int = 1 << 18) throws -> [AddressRange] {
        precondition(helper !== self, "the helper must be a second scanner")
        let all = try Self.checked(ranges)
        let pages = all.reduce(0) { $0 + $1.pageCount }
        guard pages >= max(2, minimumPages) else { return try collectUnprotected(all) }
        let (lower, upper) = Self.halves(all, pages: pages)
        let t0 = MonotonicClock.nanoseconds()
        let job = HelperWalk(helper: helper, ranges: upper)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global(qos: .userInteractive).async {
            job.run()
            done.signal()
        }
        let mine = Result { try collectUnprotected(lower) }
        var stats = lastStats
        done.wait()
        var out = try mine.get()
        for r in try job.result!.get() { out.appendCoalescing(r) }
        stats.ioctls += helper.lastStats.ioctls
        stats.regions += helper.lastStats.regions
        stats.pagesScanned += helper.lastStats.pagesScanned
        stats.nanoseconds = MonotonicClock.nanoseconds() - t0
        lastStats = stats
        return out
    }

    /// `ranges` (sorted, disjoint, `pages` pages) cut at the page where half of them lie below.
    static func halves(_ ranges: [AddressRange], pages: Int) -> (lower: [AddressRange], upper: [AddressRange]) {
        var left = pages / 2
        for (i, r) in ranges.enumerated() {
            if r.pageCount < left {
                left -= r.pageCount
                continue
            }
            let cut = r.start + UInt64(left) * PageSize.bytes
            var lower = Array(ranges[..<i]), upper = Array(ranges[(i + 1)...])
            if cut > r.start { lower.append(AddressRange(start: r.start, end: cut)) }
            if cut < r.end { upper.insert(AddressRange(start: cut, end: r.end), at: 0) }
            return (lower, upper)
        }
        return (ranges, [])
    }

    /// The helper's half of a split walk; touched by its thread until `done` is signalled.
    private final class HelperWalk: @unchecked Sendable {  // unchecked: one thread at a time, ordered by the semaphore
        let helper: PagemapScanner
        let ranges: [AddressRange]
        var result: Result<[AddressRange], any Error>?
        init(helper: PagemapScanner, ranges: [AddressRange]) {
            self.helper = helper
            self.ranges = ranges
        }
        func run() { result = Result { try helper.collectUnprotected(ranges) } }
    }

    /// For each of `ranges` (sorted, disjoint), the bytes of it inside `hint`
    /// (sorted, disjoint): one merge pass.
    static func coveredBytes(of ranges: [AddressRange], by hint: [AddressRange]) -> [UInt64] {
        var out = [UInt64](repeating: 0, count: ranges.count)
        var j = 0
        for (i, r) in ranges.enumerated() {
            while j < hint.count && hint[j].end <= r.start { j += 1 }
            var k = j
            while k < hint.count && hint[k].start < r.end {
                out[i] += min(r.end, hint[k].end) - max(r.start, hint[k].start)
                k += 1
            }
        }
        return out
    }

    /// Pages with content: present and not the zero page, or swapped out, and
    /// not a clean page-cache page of a file mapping (its content is the file's)
    /// unless it lies in `fileContent`: the mappings of files that cannot be
    /// reopened (``FileBacking/notReopenable``), whose clean page-cache pages
    /// are content like anonymous memory. This is the one definition of
    /// "content" of the sender (rounds and digest).
    ///
    /// uffd-wp markers (left on unpopulated pages by ``protectAll(_:)``) are
    /// swap entries too, so the kernel reports them PAGE_IS_SWAPPED; swapped
    /// pages that are not PAGE_IS_WRITTEN are resolved by reading their
    /// `/proc/PID/pagemap` entries (a marker has swap type 31).
    public func populated(_ ranges: [AddressRange], fileContent: [AddressRange] = []) throws -> [AddressRange] {
        try populated(ranges, resolveWithin: nil, fileContent: fileContent)
    }

    /// Like ``populated(_:fileContent:)``, but swap-or-marker pages outside `resolveWithin`
    /// are reported as unpopulated without reading pagemap (the tracker only
    /// needs exact answers for pages it knows or that were just written).
    public func populated(
        _ ranges: [AddressRange], resolveWithin: [AddressRange]?, fileContent: [AddressRange] = []
    ) throws -> [AddressRange] {
        var stats = ScanStats()
        let t0 = MonotonicClock.nanoseconds()
        defer { stats.nanoseconds = MonotonicClock.nanoseconds() - t0; lastStats = stats }
        var out: [AddressRange] = []
        var ambiguous: [AddressRange] = []
        let fileContent = fileContent.coalesced()
        for (r, cleanFileIsContent) in Self.split(try Self.checked(ranges), by: fileContent) {
            try walk(r, flags: [], anyOf: [.present, .swapped],
                     returnMask: [.present, .swapped, .pfnZero, .written, .file],
                     output: true, stats: &stats) { start, end, raw in
                let c = PageCategories(rawValue: raw)
                if c.contains(.file) {
                    // A page-cache page of a private file mapping: its content is the
                    // file's (a written one is an anonymous COW copy instead). It may
                    // appear by a mere read fault, which no write-tracking sees.
                    // Content only where the file cannot be reopened (present, or
                    // a migration entry: a FILE page never sits in swap here).
                    if cleanFileIsContent {
                        out.appendCoalescing(AddressRange(start: start, end: end))
                    }
                } else if c.contains(.present) {
                    if !c.contains(.pfnZero) { out.appendCoalescing(AddressRange(start: start, end: end)) }
                } else if c.contains(.written) {
                    // A written swap entry carries no uffd-wp bit, so it is real swap.
                    out.appendCoalescing(AddressRange(start: start, end: end))
                } else {
                    ambiguous.appendCoalescing(AddressRange(start: start, end: end))
                }
            }
        }
        if let within = resolveWithin { ambiguous = ambiguous.intersecting(within.coalesced()) }
        if !ambiguous.isEmpty {
            let resolved = try resolveSwapEntries(ambiguous, stats: &stats)
            out = out.union(resolved)
        }
        return out
    }

    /// `ranges` (sorted, disjoint) cut at the edges of `marked` (sorted,
    /// disjoint), in address order, each piece with whether it lies in `marked`.
    static func split(_ ranges: [AddressRange], by marked: [AddressRange]) -> [(AddressRange, Bool)] {
        if marked.isEmpty { return ranges.map { ($0, false) } }
        var out: [(AddressRange, Bool)] = []
        var j = 0
        for r in ranges {
            var cursor = r.start
            while j < marked.count && marked[j].end <= r.start { j += 1 }
            var k = j
            while cursor < r.end {
                guard k < marked.count, marked[k].start < r.end else {
                    out.append((AddressRange(start: cursor, end: r.end), false))
                    break
                }
                let m = marked[k]
                if m.start > cursor { out.append((AddressRange(start: cursor, end: m.start), false)) }
                let end = min(m.end, r.end)
                out.append((AddressRange(start: max(cursor, m.start), end: end), true))
                cursor = end
                if m.end <= r.end { k += 1 }
            }
        }
        return out
    }

    /// Generic scan: calls `visit(start, end, categories & returnMask)` for each
    /// matching region in address order, resuming from `walk_end` until done.
    public func scan(
        _ ranges: [AddressRange], flags: PagemapScanFlags = [], mask: PageCategories = [],
        anyOf: PageCategories = [], inverted: PageCategories = [], returnMask: PageCategories,
        visit: (UInt64, UInt64, UInt64) -> Void
    ) throws {
        var stats = ScanStats()
        let t0 = MonotonicClock.nanoseconds()
        defer { stats.nanoseconds = MonotonicClock.nanoseconds() - t0; lastStats = stats }
        for r in try Self.checked(ranges) {
            try walk(r, flags: flags, mask: mask, anyOf: anyOf, inverted: inverted, returnMask: returnMask,
                     output: true, stats: &stats, visit: visit)
        }
    }

    // MARK: Core

    private static func checked(_ ranges: [AddressRange]) throws -> [AddressRange] {
        for r in ranges where !r.isPageAligned { throw PagemapScanError.misaligned(r) }
        return ranges.coalesced()
    }

    /// One range, to its end: loops the ioctl, resuming from walk_end.
    /// Inlined so the per-region visitor is not an indirect call.
    @inline(__always)
    private func walk(
        _ range: AddressRange, flags: PagemapScanFlags, mask: PageCategories = [], anyOf: PageCategories = [],
        inverted: PageCategories = [], returnMask: PageCategories = [], output: Bool,
        stats: inout ScanStats, visit: (UInt64, UInt64, UInt64) -> Void
    ) throws {
        var a = pm_scan_arg()
        a.size = UInt64(MemoryLayout<pm_scan_arg>.size)
        a.flags = flags.rawValue
        a.end = range.end
        a.category_mask = mask.rawValue
        a.category_anyof_mask = anyOf.rawValue
        a.category_inverted = inverted.rawValue
        a.return_mask = returnMask.rawValue
        if output {
            a.vec = UInt64(UInt(bitPattern: vector))
            a.max_pages = maxPagesPerCall
        }
        let fd = pagemap.rawValue
        let argp = arg
        var start = range.start
        while start < range.end {
            a.start = start
            a.walk_end = 0
            a.vec_len = output ? UInt64(vectorCapacity) : 0
            argp.pointee = a
            let n: Int32
            do {
                n = try Syscall.run("ioctl(PAGEMAP_SCAN)") { cmh_ioctl_ptr(fd, cmh_PAGEMAP_SCAN, argp) }
            } catch {
                switch error.errno {
                case .ENOTTY, .EINVAL: throw PagemapScanError.unsupportedKernel(error)
                case .EPERM where flags.contains(.checkWPAsync):
                    throw PagemapScanError.notRegisteredForAsyncWP(AddressRange(start: start, end: range.end), error)
                default: throw PagemapScanError.system(error)
                }
            }
            stats.ioctls += 1
            stats.regions += Int(n)
            var lastEnd = start
            var pages: UInt64 = 0
            for i in 0..<Int(n) {
                let region = vector[i]
                visit(region.start, region.end, region.categories)
                lastEnd = max(lastEnd, region.end)
                pages &+= (region.end &- region.start) >> PageSize.shift
            }
            // Linux (seen on 6.18) reports a stale walk_end once its internal
            // 512-entry bounce buffer has filled in an earlier chunk of the same
            // call, although the walk went on to the end. The walk stops early
            // only when our vector is full or max_pages is reached, so anything
            // else means the range is done.
            let vectorFull = output && Int(n) >= vectorCapacity
            let pagesFull = output && maxPagesPerCall > 0 && pages >= maxPagesPerCall
            if !vectorFull && !pagesFull { break }
            let walkEnd = max(argp.pointee.walk_end, lastEnd)
            if walkEnd >= range.end { break }
            if walkEnd <= start { throw PagemapScanError.noProgress(at: start) }
            start = walkEnd
        }
        stats.pagesScanned += range.pageCount
    }

    /// Keeps the pages of `ranges` whose pagemap entry is present or a real
    /// swap entry; drops uffd-wp markers (swap type 31 = SWP_PTE_MARKER) and
    /// empty entries. Without CAP_SYS_ADMIN the swap type reads 0, so every
    /// swap entry counts as populated (safe: never drops content).
    private func resolveSwapEntries(_ ranges: [AddressRange], stats: inout ScanStats) throws -> [AddressRange] {
        let cap = Self.entryCapacity
        if entries == nil { entries = .allocate(capacity: cap) }
        let buf = entries!
        var out: [AddressRange] = []
        for r in ranges {
            var page = r.start >> PageSize.shift
            let endPage = r.end >> PageSize.shift
            while page < endPage {
                let count = Int(min(UInt64(cap), endPage - page))
                let bytes = UnsafeMutableRawBufferPointer(start: buf, count: count * 8)
                let got: Int
                do {
                    got = try pagemap.pread(into: bytes, at: Int64(page * 8))
                } catch {
                    throw PagemapScanError.system(error)
                }
                let entriesRead = got / 8
                stats.pagemapEntriesRead += entriesRead
                if entriesRead == 0 { break }
                for i in 0..<entriesRead {
                    let e = buf[i]
                    let present = e >> 63 != 0
                    let swap = (e >> 62) & 1 != 0
                    let isMarker = swap && (e & 0x1f) == 31
                    if present || (swap && !isMarker) {
                        let s = (page + UInt64(i)) << PageSize.shift
                        out.appendCoalescing(AddressRange(start: s, end: s + PageSize.bytes))
                    }
                }
                page += UInt64(entriesRead)
            }
        }
        return out
    }
}

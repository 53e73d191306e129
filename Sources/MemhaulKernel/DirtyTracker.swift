import MemhaulSystem
/// One round's result: what the receiver must be told (ARCHITECTURE.md, "Round scan").
public struct RoundScan: Hashable, Sendable {
    public var round: Int
    /// Pages whose content must be read and sent.
    public var dirty: [AddressRange]
    /// Pages the receiver may hold with content that are now zero or unmapped.
    public var discarded: [AddressRange]
    public var stats: ScanStats

    public init(round: Int, dirty: [AddressRange], discarded: [AddressRange], stats: ScanStats) {
        self.round = round
        self.dirty = dirty
        self.discarded = discarded
        self.stats = stats
    }
}

/// Pre-copy round logic over a ``PagemapScanner``; knows nothing of ptrace.
///
/// State: `known`, the pages the receiver holds with content once every scan
/// handed out so far is delivered (the populated set at the last scan), and
/// `pending`, pages of scans handed back by ``requeue(_:)``.
///
/// Round k: W = collectWritten (atomic find + re-protect), then P = populated.
/// dirty = (W ∩ P) ∪ (pending ∩ P) ∪ populated pages of new ranges;
/// discarded = (known ∪ pending) \ P. A written page that is unpopulated when
/// P is read has zero content then, and any later write to it shows in the next
/// W, so it is not sent. A page discarded without a WRITTEN trace (anonymous
/// MADV_DONTNEED that frees the page table, MADV_FREE reclaim) is caught by
/// `known \ P`. Pages known before but outside `ranges` are reported discarded.
///
/// `fileContent` (per round) names the mappings whose clean page-cache pages
/// are content (``FileBacking/notReopenable``). Such a page appears by a mere
/// read fault, which leaves no WRITTEN trace, and needs sending only once: a
/// populated page of `fileContent` not in `known` is dirty (new ranges send
/// theirs whole anyway; a mapping that becomes not reopenable mid-migration
/// sends the pages it holds).
///
/// Exact for private anonymous memory. For shared/file mappings, a zapped PTE
/// does not mean the content is gone (it stays in the page cache): callers must
/// not track those as populated-by-PTE.
public final class DirtyTracker {
    public let scanner: PagemapScanner
    /// Round number of the last scan, -1 before ``initialRound(ranges:)``.
    public private(set) var round: Int = -1
    /// Ranges tracked (protected) as of the last scan.
    public private(set) var tracked: [AddressRange] = []
    /// Pages the receiver holds with content once all scans are delivered.
    public private(set) var known: [AddressRange] = []
    /// Pages of requeued scans, re-examined next round.
    public private(set) var pending: [AddressRange] = []
    /// Round 0 protected nothing (`frozen`) and no thawed round has run since:
    /// the target has written nothing, and its pages are still unprotected.
    private var unprotectedSinceFrozenRoundZero = false

    /// The final round's second walker (``PagemapScanner/collectUnprotected(_:alongside:minimumPages:)``),
    /// made here so its allocation is not inside the frozen window.
    private let helperScanner: PagemapScanner
    /// Tracked pages from which the final round walks in two halves at once (tests lower it).
    public var splitWalkMinimumPages = 1 << 18

    public init(scanner: PagemapScanner) {
        self.scanner = scanner
        helperScanner = PagemapScanner(pagemap: scanner.pagemap, vectorCapacity: scanner.vectorCapacity)
    }

    /// Round 0: write-protect everything, then report every populated page.
    ///
    /// `frozen` (stop-and-copy): the target is frozen now and stays frozen
    /// until it is released or a ``nextRound(ranges:removed:checkDiscards:fileContent:)``
    /// runs. Nothing is protected then, since the target cannot write.
    /// Protecting 4 GiB costs about 250 ms, all of it inside the frozen window.
    /// A ``frozenRound(ranges:removed:fileContent:fileBacked:)`` after it (a
    /// break in the frozen round, resumed while still frozen) protects
    /// everything first, as round 0 would have, and reports only what is
    /// pending. A thawed ``nextRound(ranges:removed:checkDiscards:fileContent:)``
    /// finds every page unprotected, so written, and sends it again. Pages
    /// repeat; none is missed.
    public func initialRound(ranges: [AddressRange], fileContent: [AddressRange] = [], frozen: Bool = false) throws -> RoundScan {
        var stats = ScanStats()
        let cur = ranges.coalesced()
        if !frozen {
            try scanner.protectAll(cur)
            stats += scanner.lastStats
        }
        unprotectedSinceFrozenRoundZero = frozen
        let p = try scanner.populated(cur, fileContent: fileContent)
        stats += scanner.lastStats
        // pending may hold pages of an earlier life of this tracker: keep them.
        let dirty = p.union(pending.intersecting(p))
        let discarded = known.union(pending).subtracting(p)
        stats.pagesScanned = cur.pageCount
        stats.dirtyPages = dirty.pageCount
        stats.discardedPages = discarded.pageCount
        round = 0
        tracked = cur
        known = p
        pending = []
        return RoundScan(round: 0, dirty: dirty, discarded: discarded, stats: stats)
    }

    /// Round k ≥ 1. `ranges` is the current layout; `removed` lists regions
    /// unmapped since the last round (from the layout diff), so that a region
    /// mapped again at the same address is treated as new.
    ///
    /// `checkDiscards: false` skips the populated scan of old ranges (it costs
    /// about twice the scan-and-protect): written pages are all reported dirty
    /// (a discarded one reads as zeros), and discards that left no WRITTEN
    /// trace wait for the next checking round. The final round (target frozen)
    /// must check discards. Where `known` covers most of a range, the written
    /// scan takes the kernel's fast path, which also reports the range's
    /// never-populated pages (page-table holes, empty entries): without the
    /// check they are dirty and go as zero pages (all 6,144 in
    /// NeverWrittenPagesTests); the sender's rounds always check.
    public func nextRound(
        ranges: [AddressRange], removed: [AddressRange] = [], checkDiscards: Bool = true, fileContent: [AddressRange] = []
    ) throws -> RoundScan {
        if round < 0 { return try initialRound(ranges: ranges, fileContent: fileContent) }
        unprotectedSinceFrozenRoundZero = false  // the target ran: every unprotected page counts as written
        var (stats, cur, fresh, old) = try splitLayout(ranges, removed: removed)
        let fileContent = fileContent.coalesced()
        // collectWritten re-protects what it reports: if anything fails from
        // here on, those reports are gone, so every page of the ranges goes
        // back to `pending` and the next round re-examines all of them.
        let written: [AddressRange]
        var pOld: [AddressRange] = []
        var pFresh: [AddressRange] = []
        do {
            written = try scanner.collectWritten(old, populatedHint: known)
            stats += scanner.lastStats
            if checkDiscards {
                let care = known.union(written).union(pending)
                pOld = try scanner.populated(old, resolveWithin: care, fileContent: fileContent)
                stats += scanner.lastStats
            }
            if !fresh.isEmpty {
                pFresh = try scanner.populated(fresh, fileContent: fileContent)
                stats += scanner.lastStats
            }
        } catch {
            pending = pending.union(old)
            throw error
        }
        let dirty: [AddressRange]
        let discarded: [AddressRange]
        if checkDiscards {
            let p = pOld.union(pFresh)
            // Clean file pages that became content since the last scan (read
            // faults, or the mapping's file became unreopenable) show in no W.
            let newlyRead = fileContent.isEmpty ? [] : pOld.intersecting(fileContent).subtracting(known)
            dirty = written.intersecting(pOld).union(pFresh).union(pending.intersecting(p)).union(newlyRead)
            discarded = known.union(pending).subtracting(p)
            known = p
        } else {
            // Without P: every written or requeued page still mapped is sent
            // (unpopulated ones as zeros); only pages no longer mapped are discarded.
            // Clean file pages read since wait for the next checking round
            // (they are not in `known`); the final round checks.
            dirty = written.union(pFresh).union(pending.intersecting(cur))
            discarded = known.union(pending).subtracting(cur)
            known = known.intersecting(cur).union(dirty)
        }

        stats.pagesScanned = cur.pageCount
        stats.dirtyPages = dirty.pageCount
        stats.discardedPages = discarded.pageCount
        round += 1
        tracked = cur
        pending = []
        return RoundScan(round: round, dirty: dirty, discarded: discarded, stats: stats)
    }

    /// The final round, target frozen: the same result as ``nextRound(ranges:removed:checkDiscards:fileContent:)``
    /// with the discard check, at a cost that follows what changed rather than
    /// the process's size.
    ///
    /// U = collectUnprotected(old): written pages and every unpopulated page,
    /// one bit test per entry. A page of `known` can stop being content only by
    /// becoming unpopulated (discards, THP zaps, reclaimed MADV_FREE pages:
    /// all in U; munmap is in `removed`) or, in a mapping with a file behind
    /// it, by becoming a clean page-cache page again (a discarded COW copy
    /// read back in through its uffd-wp marker, which leaves the page
    /// protected). So only E = U ∪ pending ∪ (`fileBacked` ∩ known) ∪ `fileContent`
    /// (within old) needs the exact populated walk; pages of `known` outside E
    /// are still content and unchanged (a protected page outside known and U
    /// is still what it was, not content). P = (known ∩ old \ E) ∪ populated(E) ∪
    /// populated(fresh); dirty, discarded and `known` follow as in nextRound.
    ///
    /// Nothing is re-protected: if the target runs again (an aborted
    /// cutover), the next round reports these written pages again, so a
    /// resend can repeat a page but never miss one.
    public func frozenRound(
        ranges: [AddressRange], removed: [AddressRange] = [], fileContent: [AddressRange] = [],
        fileBacked: [AddressRange] = []
    ) throws -> RoundScan {
        if round < 0 { return try initialRound(ranges: ranges, fileContent: fileContent, frozen: true) }
        let wasTracked = tracked
        var (stats, cur, fresh, old) = try splitLayout(ranges, removed: removed)
        let fileContent = fileContent.coalesced()
        if unprotectedSinceFrozenRoundZero {
            // Frozen since round 0, so nothing was written: protecting now is protecting then.
            try scanner.protectAll(old)
            stats += scanner.lastStats
            unprotectedSinceFrozenRoundZero = false
        }
        let unprotected = try scanner.collectUnprotected(old, alongside: helperScanner, minimumPages: splitWalkMinimumPages)
        stats += scanner.lastStats
        // Of the file-backed mappings only the COW copies in `known`: not the libraries' clean pages.
        let fileCopies = fileBacked.coalesced().intersecting(known)
        let examine = unprotected.union(pending).union(fileCopies).union(fileContent).intersecting(old)
        // `known` can hold a range per page (sparse memory): every step below
        // that touches all of it is skipped when what it would find is known.
        let knownExamined = known.intersecting(examine)
        // Only ambiguous pages inside `examine` are resolved: known ∩ examine stands for known.
        let care = knownExamined.union(unprotected).union(pending)
        let pExamined = try scanner.populated(examine, resolveWithin: care, fileContent: fileContent)
        stats += scanner.lastStats
        var pFresh: [AddressRange] = []
        if !fresh.isEmpty {
            pFresh = try scanner.populated(fresh, fileContent: fileContent)
            stats += scanner.lastStats
        }
        let p: [AddressRange]
        let knownLost: [AddressRange]  // known \ p
        if old == wasTracked {
            // known ⊆ tracked = old: only its part inside `examine` can differ in P.
            let kept = knownExamined == pExamined ? known : known.subtracting(examine).union(pExamined)
            p = kept.union(pFresh)
            knownLost = knownExamined.subtracting(pExamined).subtracting(pFresh)
        } else {
            p = known.intersecting(old).subtracting(examine).union(pExamined).union(pFresh)
            knownLost = known.subtracting(p)
        }
        let newlyRead = fileContent.isEmpty ? [] : pExamined.intersecting(fileContent).subtracting(known)
        let dirty = unprotected.intersecting(pExamined).union(pFresh).union(pending.intersecting(p)).union(newlyRead)
        let discarded = knownLost.union(pending.subtracting(p))
        stats.pagesScanned = cur.pageCount
        stats.dirtyPages = dirty.pageCount
        stats.discardedPages = discarded.pageCount
        round += 1
        tracked = cur
        known = p
        pending = []
        return RoundScan(round: round, dirty: dirty, discarded: discarded, stats: stats)
    }

    /// The round's layout against the tracked one: `fresh` (mapped since, or
    /// mapped again after `removed`) and `old` (tracked before and still
    /// mapped). New mappings are protected first, so a write after their
    /// populated read shows next round.
    private func splitLayout(_ ranges: [AddressRange], removed: [AddressRange])
        throws -> (stats: ScanStats, cur: [AddressRange], fresh: [AddressRange], old: [AddressRange])
    {
        var stats = ScanStats()
        let cur = ranges.coalesced()
        let alive = tracked.subtracting(removed.coalesced())
        let fresh = cur.subtracting(alive)
        if !fresh.isEmpty {
            try scanner.protectAll(fresh)
            stats += scanner.lastStats
        }
        return (stats, cur, fresh, cur.intersecting(alive))
    }

    /// Hands back a scan whose delivery failed: its dirty and discarded pages
    /// are re-examined and reported again (as dirty if populated, else
    /// discarded) by the next round.
    public func requeue(_ scan: RoundScan) {
        pending = pending.union(scan.dirty.coalesced()).union(scan.discarded.coalesced())
    }
}

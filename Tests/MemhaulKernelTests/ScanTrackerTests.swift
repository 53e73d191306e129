import MemhaulKernel
import MemhaulSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif
import MemhaulTestSupport

@Suite struct ScanTrackerTests {
    @Test func initialRoundReportsPopulatedPagesThenWrites() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 100, uffd: uffd)
        for i in [0, 1, 2, 50, 99] { a.write(i) }
        _ = a.read(60)  // zero page: not content
        let tracker = DirtyTracker(scanner: try selfScanner())
        let r0 = try tracker.initialRound(ranges: [a.range])
        #expect(r0.round == 0)
        #expect(a.indices(r0.dirty) == [0, 1, 2, 50, 99])
        #expect(r0.discarded.isEmpty)
        #expect(r0.stats.dirtyPages == 5)
        #expect(r0.stats.pagesScanned == 100)

        for i in [2, 3, 70] { a.write(i) }
        let r1 = try tracker.nextRound(ranges: [a.range])
        #expect(r1.round == 1)
        #expect(a.indices(r1.dirty) == [2, 3, 70])
        #expect(r1.discarded.isEmpty)
        let r2 = try tracker.nextRound(ranges: [a.range])
        #expect(r2.dirty.isEmpty && r2.discarded.isEmpty)
    }

    @Test func dontneedOfKnownPagesIsDiscardedNotDirty() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 1024, uffd: uffd)
        for i in 0..<600 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [a.range])
        // Known page discarded without a write; known page written then discarded;
        // a whole 2 MiB-table's worth discarded (the kernel may free the page table).
        a.discard(10..<11)
        a.write(20)
        a.discard(20..<21)
        a.write(30)
        a.discard(0..<512)
        a.write(5)  // refilled after the discard: dirty, not discarded
        let r1 = try tracker.nextRound(ranges: [a.range])
        #expect(a.indices(r1.dirty) == [5])
        #expect(a.indices(r1.discarded) == Set(0..<512).subtracting([5]))
        let r2 = try tracker.nextRound(ranges: [a.range])
        #expect(r2.dirty.isEmpty && r2.discarded.isEmpty)
        a.write(10)
        #expect(a.indices(try tracker.nextRound(ranges: [a.range]).dirty) == [10])
    }

    @Test func munmapViaRemovedIsDiscardedAndNewRangesArePopulatedDirty() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 64, uffd: uffd)
        for i in 0..<64 where i % 2 == 0 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [a.range])
        // b first, so it cannot reuse the addresses freed below.
        let b = try TestArea(pages: 16, uffd: uffd)
        let gone = a.pages(32..<64)
        munmap(a.base + 32 * 4096, 32 * 4096)
        for i in [1, 2, 15] { b.write(i) }
        a.write(1)
        let r1 = try tracker.nextRound(ranges: [a.pages(0..<32), b.range], removed: [gone])
        #expect(a.indices(r1.discarded) == Set(stride(from: 32, to: 64, by: 2)))
        #expect(a.indices(r1.dirty) == [1])
        #expect(b.indices(r1.dirty) == [1, 2, 15])
        // The new range is now protected: only new writes show.
        b.write(3)
        let r2 = try tracker.nextRound(ranges: [a.pages(0..<32), b.range])
        #expect(b.indices(r2.dirty) == [3] && a.indices(r2.dirty).isEmpty)
        #expect(r2.discarded.isEmpty)
    }

    @Test func regionMappedAgainAtARemovedAddressIsNew() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 8, uffd: uffd)
        for i in 0..<8 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [a.range])
        // Same addresses, new anonymous mapping (not write-protected yet).
        let again = mmap(a.base, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
        #expect(again == a.base)
        try uffd.register(a.base, 8 * 4096)
        a.write(2)
        let r1 = try tracker.nextRound(ranges: [a.range], removed: [a.range])
        #expect(a.indices(r1.dirty) == [2])
        #expect(a.indices(r1.discarded) == Set(0..<8).subtracting([2]))
        a.write(5)
        let r2 = try tracker.nextRound(ranges: [a.range])
        #expect(a.indices(r2.dirty) == [5])
    }

    @Test func requeueBringsBackDirtyAndDiscardedPages() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 64, uffd: uffd)
        for i in 0..<10 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        let r0 = try tracker.initialRound(ranges: [a.range])
        a.write(20)
        a.write(21)
        a.discard(3..<4)
        let r1 = try tracker.nextRound(ranges: [a.range])
        #expect(a.indices(r1.dirty) == [20, 21])
        #expect(a.indices(r1.discarded) == [3])
        tracker.requeue(r1)  // delivery failed
        // Meanwhile: 21 discarded (was dirty in the failed scan), 3 written again, 40 written.
        a.discard(21..<22)
        a.write(3)
        a.write(40)
        let r2 = try tracker.nextRound(ranges: [a.range])
        #expect(a.indices(r2.dirty) == [20, 3, 40])
        #expect(a.indices(r2.discarded) == [21])
        #expect(Set(a.indices(r2.dirty)).isDisjoint(with: a.indices(r2.discarded)))
        // Requeue of round 0 itself: everything populated comes back.
        tracker.requeue(r0)
        let r3 = try tracker.nextRound(ranges: [a.range])
        #expect(a.indices(r3.dirty) == Set(0..<10))
        #expect(a.indices(r3.discarded).isEmpty)
    }
}

extension ScanTrackerTests {
    @Test func roundsWithoutDiscardCheckDeferDiscardsToTheNextCheckingRound() throws {
        let uffd = try TestUffd()
        // Two whole 2 MiB page tables of its own, both made by the writes below: the
        // check-free scan reports an empty PTE of a uffd-wp range as written, so a
        // table another test's mapping created after the first round (this process's
        // memory is shared by parallel tests) would add never-written pages here.
        let a = try TestArea(pages: 1024, uffd: uffd, alignment: 2 << 20)
        for i in 0..<600 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [a.range])
        a.discard(10..<11)  // known, no write
        a.write(20)
        a.discard(20..<21)  // written then discarded
        a.write(700)
        let fast = try tracker.nextRound(ranges: [a.range], checkDiscards: false)
        #expect(a.indices(fast.dirty).isSuperset(of: [700]))
        #expect(a.indices(fast.dirty).isSubset(of: [20, 700, 10]))
        #expect(fast.discarded.isEmpty)
        a.write(30)
        let exact = try tracker.nextRound(ranges: [a.range])
        #expect(a.indices(exact.dirty) == [30])
        // 10 was never reported; 20 may have been sent as a (zero) dirty page: either way it is gone now.
        #expect(a.indices(exact.discarded).isSuperset(of: [10]))
        #expect(a.indices(exact.discarded).isSubset(of: [10, 20]))
        let quiet = try tracker.nextRound(ranges: [a.range])
        #expect(quiet.dirty.isEmpty && quiet.discarded.isEmpty)
    }

    /// The check-free scan reports an empty PTE of a uffd-wp range as written
    /// when another mapping made its page table after the first round: 268
    /// never-written pages of this area share a 2 MiB table with a neighbour.
    /// Whatever it reports, the next exact round settles it: each such page
    /// comes back discarded (so the receiver holds zeros, as the source does).
    @Test func holesOfATableANeighbourMadeAreSettledByTheNextExactRound() throws {
        let uffd = try TestUffd()
        // Three 2 MiB tables; the area is pages [268, 1292), its last 268 pages in table 3 with 244 unregistered ones.
        let mapping = try TestArea(pages: 1536, uffd: nil, alignment: 2 << 20)
        let areaStart = mapping.page(268).start
        try uffd.register(mapping.base + 268 * 4096, 1024 * 4096)
        let area = AddressRange(start: areaStart, pages: 1024)
        func indices(_ l: [AddressRange]) -> Set<Int> { Set(mapping.indices(l.intersecting([area])).map { $0 - 268 }) }
        for i in 0..<600 { mapping.write(268 + i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [area])
        mapping.write(1400)  // the neighbour: makes table 3
        mapping.write(268 + 700)
        let fast = try tracker.nextRound(ranges: [area], checkDiscards: false)
        let reported = indices(fast.dirty)
        #expect(reported.contains(700))
        #expect(reported.isSubset(of: Set(600..<1024)), "only pages never written before, or 700")
        let exact = try tracker.nextRound(ranges: [area])
        #expect(indices(exact.dirty).isEmpty)
        #expect(indices(exact.discarded) == reported.subtracting([700]), "each never-written page reported comes back discarded")
        let quiet = try tracker.nextRound(ranges: [area])
        #expect(quiet.dirty.isEmpty && quiet.discarded.isEmpty)
    }

    @Test func aFailedRoundLosesNothing() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 32, uffd: uffd)
        for i in 0..<4 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [a.range])
        a.write(9)
        a.write(2)
        a.discard(1..<2)
        // The populated step fails after collectWritten (one ioctl for this
        // area) has re-protected 2 and 9.
        let failed = Syscall.withFaults([.init("ioctl(PAGEMAP_SCAN)", .EIO, after: 1)]) {
            (try? tracker.nextRound(ranges: [a.range])) == nil
        }
        #expect(failed, "the injected pread failure should fail the round")
        let r = try tracker.nextRound(ranges: [a.range])
        #expect(a.indices(r.dirty) == [0, 2, 3, 9])
        #expect(a.indices(r.discarded).contains(1))
        #expect(a.indices(r.discarded).isDisjoint(with: [0, 2, 3, 9]))
        let r2 = try tracker.nextRound(ranges: [a.range])
        #expect(r2.dirty.isEmpty && r2.discarded.isEmpty)
    }
}

/// The scanner on another process's pagemap: the child registers its own
/// memory for async WP; we scan /proc/CHILD/pagemap and tell it what to write.
@Suite struct ScanForeignTests {
    @Test func scansAForeignProcessPagemap() throws {
        let (child, region) = try ForeignTarget.spawn(pages: 256, track: true)
        let scanner = try PagemapScanner(pid: child.pid, vectorCapacity: 4)
        let tracker = DirtyTracker(scanner: scanner)
        for i in [0, 7, 8, 100] { try ForeignTarget.command(child, "w \(i)") }
        let r0 = try tracker.initialRound(ranges: [region])
        func idx(_ l: [AddressRange]) -> Set<Int> {
            Set(l.intersecting([region]).flatMap { stride(from: $0.start, to: $0.end, by: 4096).map { Int(($0 - region.start) / 4096) } })
        }
        #expect(idx(r0.dirty) == [0, 7, 8, 100])
        var rng = TestRNG(seed: 99)
        for round in 1...3 {
            var want = Set<Int>()
            for _ in 0..<20 {
                let i = rng.below(256)
                try ForeignTarget.command(child, "w \(i)")
                want.insert(i)
            }
            try ForeignTarget.command(child, "d 100")
            let r = try tracker.nextRound(ranges: [region])
            #expect(idx(r.dirty) == want.subtracting([100]), "round \(round)")
            // Only round 1 finds 100 known; later it is already zero at the receiver.
            #expect(idx(r.discarded) == (round == 1 ? [100] : []), "round \(round)")
        }
        child.send("q")
        child.wait()
    }
}

/// Tracking must not allocate page tables for the empty parts of a mapping:
/// write-protecting holes fills them with markers (2 MiB of tables per GiB).
/// The mapping is a quiet child's (the foreign target), so that its VmPTE
/// changes only by the tracking: this process's own VmPTE moves with every
/// test that maps memory concurrently.
@Suite struct SparseMappingTests {
    func vmPTEKiB(_ pid: pid_t) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmPTE:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }

    @Test func roundsOverASparseMappingAllocateNoPageTables() throws {
        let pages = 1 << 20  // 4 GiB of address space
        let (child, region) = try ForeignTarget.spawn(pages: pages, track: true)
        func indices(_ l: [AddressRange]) -> Set<Int> {
            Set(l.intersecting([region]).flatMap { stride(from: $0.start, to: $0.end, by: 4096).map { Int(($0 - region.start) / 4096) } })
        }
        for i in stride(from: 0, to: pages, by: 65536) { try ForeignTarget.command(child, "w \(i)") }  // one page per 256 MiB
        let before = vmPTEKiB(child.pid)
        let tracker = DirtyTracker(scanner: try PagemapScanner(pid: child.pid, vectorCapacity: 1 << 16))
        let first = try tracker.initialRound(ranges: [region])
        #expect(indices(first.dirty).count == pages / 65536)
        try ForeignTarget.command(child, "w \(65536 + 1)")
        let next = try tracker.nextRound(ranges: [region])
        #expect(indices(next.dirty) == [65536 + 1])
        _ = try tracker.nextRound(ranges: [region])
        let grown = vmPTEKiB(child.pid) - before
        // Filling 4 GiB with markers would take 8 MiB of page tables.
        #expect(before >= 0 && grown < 512, "page tables grew by \(grown) KiB")
        child.send("q")
        child.wait()
    }
}

import MemhaulKernel
import MemhaulSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif
import MemhaulTestSupport

/// `DirtyTracker.frozenRound`: the final round's exact answer without the
/// populated walk of every page.
@Suite struct FrozenRoundTests {
    let madvPageout: Int32 = 21  // MADV_PAGEOUT (Linux 5.4); Glibc of Debian 12 lacks the name

    @Test func discardsOfEveryKindMadeJustBeforeTheFrozenRoundAreFound() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 2048, uffd: uffd, alignment: 2 << 20)
        for i in 0..<2048 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [a.range])
        #expect(try tracker.nextRound(ranges: [a.range]).dirty.isEmpty)

        a.discard(10..<11)                        // a known page
        a.write(20)
        a.discard(20..<21)                        // written, then discarded
        a.discard(512..<1024)                     // a whole page table's worth
        madvise(a.base + 1100 * 4096, 10 * 4096, MADV_FREE)
        madvise(a.base + 1100 * 4096, 10 * 4096, madvPageout)   // the lazily freed pages reclaimed
        a.discard(1200..<1201)
        _ = a.read(1200)                          // read back: the zero page, no content
        a.write(1500)
        a.write(1501)
        let expectedDiscards = Set([10, 20, 1200]).union(512..<1024).union(1100..<1110)
        let frozen = try tracker.frozenRound(ranges: [a.range])
        #expect(a.indices(frozen.dirty) == [1500, 1501])
        #expect(a.indices(frozen.discarded) == expectedDiscards)

        // Thawed again (an aborted cutover): nothing was re-protected, so the
        // next round sends the written pages again and loses nothing.
        a.write(1600)
        let next = try tracker.nextRound(ranges: [a.range])
        #expect(a.indices(next.dirty) == [1500, 1501, 1600])
        #expect(next.discarded.isEmpty)
        #expect(try tracker.nextRound(ranges: [a.range]).dirty.isEmpty)
    }

    /// Stop-and-copy's round 0 protects nothing (the target is frozen). If
    /// the target runs again, the next round reports every page, written or
    /// not, and the round after it only what was written since: nothing missed.
    @Test func aFrozenRoundZeroProtectsNothingAndTheNextRoundSendsEverything() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 64, uffd: uffd)
        for i in 0..<64 where i != 7 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        let first = try tracker.initialRound(ranges: [a.range], frozen: true)
        #expect(a.indices(first.dirty) == Set(0..<64).subtracting([7]))
        a.write(9)  // thawed (a resume that goes on pre-copying)
        #expect(a.indices(try tracker.nextRound(ranges: [a.range]).dirty) == Set(0..<64).subtracting([7]))
        a.write(11)
        #expect(a.indices(try tracker.nextRound(ranges: [a.range]).dirty) == [11])
        a.write(12)  // a write while thawed, then frozen for the cutover: the frozen round must see it
        #expect(a.indices(try tracker.frozenRound(ranges: [a.range]).dirty) == [12])
        // Resumed while still frozen: the frozen round protects what round 0
        // left unprotected and reports only the requeued pages; a thawed write after it is found alone.
        let c = try TestArea(pages: 64, uffd: uffd)
        for i in 0..<64 { c.write(i) }
        let stopAndCopy = DirtyTracker(scanner: try selfScanner())
        let round0 = try stopAndCopy.initialRound(ranges: [c.range], frozen: true)
        stopAndCopy.requeue(RoundScan(round: 0, dirty: [AddressRange(start: c.range.start, end: c.range.start + 4 * 4096)], discarded: [],
                                      stats: round0.stats))  // a chunk the break lost
        #expect(c.indices(try stopAndCopy.frozenRound(ranges: [c.range]).dirty) == [0, 1, 2, 3])
        c.write(40)  // released into pre-copy
        #expect(c.indices(try stopAndCopy.nextRound(ranges: [c.range]).dirty) == [40])
        // Protected from the start, the same first write is all the next round finds.
        let b = try TestArea(pages: 64, uffd: uffd)
        for i in 0..<64 { b.write(i) }
        let protected = DirtyTracker(scanner: try selfScanner())
        _ = try protected.initialRound(ranges: [b.range])
        b.write(9)
        #expect(b.indices(try protected.nextRound(ranges: [b.range]).dirty) == [9])
    }

    @Test func requeuedPagesAreExaminedAgain() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 64, uffd: uffd)
        for i in 0..<64 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [a.range])
        a.write(3)
        a.write(4)
        tracker.requeue(try tracker.nextRound(ranges: [a.range]))  // undelivered
        a.discard(4..<5)
        let frozen = try tracker.frozenRound(ranges: [a.range])
        #expect(a.indices(frozen.dirty) == [3])
        #expect(a.indices(frozen.discarded) == [4])
    }

    /// A private file mapping's COW copy, discarded and read back in: the page
    /// is the file's again, and still write-protected (its uffd-wp marker
    /// carried over), so only the exact walk of file-backed ranges sees it.
    @Test func aCopyTurnedBackIntoTheFilesPageIsDiscarded() throws {
        let dir = temporaryDirectory()
        defer { removeTree(dir) }
        let path = dir + "/file"
        let fd = open(path, O_RDWR | O_CREAT, 0o600)
        #expect(fd >= 0)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0x5A, count: 4 * 4096)
        #expect(write(fd, &bytes, bytes.count) == bytes.count)
        guard let m = mmap(nil, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw TestSetupError("mmap: \(Errno.current)")
        }
        defer { munmap(m, 4 * 4096) }
        let uffd = try TestUffd()
        try uffd.register(m, 4 * 4096)
        let base = UInt64(UInt(bitPattern: m))
        let range = AddressRange(start: base, pages: 4)
        let p = m.assumingMemoryBound(to: UInt8.self)
        p[0] = 1             // page 0: an anonymous copy (content)
        _ = p[4096]          // page 1: the file's page (not content)
        let tracker = DirtyTracker(scanner: try selfScanner())
        let first = try tracker.initialRound(ranges: [range])
        #expect(first.dirty == [AddressRange(start: base, pages: 1)])
        madvise(m, 4096, MADV_DONTNEED)
        #expect(p[0] == 0x5A)  // the file's byte again
        let frozen = try tracker.frozenRound(ranges: [range], fileBacked: [range])
        #expect(frozen.dirty.isEmpty)
        #expect(frozen.discarded == [AddressRange(start: base, pages: 1)])
    }

    @Test func aFrozenRoundOverASparseMappingAllocatesNoPageTables() throws {
        let pages = 1 << 20  // 4 GiB of address space
        let (child, region) = try ForeignTarget.spawn(pages: pages, track: true)
        defer { child.send("q"); child.wait() }
        for i in stride(from: 0, to: pages, by: 65536) { try ForeignTarget.command(child, "w \(i)") }
        let tracker = DirtyTracker(scanner: try PagemapScanner(pid: child.pid, vectorCapacity: 1 << 16))
        _ = try tracker.initialRound(ranges: [region])
        let before = SparseMappingTests().vmPTEKiB(child.pid)
        try ForeignTarget.command(child, "w 65537")
        try ForeignTarget.command(child, "d 131072")
        let frozen = try tracker.frozenRound(ranges: [region])
        #expect(frozen.dirty == [AddressRange(start: region.start + 65537 * 4096, pages: 1)])
        #expect(frozen.discarded == [AddressRange(start: region.start + 131072 * 4096, pages: 1)])
        let grown = SparseMappingTests().vmPTEKiB(child.pid) - before
        #expect(before >= 0 && grown < 512, "page tables grew by \(grown) KiB")
    }

    /// Memory with a hole every other page (the populated set is one range per
    /// page), the layout unchanged: the round finds its answer from the pages
    /// it examined, and `known` is the exact populated set afterwards; with a
    /// mapping added, the layout-change path gives the same answer.
    @Test func aSparsePopulatedSetIsUpdatedFromTheExaminedPagesAlone() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 1024, uffd: uffd)
        for i in stride(from: 0, to: 1024, by: 2) { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [a.range])
        #expect(try tracker.nextRound(ranges: [a.range]).dirty.isEmpty)
        var populated = Set(stride(from: 0, to: 1024, by: 2))

        let idle = try tracker.frozenRound(ranges: [a.range])
        #expect(idle.dirty.isEmpty && idle.discarded.isEmpty)
        #expect(a.indices(tracker.known) == populated)

        _ = try tracker.nextRound(ranges: [a.range])
        a.write(1)            // a hole filled
        a.write(600)          // a known page written
        a.discard(300..<301)  // a known page gone
        a.write(1023)         // the last hole
        populated.formUnion([1, 1023])
        populated.remove(300)
        let frozen = try tracker.frozenRound(ranges: [a.range])
        #expect(a.indices(frozen.dirty) == [1, 600, 1023])
        #expect(a.indices(frozen.discarded) == [300])
        #expect(a.indices(tracker.known) == populated)

        // Thawed (an aborted cutover), the layout changed: a mapping added,
        // the area's tail gone from it (the other path).
        let b = try TestArea(pages: 8, uffd: uffd)
        b.write(3)
        a.discard(2..<3)
        a.write(5)
        populated.remove(2)
        populated.insert(5)
        let head = a.pages(0..<1000)
        let grown = try tracker.frozenRound(ranges: [head, b.range].sorted())
        #expect(a.indices(grown.dirty.intersecting([a.range])) == [1, 5, 600])
        #expect(b.indices(grown.dirty.intersecting([b.range])) == [3])
        #expect(a.indices(grown.discarded) == Set([2]).union(populated.filter { $0 >= 1000 }))
        #expect(a.indices(tracker.known.intersecting([a.range])) == populated.filter { $0 < 1000 })
    }
}

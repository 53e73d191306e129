@testable import MemhaulKernel
import MemhaulSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif
import MemhaulTestSupport

/// The frozen round's walk for written pages in two halves on two threads
/// (`PagemapScanner.collectUnprotected(_:alongside:minimumPages:)`): the same
/// answer as one walk, wherever the cut falls.
@Suite struct SplitWalkTests {
    let p = PageSize.bytes

    @Test func halvesCutAtHalfThePagesInsideOrBetweenRanges() {
        let a = AddressRange(start: 0x10000, end: 0x10000 + 4 * p)
        let b = AddressRange(start: 0x40000, end: 0x40000 + 6 * p)
        let (lo, hi) = PagemapScanner.halves([a, b], pages: 10)
        #expect(lo == [a, AddressRange(start: b.start, end: b.start + p)], "5 pages below the cut, inside b")
        #expect(hi == [AddressRange(start: b.start + p, end: b.end)])
        let even = PagemapScanner.halves([a, AddressRange(start: b.start, end: b.start + 4 * p)], pages: 8)
        #expect(even.lower == [a] && even.upper == [AddressRange(start: b.start, end: b.start + 4 * p)], "a cut on a range boundary")
        let one = PagemapScanner.halves([AddressRange(start: 0, end: 2 * p)], pages: 2)
        #expect(one.lower == [AddressRange(start: 0, end: p)] && one.upper == [AddressRange(start: p, end: 2 * p)])
    }

    /// Written pages on both sides of the cut, at the cut, and across it:
    /// the split walk reports exactly what one walk does.
    @Test func aSplitWalkFindsWhatOneWalkFinds() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 4096, uffd: uffd, alignment: 2 << 20)
        let b = try TestArea(pages: 1024, uffd: uffd, alignment: 2 << 20)
        for i in 0..<4096 { a.write(i) }
        for i in 0..<1024 { b.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        _ = try tracker.initialRound(ranges: [a.range, b.range])
        #expect(try tracker.nextRound(ranges: [a.range, b.range]).dirty.isEmpty)
        // 5120 pages: the cut lies at page 2560 of a.
        let written = [0, 1, 700, 2558, 2559, 2560, 2561, 4095]
        for i in written { a.write(i) }
        for i in [0, 512, 1023] { b.write(i) }
        let ranges = [a.range, b.range].coalesced()
        let single = try tracker.scanner.collectUnprotected(ranges)
        let helper = PagemapScanner(pagemap: tracker.scanner.pagemap)
        let split = try tracker.scanner.collectUnprotected(ranges, alongside: helper, minimumPages: 0)
        #expect(split == single)
        #expect(a.indices(split.intersecting([a.range])) == Set(written))
        #expect(b.indices(split.intersecting([b.range])) == [0, 512, 1023])
        #expect(tracker.scanner.lastStats.ioctls >= 2, "both halves' ioctls counted")
    }

    /// Through the tracker: the frozen round with the split walk forced equals
    /// the frozen round of a tracker that walks once.
    @Test func theFrozenRoundWithASplitWalkIsExact() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 2048, uffd: uffd, alignment: 2 << 20)
        for i in 0..<2048 { a.write(i) }
        let tracker = DirtyTracker(scanner: try selfScanner())
        tracker.splitWalkMinimumPages = 0
        _ = try tracker.initialRound(ranges: [a.range])
        #expect(try tracker.nextRound(ranges: [a.range]).dirty.isEmpty)
        a.write(5)
        a.write(1023)
        a.write(1024)
        a.write(2000)
        a.discard(1500..<1501)
        let frozen = try tracker.frozenRound(ranges: [a.range])
        #expect(a.indices(frozen.dirty) == [5, 1023, 1024, 2000])
        #expect(a.indices(frozen.discarded) == [1500])
    }
}

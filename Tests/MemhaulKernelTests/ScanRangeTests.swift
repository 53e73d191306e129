@testable import MemhaulKernel
import Testing
import MemhaulSystem

@Suite struct ScanRangeTests {
    func r(_ a: UInt64, _ b: UInt64) -> AddressRange { AddressRange(start: a * 4096, end: b * 4096) }

    @Test func basics() {
        let x = r(2, 5)
        #expect(x.pageCount == 3)
        #expect(x.byteCount == 3 * 4096)
        #expect(x.contains(2 * 4096) && !x.contains(5 * 4096))
        #expect(r(1, 2) < r(2, 3))
        #expect(PageSize.matchesSystem)
    }

    @Test func coalesceMergesTouchingAndSorts() {
        #expect([r(5, 6), r(1, 2), r(2, 3), r(7, 7), r(2, 4)].coalesced() == [r(1, 4), r(5, 6)])
    }

    @Test func setAlgebraMatchesBruteForce() {
        var rng = TestRNG(seed: 42)
        func random() -> [AddressRange] {
            var out: [AddressRange] = []
            for _ in 0..<rng.below(12) {
                let a = UInt64(rng.below(60))
                out.append(r(a, a + UInt64(rng.below(8))))
            }
            return out.coalesced()
        }
        func pages(_ l: [AddressRange]) -> Set<UInt64> {
            Set(l.flatMap { stride(from: $0.start, to: $0.end, by: 4096) })
        }
        for _ in 0..<500 {
            let a = random()
            let b = random()
            #expect(pages(a.union(b)) == pages(a).union(pages(b)))
            #expect(pages(a.subtracting(b)) == pages(a).subtracting(pages(b)))
            #expect(pages(a.intersecting(b)) == pages(a).intersection(pages(b)))
            #expect(a.union(b) == a.union(b).coalesced())
            #expect(a.intersecting(b) == a.intersecting(b).coalesced())
            #expect(a.subtracting(b) == a.subtracting(b).coalesced())
        }
    }

    /// A sparse process's populated set against a few changed pages: the
    /// merges skip long stretches of the large list (galloping), and must
    /// still find every overlap, at either end and between the skips.
    @Test func setAlgebraOfALargeListAgainstASmallOneMatchesBruteForce() {
        var rng = TestRNG(seed: 7)
        func pages(_ l: [AddressRange]) -> Set<UInt64> {
            Set(l.flatMap { stride(from: $0.start, to: $0.end, by: 4096) })
        }
        for _ in 0..<40 {
            var large: [AddressRange] = []
            var at: UInt64 = UInt64(rng.below(3))
            for _ in 0..<(500 + rng.below(1500)) {
                let length = UInt64(1 + rng.below(3))
                large.append(r(at, at + length))
                at += length + UInt64(1 + rng.below(3))
            }
            var small: [AddressRange] = []
            for _ in 0..<rng.below(6) {
                let a = UInt64(rng.below(Int(at) + 4))
                small.append(r(a, a + UInt64(rng.below(12))))
            }
            small = small.coalesced()
            for (a, b) in [(large, small), (small, large)] {
                #expect(pages(a.intersecting(b)) == pages(a).intersection(pages(b)))
                #expect(pages(a.subtracting(b)) == pages(a).subtracting(pages(b)))
                #expect(a.intersecting(b) == a.intersecting(b).coalesced())
                #expect(a.subtracting(b) == a.subtracting(b).coalesced())
            }
        }
    }
}

@Suite struct CoveredBytesTests {
    func r(_ a: UInt64, _ b: UInt64) -> AddressRange { AddressRange(start: a << 12, end: b << 12) }

    @Test func countsTheHintInsideEachRange() {
        let ranges = [r(0, 10), r(20, 30), r(40, 50)]
        let hint = [r(5, 25), r(29, 41), r(60, 70)]
        #expect(PagemapScanner.coveredBytes(of: ranges, by: hint) == [5 << 12, 6 << 12, 1 << 12])
        #expect(PagemapScanner.coveredBytes(of: ranges, by: []) == [0, 0, 0])
        #expect(PagemapScanner.coveredBytes(of: [r(0, 100)], by: ranges) == [30 << 12])
    }
}

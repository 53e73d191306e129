@testable import MemhaulKernel
import Testing

@Suite struct ScanRangeTests {
    func r(_ a: UInt64, _ b: UInt64) -> PageRange { PageRange(start: a * 4096, end: b * 4096) }

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
        func random() -> [PageRange] {
            var out: [PageRange] = []
            for _ in 0..<rng.below(12) {
                let a = UInt64(rng.below(60))
                out.append(r(a, a + UInt64(rng.below(8))))
            }
            return out.coalesced()
        }
        func pages(_ l: [PageRange]) -> Set<UInt64> {
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
}

@Suite struct CoveredBytesTests {
    func r(_ a: UInt64, _ b: UInt64) -> PageRange { PageRange(start: a << 12, end: b << 12) }

    @Test func countsTheHintInsideEachRange() {
        let ranges = [r(0, 10), r(20, 30), r(40, 50)]
        let hint = [r(5, 25), r(29, 41), r(60, 70)]
        #expect(PagemapScanner.coveredBytes(of: ranges, by: hint) == [5 << 12, 6 << 12, 1 << 12])
        #expect(PagemapScanner.coveredBytes(of: ranges, by: []) == [0, 0, 0])
        #expect(PagemapScanner.coveredBytes(of: [r(0, 100)], by: ranges) == [30 << 12])
    }
}

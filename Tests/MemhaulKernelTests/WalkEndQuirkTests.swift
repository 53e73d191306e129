import Glibc
import MemhaulSystem
import Testing
@testable import MemhaulKernel

/// Linux (seen on 6.18) returns a stale `walk_end` from PAGEMAP_SCAN once its
/// 512-entry bounce buffer has filled in an earlier chunk of the same call,
/// although the walk reached the end. Resuming from it re-reported the last
/// chunk out of order; the scanner must return each page once, in order.
@Suite struct WalkEndQuirkTests {
    @Test(arguments: [100, 600, 5000])
    func manyRegionsComeBackOnceAndSorted(regions: Int) throws {
        let pages = regions * 3
        let length = pages * 4096
        let base = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        defer { munmap(base, length) }
        madvise(base, length, MADV_NOHUGEPAGE)
        // Populate two pages of every three: `regions` separate runs.
        var expected: [PageRange] = []
        let start = UInt64(UInt(bitPattern: base))
        for i in 0..<regions {
            let p = base + i * 3 * 4096
            memset(p, 1, 2 * 4096)
            expected.append(PageRange(start: start + UInt64(i * 3 * 4096), pages: 2))
        }
        let scanner = try PagemapScanner(pagemap: FileDescriptor.open("/proc/self/pagemap", O_RDONLY))
        var seen: [PageRange] = []
        try scanner.scan([PageRange(start: start, pages: pages)], anyOf: [.present], returnMask: [.present]) { s, e, _ in
            seen.append(PageRange(start: s, end: e))
        }
        // Each run exactly once, ascending: no re-reported chunk.
        #expect(seen == expected)
        #expect(try scanner.populated([PageRange(start: start, pages: pages)]) == expected)
    }
}

import CMemhaulLinux
import MemhaulKernel
import MemhaulSystem
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif
import MemhaulTestSupport

/// PAGEMAP_SCAN on the test process's own memory (/proc/self/pagemap).
@Suite struct ScanTests {
    @Test func collectWrittenReportsExactlyTheWrittenPagesAcrossVMAs() throws {
        let uffd = try TestUffd()
        let areas = try (0..<3).map { _ in try TestArea(pages: 300, uffd: uffd) }
        // Content before tracking starts must not count as written.
        for a in areas { for i in stride(from: 0, to: a.pages, by: 3) { a.write(i) } }
        let scanner = try selfScanner()
        try scanner.protectAll(areas.map(\.range))
        #expect(try scanner.collectWritten(areas.map(\.range)).isEmpty)

        var rng = TestRNG(seed: 7)
        for round in 0..<4 {
            var expected: [Set<Int>] = []
            for a in areas {
                var set = Set<Int>()
                for _ in 0..<rng.below(120) {
                    let i = rng.below(a.pages)
                    a.write(i)
                    set.insert(i)
                }
                expected.append(set)
            }
            let got = try scanner.collectWritten(areas.map(\.range))
            for (a, want) in zip(areas, expected) {
                #expect(a.indices(got) == want, "round \(round)")
            }
            #expect(got == got.coalesced())
            #expect(scanner.lastStats.pagesScanned == 900)
            // Re-protected: nothing left.
            #expect(try scanner.collectWritten(areas.map(\.range)).isEmpty)
        }
    }

    @Test func subRangeScanLeavesTheRestForLater() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 64, uffd: uffd)
        let scanner = try selfScanner()
        try scanner.protectAll([a.range])
        for i in [1, 10, 20, 21, 40, 63] { a.write(i) }
        let first = try scanner.collectWritten([a.pages(16..<41)])
        #expect(a.indices(first) == [20, 21, 40])
        let rest = try scanner.collectWritten([a.range])
        #expect(a.indices(rest) == [1, 10, 63])
    }

    @Test func populatedExcludesZeroPageAndUnpopulatedMarkers() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 32, uffd: uffd)
        a.write(0)
        _ = a.read(1)  // maps the shared zero page
        a.write(2)
        let scanner = try selfScanner()
        try scanner.protectAll([a.range])
        #expect(a.indices(try scanner.populated([a.range])) == [0, 2])
        // Unpopulated pages now hold uffd-wp markers, reported as swapped by the kernel.
        var swappedSeen = false
        try scanner.scan([a.range], anyOf: [.swapped], returnMask: [.swapped]) { _, _, _ in swappedSeen = true }
        #expect(swappedSeen, "markers are expected to show as PAGE_IS_SWAPPED")
        a.write(5)
        a.discard(2..<3)
        #expect(a.indices(try scanner.populated([a.range])) == [0, 5])
        // Restricted resolution never drops present pages.
        #expect(a.indices(try scanner.populated([a.range], resolveWithin: [])) == [0, 5])
    }

    @Test(arguments: [1, 2, 3])
    func tinyVectorResumesFromWalkEndWithIdenticalResults(capacity: Int) throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 700, uffd: uffd)
        let b = try TestArea(pages: 50, uffd: uffd)
        let big = try selfScanner()
        let tiny = try selfScanner(vectorCapacity: capacity)
        try big.protectAll([a.range, b.range])
        var rng = TestRNG(seed: UInt64(capacity))
        var want = Set<Int>()
        for _ in 0..<260 {
            let i = rng.below(a.pages)
            let run = 1 + rng.below(4)
            for j in i..<min(a.pages, i + run) { a.write(j); want.insert(j) }
        }
        b.write(0)
        b.write(49)
        let ranges = [a.range, b.range]
        // Non-consuming scans: raw regions must be sorted and disjoint, same pages as the big vector.
        var raw: [AddressRange] = []
        try tiny.scan(ranges, mask: .written, returnMask: .written) { s, e, _ in raw.append(AddressRange(start: s, end: e)) }
        for (x, y) in zip(raw, raw.dropFirst()) { #expect(x.end <= y.start, "overlap or disorder: \(x) \(y)") }
        #expect(tiny.lastStats.ioctls > 1)
        var reference: [AddressRange] = []
        try big.scan(ranges, mask: .written, returnMask: .written) { s, e, _ in reference.append(AddressRange(start: s, end: e)) }
        #expect(raw.coalesced() == reference.coalesced())
        #expect(raw.pageCount == reference.pageCount)

        // max_pages resumption too.
        tiny.maxPagesPerCall = UInt64(capacity + 1)
        var limited: [AddressRange] = []
        try tiny.scan(ranges, mask: .written, returnMask: .written) { s, e, _ in limited.append(AddressRange(start: s, end: e)) }
        #expect(limited.pageCount == reference.pageCount)
        #expect(limited.coalesced() == reference.coalesced())

        // Consuming scan with the tiny vector: exact, and everything re-protected.
        let got = try tiny.collectWritten(ranges)
        #expect(a.indices(got) == want)
        #expect(b.indices(got) == [0, 49])
        #expect(try big.collectWritten(ranges).isEmpty)
    }

    @Test func transparentHugePageReportsOnlyInsideTheWrittenHugePage() throws {
        let uffd = try TestUffd()
        let huge = 512
        let a = try TestArea(pages: 2 * huge, uffd: uffd, thp: true, alignment: 2 << 20)
        for i in 0..<a.pages { a.write(i) }
        var hugeSeen = false
        let scanner = try selfScanner()
        try scanner.scan([a.range], anyOf: [.huge], returnMask: [.huge]) { _, _, _ in hugeSeen = true }
        try scanner.protectAll([a.range])
        a.write(huge + 7)
        let got = a.indices(try scanner.collectWritten([a.range]))
        #expect(got.contains(huge + 7))
        #expect(got.allSatisfy { $0 >= huge && $0 < 2 * huge }, "pages outside the written huge page")
        #expect(got.count <= huge)
        #expect(try scanner.collectWritten([a.range]).isEmpty)
        a.write(3)
        a.write(2 * huge - 1)
        let second = a.indices(try scanner.collectWritten([a.range]))
        #expect(second.contains(3) && second.contains(2 * huge - 1))
        print("THP in use: \(hugeSeen); first scan reported \(got.count) pages")
    }

    @Test func injectedENOTTYSaysTheKernelLacksPagemapScan() throws {
        let uffd = try TestUffd()
        let a = try TestArea(pages: 4, uffd: uffd)
        let scanner = try selfScanner()
        let error = Syscall.withFaults([.init("ioctl(PAGEMAP_SCAN)", .ENOTTY)]) {
            #expect(throws: PagemapScanError.self) { try scanner.collectWritten([a.range]) }
        }
        guard case .unsupportedKernel = error else {
            Issue.record("wrong error \(String(describing: error))")
            return
        }
        #expect(error!.description.contains("6.7"))
        #expect(error!.description.contains("ioctl(PAGEMAP_SCAN)"))
    }

    @Test func unregisteredRangeIsAClearError() throws {
        let a = try TestArea(pages: 4, uffd: nil)
        a.write(0)
        let scanner = try selfScanner()
        let error = #expect(throws: PagemapScanError.self) { try scanner.protectAll([a.range]) }
        guard case .notRegisteredForAsyncWP(_, let sys) = error else {
            Issue.record("wrong error \(String(describing: error))")
            return
        }
        #expect(sys.errno == .EPERM)
        #expect(error!.description.contains("not registered"))
        #expect(throws: PagemapScanError.self) { try scanner.collectWritten([AddressRange(start: a.start + 1, end: a.start + 4096)]) }
    }

    /// Six threads write while rounds run. Each write is logged with the
    /// global sequence loaded just before the store (then the sequence is
    /// bumped); each round records the sequence loaded when it ended. A round
    /// whose end value is below a write's value provably ended before that
    /// store, so the page's last write must be reported by a round whose end
    /// value is not below it: a lost update fails.
    /// Besides hot pages, each thread writes its own cold pages exactly once,
    /// spread over many rounds, so any report dropped by a round is detected.
    @Test func concurrentWritersLoseNoUpdate() throws {
        let threads = 6
        let hot = 64
        let coldPerThread = 3000
        let uffd = try TestUffd()
        let a = try TestArea(pages: hot + threads * coldPerThread, uffd: uffd)
        let scanner = try selfScanner(vectorCapacity: 64)  // small vector: resumption under contention
        let tracker = DirtyTracker(scanner: scanner)
        _ = try tracker.initialRound(ranges: [a.range])

        final class Shared: @unchecked Sendable {  // atomics plus per-thread logs touched only by their thread until join
            let seq = Atomic<Int>(0)
            let stop = Atomic<Bool>(false)
            let coldDone = Atomic<Int>(0)
            var logs: [[(page: Int, seq: Int)]]
            init(_ n: Int) { logs = Array(repeating: [], count: n) }
        }
        let shared = Shared(threads)
        let box = RoundsBox(tracker)
        runThreads(threads + 1) { t in
            if t == threads {
                // The scanner thread: rounds until every cold page is written, then a few more.
                var extra = 0
                while extra < 3 {
                    guard let scan = try? box.tracker.nextRound(ranges: [a.range]) else {
                        box.failed.store(true, ordering: .sequentiallyConsistent)
                        break
                    }
                    box.append(shared.seq.load(ordering: .sequentiallyConsistent), a.indices(scan.dirty))
                    if shared.coldDone.load(ordering: .sequentiallyConsistent) == threads { extra += 1 }
                }
                shared.stop.store(true, ordering: .sequentiallyConsistent)
                return
            }
            var rng = TestRNG(seed: UInt64(t + 1) * 77)
            var log: [(page: Int, seq: Int)] = []
            var cold = 0
            var n = 0
            func logged(_ page: Int) {
                let pre = shared.seq.load(ordering: .sequentiallyConsistent)
                a.write(page, UInt8(truncatingIfNeeded: t + 1))
                shared.seq.add(1, ordering: .sequentiallyConsistent)
                log.append((page, pre))
            }
            while !shared.stop.load(ordering: .sequentiallyConsistent) {
                logged(rng.below(hot))
                n += 1
                if cold < coldPerThread && n % 16 == 0 {
                    logged(hot + t * coldPerThread + cold)
                    cold += 1
                    if cold == coldPerThread { shared.coldDone.add(1, ordering: .sequentiallyConsistent) }
                }
            }
            shared.logs[t] = log
        }
        let scannerFailed = box.failed.load(ordering: .sequentiallyConsistent)
        #expect(!scannerFailed)
        // Final round, writers stopped.
        let final = try tracker.nextRound(ranges: [a.range])
        let rounds = box.rounds + [(endSeq: shared.seq.load(ordering: .sequentiallyConsistent), dirty: a.indices(final.dirty))]

        var last: [Int: Int] = [:]
        for log in shared.logs { for w in log { last[w.page] = max(last[w.page] ?? -1, w.seq) } }
        #expect(last.count == hot + threads * coldPerThread)
        var lost: [Int] = []
        for (page, s) in last {
            // Rounds not provably over before the store.
            if !rounds.contains(where: { $0.endSeq >= s && $0.dirty.contains(page) }) { lost.append(page) }
        }
        #expect(lost.isEmpty, "lost updates on pages \(lost.sorted().prefix(20))")
        #expect(try tracker.nextRound(ranges: [a.range]).dirty.isEmpty)
        print("concurrent: \(shared.seq.load(ordering: .relaxed)) writes, \(rounds.count) rounds")
    }
}

final class RoundsBox: @unchecked Sendable {  // used only by the scanner thread, read after join
    let tracker: DirtyTracker
    init(_ t: DirtyTracker) { tracker = t }
    var rounds: [(endSeq: Int, dirty: Set<Int>)] = []
    let failed = Atomic<Bool>(false)
    func append(_ s: Int, _ d: Set<Int>) { rounds.append((s, d)) }
}

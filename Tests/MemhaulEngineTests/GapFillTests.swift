import Foundation
import Glibc
import MemhaulImage
import MemhaulSystem
import MemhaulWire
import Testing
import MemhaulTestSupport

/// `ImageStore.writeRuns` fills gaps of at most `gapFillBytes` between a
/// batch's runs with zeros, and only where that cannot cover content: the
/// span in place, in one region file, nothing of it written this round.
@Suite struct GapFillTests {
    let a: UInt64 = 0x4000_0000
    static let page = 4096
    var p: UInt64 { UInt64(Self.page) }
    var layout: [ImageRegion] { [ImageRegion(start: a, end: a + 64 * p, protection: [.read, .write], name: "")] }

    /// Bytes of `pages` pages, page i filled with `tag &+ i`.
    func pages(_ count: Int, tag: UInt8) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count * Self.page)
        for i in out.indices { out[i] = tag &+ UInt8(truncatingIfNeeded: i / Self.page) }
        return out
    }

    func read(_ store: ImageStore) throws -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * Self.page, alignment: 4096)
        defer { buffer.deallocate() }
        try store.read(at: a, into: buffer)
        return Array(buffer)
    }

    func dataRuns(_ directory: String) throws -> [Range<UInt64>] {
        let mem = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix("mem-") }
        try #require(mem.count == 1, "\(mem)")
        let fd = open(directory + "/" + mem[0], O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        return try MemhaulEngineTests.dataRuns(of: fd)
    }

    /// Pages `pages` of the image read as `bytes`.
    func expect(_ image: [UInt8], pages: Range<Int>, equal bytes: ArraySlice<UInt8>, _ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(Array(image[(pages.lowerBound * Self.page)..<(pages.upperBound * Self.page)]) == Array(bytes), comment, sourceLocation: sourceLocation)
    }

    func withStore(_ body: (ImageStore, String) throws -> Void) throws {
        let root = temporaryDirectory("gapfill", in: "/var/tmp")
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/img", migrationID: "gapfill")
        defer { store.close() }
        try body(store, root + "/img")
    }

    /// Runs at pages 0–1, 3–4, 7–8 and 10: gaps of 1, 2 and 1 page are
    /// filled; a larger one (3 pages, 4–7) stays a hole.
    @Test func gapsOfUpToTwoPagesAreFilledLargerOnesStayHoles() throws {
        try withStore { store, dir in
            #expect(store.gapFillBytes == 2 * p)
            try store.beginRound(1, layout: layout)
            let runs = [PageRun(start: a, pageCount: 2), PageRun(start: a + 3 * p, pageCount: 2),
                        PageRun(start: a + 8 * p, pageCount: 2), PageRun(start: a + 11 * p, pageCount: 1)]
            let bytes = pages(7, tag: 1)
            let filled = try bytes.withUnsafeBytes { try store.writeRuns(runs, $0) }
            #expect(filled == 2 * p, "the gaps at page 2 and page 10")
            let info = try store.commitRound()
            #expect(info.filledBytes == 2 * p)
            var expected = [UInt8](repeating: 0, count: 64 * Self.page)
            var o = 0
            for run in runs {
                let at = Int(run.start - a), n = Int(run.pageCount) * Self.page
                expected.replaceSubrange(at..<(at + n), with: bytes[o..<(o + n)])
                o += n
            }
            #expect(try read(store) == expected)
            #expect(try dataRuns(dir) == [0..<(5 * p), (8 * p)..<(12 * p)], "the 3-page gap is a hole")
        }
    }

    /// A page inside the span that already holds content keeps its bytes, and
    /// the span is not filled at all: one written by an earlier batch of the
    /// round (in place), or one committed before (round 2: journaled).
    @Test(arguments: [false, true]) func contentInsideTheSpanIsNeverZeroed(committedBefore: Bool) throws {
        try withStore { store, _ in
            try store.beginRound(1, layout: layout)
            let earlier = pages(1, tag: 0xA0)
            try earlier.withUnsafeBytes { try store.writePages(at: a + 2 * p, $0) }
            if committedBefore {
                try store.commitRound()
                try store.beginRound(2, layout: layout)
            }
            let runs = [PageRun(start: a, pageCount: 2), PageRun(start: a + 3 * p, pageCount: 2)]
            let bytes = pages(4, tag: 1)
            let filled = try bytes.withUnsafeBytes { try store.writeRuns(runs, $0) }
            #expect(filled == 0)
            try store.commitRound()
            let image = try read(store)
            expect(image, pages: 2..<3, equal: earlier[...], "the earlier page survives")
            expect(image, pages: 0..<2, equal: bytes[0..<(2 * Self.page)])
            expect(image, pages: 3..<5, equal: bytes[(2 * Self.page)...])
        }
    }

    /// Off (0), or runs out of order: stored run by run, unfilled, exact.
    @Test func offOrOutOfOrderRunsAreStoredRunByRun() throws {
        for (fill, reversed) in [(UInt64(0), false), (2 * p, true)] {
            try withStore { store, dir in
                store.gapFillBytes = fill
                try store.beginRound(1, layout: layout)
                var runs = [PageRun(start: a, pageCount: 2), PageRun(start: a + 3 * p, pageCount: 2)]
                var bytes = pages(4, tag: 1)
                if reversed {
                    runs.reverse()
                    bytes = Array(bytes[(2 * Self.page)...]) + Array(bytes[0..<(2 * Self.page)])
                }
                let filled = try bytes.withUnsafeBytes { try store.writeRuns(runs, $0) }
                #expect(filled == 0)
                try store.commitRound()
                let image = try read(store)
                let forward = pages(4, tag: 1)
                #expect(Array(image[0..<(2 * Self.page)]) == Array(forward[0..<(2 * Self.page)]))
                #expect(Array(image[(2 * Self.page)..<(3 * Self.page)]) == [UInt8](repeating: 0, count: Self.page))
                #expect(Array(image[(3 * Self.page)..<(5 * Self.page)]) == Array(forward[(2 * Self.page)...]))
                #expect(try dataRuns(dir) == [0..<(2 * p), (3 * p)..<(5 * p)], "fill \(fill), reversed \(reversed)")
            }
        }
    }

    /// An I/O error in the vector write aborts the round, as a per-run write does.
    @Test func aFailedVectorWriteAbortsTheRound() throws {
        try withStore { store, dir in
            try store.beginRound(1, layout: layout)
            try pages(1, tag: 9).withUnsafeBytes { try store.writePages(at: a + 20 * p, $0) }  // creates the region file, outside the span
            let mem = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("mem-") }
            try #require(mem.count == 1)
            let runs = [PageRun(start: a, pageCount: 2), PageRun(start: a + 3 * p, pageCount: 2)]
            let bytes = pages(4, tag: 1)
            #expect(throws: ImageError.self) {
                try Syscall.withFaults([.init("pwritev(\(dir)/\(mem[0]))", .EIO)]) { () throws -> UInt64 in
                    try bytes.withUnsafeBytes { try store.writeRuns(runs, $0) }
                }
            }
            #expect(throws: ImageError.self, "the round is gone") { try store.commitRound() }
        }
    }
}

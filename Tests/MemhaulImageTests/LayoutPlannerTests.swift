import MemhaulSystem
import Testing
@testable import MemhaulImage

/// The layout planner on values alone: no image, no files.
@Suite struct LayoutPlannerTests {
    let a: UInt64 = 0x5000_0000
    let b: UInt64 = 0x5100_0000
    let p = imagePageSize

    func plan(_ regions: [ImageRegion], _ segments: [Segment] = [], _ files: [FileEntry] = [], next: UInt32 = 0) throws -> LayoutPlan {
        LayoutPlanner.plan(try LayoutPlanner.validated(regions), segments: segments, files: files, nextFileID: next)
    }

    @Test func aFirstLayoutIsAllFreshInNewFiles() throws {
        let x = try plan([region(b, pages: 2), region(a, pages: 4)])
        #expect(x.files == [FileEntry(id: 0, base: a, size: 4 * p), FileEntry(id: 1, base: b, size: 2 * p)])
        #expect(x.segments == [Segment(start: a, end: a + 4 * p, fileID: 0), Segment(start: b, end: b + 2 * p, fileID: 1)])
        #expect(x.fresh == [AddressRange(start: a, end: a + 4 * p), AddressRange(start: b, end: b + 2 * p)])
        #expect(x.grown.isEmpty)
        #expect(x.nextFileID == 2)
    }

    @Test func growthExtendsTheFileAndIsGrownNotFresh() throws {
        let x = try plan(
            [region(a, pages: 16)], [Segment(start: a, end: a + 8 * p, fileID: 0)], [FileEntry(id: 0, base: a, size: 8 * p)],
            next: 1)
        #expect(x.files == [FileEntry(id: 0, base: a, size: 16 * p)])
        #expect(x.segments == [Segment(start: a, end: a + 16 * p, fileID: 0)])
        #expect(x.grown == [AddressRange(start: a + 8 * p, end: a + 16 * p)])
        #expect(x.fresh.isEmpty)
        #expect(x.nextFileID == 1)
    }

    @Test func splitsMergesAndHolesKeepAddressesInTheirFile() throws {
        let committed = [Segment(start: a, end: a + 16 * p, fileID: 0)]
        let files = [FileEntry(id: 0, base: a, size: 16 * p)]
        let split = try plan([region(a, pages: 4), region(a + 4 * p, pages: 12)], committed, files, next: 1)
        #expect(split.segments == committed && split.files == files && split.fresh.isEmpty && split.grown.isEmpty)
        let holed = try plan([region(a, pages: 4), region(a + 8 * p, pages: 8)], committed, files, next: 1)
        #expect(holed.segments == [Segment(start: a, end: a + 4 * p, fileID: 0), Segment(start: a + 8 * p, end: a + 16 * p, fileID: 0)])
        #expect(holed.files == files)
        let shrunk = try plan([region(a, pages: 4)], committed, files, next: 1)
        #expect(shrunk.files == [FileEntry(id: 0, base: a, size: 4 * p)])
    }

    @Test func aRegionThatMovesGetsANewFileAndIdsAreNeverReused() throws {
        let x = try plan(
            [region(b, pages: 4)], [Segment(start: a, end: a + 8 * p, fileID: 3)], [FileEntry(id: 3, base: a, size: 8 * p)],
            next: 4)
        #expect(x.files == [FileEntry(id: 4, base: b, size: 4 * p)])
        #expect(x.fresh == [AddressRange(start: b, end: b + 4 * p)])
        #expect(x.nextFileID == 5)
    }

    @Test func invalidLayoutsAreRefused() {
        #expect(throws: ImageError.self) { try LayoutPlanner.validated([ImageRegion(start: a + 1, end: a + p)]) }
        #expect(throws: ImageError.self) { try LayoutPlanner.validated([region(a, pages: 4), region(a + p, pages: 1)]) }
        #expect(throws: ImageError.self) { try LayoutPlanner.validated([ImageRegion(start: a, end: a)]) }
        #expect(throws: ImageError.self) { try LayoutPlanner.validated([ImageRegion(start: 1 << 57, end: (1 << 57) + 4096)]) }
    }
}

import Foundation
import Glibc
import MemhaulSystem
import Testing
@testable import MemhaulImage
import MemhaulTestSupport

/// Write-once: pages at addresses that hold no committed content (vacant
/// ranges) go in place, not through the journal; a round that does not
/// commit leaves the image at its last commit, byte for byte. And fallocate
/// runs per range, not per page.
@Suite struct ImageInPlaceTests {
    let a: UInt64 = 0x7000_0000
    let pages = 64

    func commit(_ store: ImageStore) throws {
        try store.commitRound(deferApply: true)
        try store.finishApply()
    }

    /// Round 1 writes pages 0..<4 of a 64-page region (a commit chunk); the rest stays vacant.
    func firstChunk(_ dir: String, _ model: inout MemoryModel) throws -> ImageStore {
        let store = try ImageStore.create(directory: dir, migrationID: "inplace")
        store.checkpointThreshold = .max  // keep journals pending: recovery replays them, then punches
        let layout = [region(a, pages: pages)]
        model.setLayout(layout)
        try store.beginRound(1, layout: layout)
        let bytes = pageBytes(1, pages: 4)
        try store.write(a, bytes)
        model.write(a, bytes)
        try commit(store)
        return store
    }

    func expectCommitted(_ image: CommittedImage, _ model: MemoryModel) throws {
        #expect(try image.readBytes(a, pages * 4096) == model.bytes(a, a + UInt64(pages * 4096)))
    }

    @Test func laterChunksWriteVacantPagesOnce() throws {
        let root = temporaryDirectory("inplace")
        defer { removeTree(root) }
        var model = MemoryModel()
        let store = try firstChunk(root + "/img", &model)
        try store.beginRound(2, layout: model.layout)
        let chunk = pageBytes(2, pages: 32)
        try store.write(a + 8 * 4096, chunk)
        model.write(a + 8 * 4096, chunk)
        try commit(store)
        let info = try #require(store.lastCommit)
        #expect(info.directBytes == 32 * 4096)
        #expect(info.record.journalBytes < 4096, "vacant pages must not be journaled")
        #expect(try store.matches(model))
        // Written pages hold committed content now: rewriting them is journaled.
        try store.beginRound(3, layout: model.layout)
        let again = pageBytes(3, pages: 1)
        try store.write(a + 8 * 4096, again)
        model.write(a + 8 * 4096, again)
        try commit(store)
        #expect(try #require(store.lastCommit).record.journalBytes > 4096)
        #expect(try store.matches(model))
        store.close()
        let reopened = try ImageStore.open(directory: root + "/img")
        #expect(try reopened.matches(model))
    }

    @Test(arguments: [false, true])
    func aCrashMidChunkLeavesTheLastCommitByteForByte(journaledToo: Bool) throws {
        let root = temporaryDirectory("inplace")
        defer { removeTree(root) }
        let dir = root + "/img"
        var model = MemoryModel()
        let store = try firstChunk(dir, &model)
        let committedStored = try store.storedBytes()
        // Round 2 writes vacant pages in place (and, journaledToo, rewrites and
        // zeroes committed ones), then the receiver dies before its commit.
        try store.beginRound(2, layout: model.layout)
        try store.write(a + 8 * 4096, pageBytes(20, pages: 32))
        try store.write(a + 50 * 4096, pageBytes(21, pages: 2))
        try store.zeroPages(AddressRange(start: a + 9 * 4096, end: a + 10 * 4096))
        if journaledToo {
            try store.write(a + 4096, pageBytes(22, pages: 1))
            try store.zeroPages(AddressRange(start: a + 2 * 4096, end: a + 3 * 4096))
        }
        // Reads are committed content, even while the in-place bytes sit in the files.
        try expectCommitted(store, model)
        store.testStopBeforeCommit()
        store.testCrash()

        // A reader of the crashed image, before any recovery.
        let reader = try ImageReader.open(directory: dir)
        try expectCommitted(reader, model)
        #expect(try reader.computeDigest() == model.digest())
        #expect(try reader.info().storedPages * 4096 == committedStored)
        reader.close()

        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.committedRound == 1)
        #expect(try reopened.matches(model))
        #expect(try reopened.storedBytes() == committedStored, "the in-place pages are holes again")
        // And the next chunk writes there in place again.
        try reopened.beginRound(2, layout: model.layout)
        let chunk = pageBytes(23, pages: 8)
        try reopened.write(a + 40 * 4096, chunk)
        model.write(a + 40 * 4096, chunk)
        try commit(reopened)
        #expect(try #require(reopened.lastCommit).directBytes == 8 * 4096)
        #expect(try reopened.matches(model))
    }

    @Test func anAbortedChunkPunchesItsInPlacePages() throws {
        let root = temporaryDirectory("inplace")
        defer { removeTree(root) }
        var model = MemoryModel()
        let store = try firstChunk(root + "/img", &model)
        let committedStored = try store.storedBytes()
        try store.beginRound(2, layout: model.layout)
        try store.write(a + 16 * 4096, pageBytes(30, pages: 16))
        store.abortRound()
        #expect(try store.matches(model))
        #expect(try store.storedBytes() == committedStored)
        // The next chunk writes on both sides of them: the pages between leave
        // the vacant set with the writes, and must read as zeros (holes) then.
        try store.beginRound(2, layout: model.layout)
        for page in [15, 33] {
            let bytes = pageBytes(UInt64(31 + page), pages: 1)
            try store.write(a + UInt64(page) * 4096, bytes)
            model.write(a + UInt64(page) * 4096, bytes)
        }
        try commit(store)
        #expect(try store.matches(model))
        store.close()
        #expect(try ImageStore.open(directory: root + "/img").matches(model))
    }

    @Test func fallocateRunsPerRangeNotPerPage() throws {
        let root = temporaryDirectory("inplace")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "falloc")
        store.checkpointThreshold = .max
        let n = 128
        let layout = [region(a, pages: 2 * n)]
        var model = MemoryModel()
        model.setLayout(layout)
        let file = ImagePaths(store.directory).regionFile(1)
        // More than a handful of fallocate calls on the region file fails the test.
        try Syscall.withFaults([.init("fallocate(\(file))", .EIO, after: 4)]) { () throws in
            // Round 1 (fresh): data and zero pages alternate; the zero pages are
            // holes already and cost nothing.
            try store.beginRound(1, layout: layout)
            for i in 0..<n {
                let bytes = pageBytes(UInt64(i + 1), pages: 1)
                try store.write(a + UInt64(2 * i) * 4096, bytes)
                model.write(a + UInt64(2 * i) * 4096, bytes)
                try store.zeroPages(AddressRange(start: a + UInt64(2 * i + 1) * 4096, end: a + UInt64(2 * i + 2) * 4096))
            }
            try commit(store)
            // Round 2 rewrites every data page (journaled): one reservation, not 128.
            try store.beginRound(2, layout: layout)
            for i in 0..<n {
                let bytes = pageBytes(UInt64(1000 + i), pages: 1)
                try store.write(a + UInt64(2 * i) * 4096, bytes)
                model.write(a + UInt64(2 * i) * 4096, bytes)
            }
            try commit(store)
        }
        #expect(try store.matches(model))
    }
}

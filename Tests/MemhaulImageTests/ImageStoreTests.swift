import Foundation
import Glibc
import MemhaulDigest
import MemhaulSystem
import Testing
@testable import MemhaulImage
import MemhaulTestSupport

@Suite struct ImageStoreTests {
    let a: UInt64 = 0x5555_0000_0000
    let b: UInt64 = 0x7fff_f000_0000

    @Test func roundsSurviveReopenWithExactBytes() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/m1"
        var model = MemoryModel()
        do {
            let store = try ImageStore.create(directory: dir, migrationID: "m1")
            #expect(store.committedRound == nil)
            let layout = [region(b, pages: 16, [.read], "[stack]"), region(a, pages: 64, [.read, .write], "[heap]")]
            try store.beginRound(1, layout: layout)
            model.setLayout(layout)
            let first = pageBytes(1, pages: 10)
            try store.write(a + 4096, first)
            model.write(a + 4096, first)
            let second = pageBytes(2, pages: 16)
            try store.write(b, second)
            model.write(b, second)
            let info = try store.commitRound()
            #expect(info.record.dataPages == 26)
            #expect(store.committedRound == 1)
            #expect(try store.matches(model))

            try store.beginRound(2, layout: layout)
            let third = pageBytes(3, pages: 3)
            try store.write(a + 8192, third)
            model.write(a + 8192, third)
            // Not visible before the commit.
            #expect(try store.readBytes(a + 8192, 4096) == Array(first[4096..<8192]))
            try store.commitRound()
            #expect(try store.matches(model))
            store.close()
        }
        var st = stat()
        #expect(stat(dir, &st) == 0 && st.st_mode & 0o777 == 0o700)
        #expect(stat(dir + "/manifest", &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(memFiles(dir).allSatisfy { name in stat(dir + "/" + name, &st) == 0 && st.st_mode & 0o777 == 0o600 })

        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.recovery == .clean)
        #expect(reopened.committedRound == 2)
        #expect(reopened.rounds.map(\.round) == [1, 2])
        #expect(reopened.migrationID == "m1")
        #expect(try reopened.matches(model))
        // Sparse: only written pages take space.
        let info = try reopened.info()
        #expect(info.storedPages == 26)
        #expect(info.logicalBytes == 80 * 4096)
        #expect(info.diskBytes < 40 * 4096)
        // Unwritten pages read as zeros; a read across two regions is refused at the gap.
        #expect(try reopened.readBytes(a + 60 * 4096, 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(throws: ImageError.outsideLayout(a + 64 * 4096)) { _ = try reopened.readBytes(a + 63 * 4096, 8192) }
    }

    /// A background apply is freed once joined: its work item held it in a
    /// cycle, so every deferred apply leaked (the receiver fuzz smoke ran out
    /// of memory at 2 GiB after 2,080 inputs; 339 MiB with the cycle broken).
    @Test func aJoinedBackgroundApplyIsFreed() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/m", migrationID: "m")
        let layout = [region(a, pages: 16, [.read, .write], "")]
        for round in UInt32(1)...3 {
            try store.beginRound(round, layout: layout)
            try store.write(a, pageBytes(UInt64(round), pages: 4))
            try store.commitRound(deferApply: true)
            try store.finishApply()  // starts the apply in the background
        }
        store.close()  // joins it
        let alive = store.testLastApplyIsAlive
        #expect(!alive, "the joined apply is still alive")
    }

    @Test func layoutChangesKeepContentByAddress() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/lc", migrationID: "lc")
        var model = MemoryModel()
        var round: UInt32 = 0
        func commit(_ layout: [ImageRegion], writes: [(UInt64, Int)]) throws {
            round += 1
            try store.beginRound(round, layout: layout)
            model.setLayout(layout)
            for (address, pages) in writes {
                let bytes = pageBytes(UInt64(round) << 32 | address, pages: pages)
                try store.write(address, bytes)
                model.write(address, bytes)
            }
            try store.commitRound()
            #expect(try store.matches(model), "round \(round)")
        }
        let c = a + 0x100_0000
        try commit([region(a, pages: 32), region(c, pages: 8)], writes: [(a, 32), (c, 8)])
        // Grow a (heap growth: extends its file), shrink c.
        try commit([region(a, pages: 48), region(c, pages: 4)], writes: [(a + 40 * 4096, 8)])
        #expect(memFiles(store.directory).count == 2)
        // Split a in two (mprotect), remove c, add d.
        let d = a + 0x200_0000
        try commit(
            [region(a, pages: 10, [.read]), region(a + 10 * 4096, pages: 38), region(d, pages: 4)], writes: [(d, 4)])
        #expect(memFiles(store.directory).count == 2)
        // c comes back: new pages read as zeros, not the old bytes.
        try commit([region(a, pages: 48), region(c, pages: 8), region(d, pages: 4)], writes: [(c + 4096, 1)])
        #expect(try store.readBytes(c, 4096) == [UInt8](repeating: 0, count: 4096))
        // a shrinks then grows again in one step: the dropped tail reads zeros.
        try commit([region(a, pages: 16), region(c, pages: 8), region(d, pages: 4)], writes: [])
        try commit([region(a, pages: 48), region(c, pages: 8), region(d, pages: 4)], writes: [])
        #expect(try store.readBytes(a + 20 * 4096, 4096) == [UInt8](repeating: 0, count: 4096))
        // Move: d disappears, the same-sized e appears elsewhere.
        let e = a + 0x300_0000
        try commit([region(a, pages: 48), region(c, pages: 8), region(e, pages: 4)], writes: [(e, 2)])
        // Merge adjacent regions into one.
        try commit([region(a, pages: 48), region(a + 48 * 4096, pages: 16), region(c, pages: 8)], writes: [(a + 47 * 4096, 2)])
        try commit([region(a, pages: 64), region(c, pages: 8)], writes: [])
        // A hole unmapped in the middle, then the region regrows into it from
        // below: the regrown pages extend the same file and must read zeros.
        try commit([region(a, pages: 64), region(c, pages: 8)], writes: [(a, 64)])
        try commit([region(a, pages: 10), region(a + 20 * 4096, pages: 44), region(c, pages: 8)], writes: [])
        try commit([region(a, pages: 15), region(c, pages: 8)], writes: [])
        #expect(try store.readBytes(a + 10 * 4096, 5 * 4096) == [UInt8](repeating: 0, count: 5 * 4096))
        store.close()
        let reopened = try ImageStore.open(directory: root + "/lc")
        #expect(try reopened.matches(model))
        #expect(reopened.rounds.filter(\.layoutChanged).count == 11)
    }

    @Test func aFourGiBLayoutCostsOnlyWhatWasSent() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/big", migrationID: "big")
        let layout = [ImageRegion(start: a, end: a + (4 << 30))]
        try store.beginRound(1, layout: layout)
        for at in [0, 1 << 20, (4 << 30) - 4096] { try store.write(a + UInt64(at), pageBytes(UInt64(at), pages: 1)) }
        try store.commitRound()
        try store.beginRound(2, layout: layout)
        try store.write(a + (2 << 30), pageBytes(2, pages: 1))  // journaled: the address is committed
        try store.commitRound()
        let info = try store.info()
        #expect(info.logicalBytes == 4 << 30)
        #expect(info.storedPages == 4)
        #expect(info.diskBytes < 256 << 10, "\(info.diskBytes) bytes on disk")
        #expect(try store.readBytes(a + (4 << 30) - 4096, page) == pageBytes(UInt64((4 << 30) - 4096), pages: 1))
        #expect(try store.readBytes(a + (2 << 30), page) == pageBytes(2, pages: 1))
    }

    @Test func zeroAndDiscardPunchHoles() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/z", migrationID: "z")
        var model = MemoryModel()
        let layout = [region(a, pages: 256)]
        try store.beginRound(1, layout: layout)
        model.setLayout(layout)
        let bytes = pageBytes(9, pages: 256)
        try store.write(a, bytes)
        model.write(a, bytes)
        try store.commitRound()
        #expect(try store.info().storedPages == 256)

        try store.beginRound(2, layout: layout)
        let zero = AddressRange(start: a + 16 * 4096, end: a + 80 * 4096)
        let discard = AddressRange(start: a + 100 * 4096, end: a + 200 * 4096)
        try store.zeroPages(zero)
        try store.discardPages(discard)
        // Discards may name pages outside the layout (already unmapped): ignored.
        try store.discardPages(AddressRange(start: a + 250 * 4096, end: a + 300 * 4096))
        // A write after a zero in the same round wins (records apply in order).
        let late = pageBytes(10, pages: 2)
        try store.write(a + 20 * 4096, late)
        model.clear(zero)
        model.clear(discard)
        model.clear(AddressRange(start: a + 250 * 4096, end: a + 256 * 4096))
        model.write(a + 20 * 4096, late)
        let info = try store.commitRound()
        #expect(info.record.zeroPages == 64)
        #expect(info.record.discardedPages == 150)
        #expect(try store.matches(model))
        #expect(try store.info().storedPages == 256 - 64 - 100 - 6 + 2)
        #expect(throws: ImageError.outsideLayout(a + 256 * 4096)) {
            try store.beginRound(3, layout: layout)
            try store.zeroPages(AddressRange(start: a + 255 * 4096, end: a + 257 * 4096))
        }
    }

    @Test func misuseIsRefusedWithTypedErrors() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/r", migrationID: "r")
        let one = pageBytes(1, pages: 1)
        #expect(throws: ImageError.noOpenRound) { try store.write(a, one) }
        #expect(throws: ImageError.self) { try store.beginRound(1, layout: [region(a, pages: 4), region(a + 8192, pages: 4)]) }
        #expect(throws: ImageError.self) { try store.beginRound(1, layout: [ImageRegion(start: a + 1, end: a + 4097)]) }
        // Above any user address space: refused, no overflow (found by Fuzz/run --target receiver).
        #expect(throws: ImageError.self) { try store.beginRound(1, layout: [ImageRegion(start: 0, end: 1 << 63)]) }
        #expect(throws: ImageError.self) { try store.beginRound(1, layout: [ImageRegion(start: 0xffff_ffff_ffff_e000, end: 0xffff_ffff_ffff_f000)]) }
        try store.beginRound(5, layout: [region(a, pages: 4), region(b, pages: 4)])
        #expect(throws: ImageError.roundAlreadyOpen(5)) { try store.beginRound(6, layout: []) }
        #expect(throws: ImageError.outsideLayout(a + 4 * 4096)) { try store.write(a + 4 * 4096, one) }
        #expect(throws: ImageError.outsideLayout(a + 4 * 4096)) { try store.write(a + 3 * 4096, pageBytes(2, pages: 2)) }
        #expect(throws: ImageError.outsideLayout(a - 4096)) { try store.write(a - 4096, one) }
        #expect(throws: ImageError.unaligned(a + 12)) { try store.write(a + 12, one) }
        #expect(throws: ImageError.unaligned(a + 100)) { try store.write(a, Array(one[0..<100])) }
        #expect(throws: ImageError.unaligned(a + 1)) { try store.zeroPages(AddressRange(start: a + 1, end: a + 4096)) }
        // The round survives refused calls.
        try store.write(a, one)
        try store.commitRound()
        #expect(throws: ImageError.staleRound(round: 5, committed: 5)) { try store.beginRound(5, layout: []) }
        #expect(throws: ImageError.noOpenRound) { try store.commitRound() }
        #expect(try store.readBytes(a, 4096) == one)
    }

    @Test func abortedRoundLeavesTheCommittedOne() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/ab"
        let store = try ImageStore.create(directory: dir, migrationID: "ab")
        var model = MemoryModel()
        let layout = [region(a, pages: 8)]
        try store.beginRound(1, layout: layout)
        model.setLayout(layout)
        let one = pageBytes(1, pages: 8)
        try store.write(a, one)
        model.write(a, one)
        try store.commitRound()
        try store.beginRound(2, layout: [region(a, pages: 8), region(b, pages: 8)])
        try store.write(a, pageBytes(2, pages: 8))
        try store.write(b, pageBytes(3, pages: 8))
        store.abortRound()
        #expect(store.openRound == nil)
        #expect(try store.matches(model))
        // An uncommitted round left on disk (a crash before commit) is discarded on open.
        try store.beginRound(3, layout: [region(b, pages: 8)])
        try store.write(b, pageBytes(4, pages: 8))
        store.testStopBeforeCommit()
        store.close()
        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.recovery == .discardedJournal(round: 3))
        #expect(reopened.committedRound == 1)
        #expect(try reopened.matches(model))
        #expect(memFiles(dir).count == 1)
    }

    /// Pages new to the layout are written in place before the commit; an
    /// aborted or crashed round must leave no trace of them.
    @Test func inPlaceWritesOfAnUnfinishedRoundVanish() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/ip"
        var store = try ImageStore.create(directory: dir, migrationID: "ip")
        let one = pageBytes(1, pages: 4)
        try store.beginRound(1, layout: [region(a, pages: 4)])
        try store.write(a, one)
        let info = try store.commitRound()
        #expect(info.directBytes == UInt64(4 * page))
        #expect(info.record.journalBytes < 200)
        let zeros = [UInt8](repeating: 0, count: 4 * page)
        for crash in [false, true] {
            // Grow the region (same file extended) and add another (new file), write both, then abort or crash.
            try store.beginRound(2, layout: [region(a, pages: 8), region(b, pages: 4)])
            try store.write(a + 4 * 4096, pageBytes(2, pages: 4))
            try store.write(b, pageBytes(3, pages: 4))
            if crash {
                store.testStopBeforeCommit()
                store.close()
                store = try ImageStore.open(directory: dir)
                #expect(store.recovery == .discardedJournal(round: 2))
            } else {
                store.abortRound()
            }
            #expect(memFiles(dir).count == 1)
            // The same addresses come back without writes: they must read zeros.
            try store.beginRound(2, layout: [region(a, pages: 8), region(b, pages: 4)])
            try store.commitRound()
            #expect(try store.readBytes(a, 4 * page) == one)
            #expect(try store.readBytes(a + 4 * 4096, 4 * page) == zeros, "crash \(crash)")
            #expect(try store.readBytes(b, 4 * page) == zeros, "crash \(crash)")
            try store.beginRound(3, layout: [region(a, pages: 4)])
            try store.commitRound()
            store.close()
            store = try ImageStore.open(directory: dir)
            try store.beginRound(1000, layout: [region(a, pages: 4)])
            store.abortRound()
            // Rounds must increase; restart the numbering on a fresh image for the second pass.
            store.close()
            removeTree(dir)
            store = try ImageStore.create(directory: dir, migrationID: "ip")
            try store.beginRound(1, layout: [region(a, pages: 4)])
            try store.write(a, one)
            try store.commitRound()
        }
    }

    @Test func committedButUnappliedRoundIsReappliedOnOpen() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/ra"
        var model = MemoryModel()
        do {
            let store = try ImageStore.create(directory: dir, migrationID: "ra")
            let layout = [region(a, pages: 16)]
            try store.beginRound(1, layout: layout)
            model.setLayout(layout)
            let bytes = pageBytes(1, pages: 16)
            try store.write(a, bytes)
            model.write(a, bytes)
            try store.commitRound()
            let layout2 = [region(a, pages: 8), region(b, pages: 4)]
            try store.beginRound(2, layout: layout2)
            model.setLayout(layout2)
            let more = pageBytes(2, pages: 4)
            try store.write(b, more)
            model.write(b, more)
            try store.zeroPages(AddressRange(start: a, end: a + 4096))
            model.clear(AddressRange(start: a, end: a + 4096))
            store.testStopAfterPublish = true
            #expect(throws: ImageError.self) { try store.commitRound() }
            store.close()
        }
        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.recovery == .reappliedJournal(round: 2))
        #expect(reopened.committedRound == 2)
        #expect(try reopened.matches(model))
        reopened.close()
        // Applying twice changes nothing (idempotent): reopen again.
        let again = try ImageStore.open(directory: dir)
        #expect(again.recovery == .clean)
        #expect(try again.matches(model))
    }

    /// Digest v2 classifies pages by content: a stored all-zero page and a hole
    /// digest alike, and the stored digest keeps its version across a reopen
    /// (manifest 2.1). The cancellation hook stops the walk.
    @Test func digestV2ClassifiesByContentAndKeepsItsVersion() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let layout = [region(a, pages: 64)]
        let content = pageBytes(3, pages: 1)
        let zero = [UInt8](repeating: 0, count: page)
        var digests: [MemoryDigest] = []
        for stored in [false, true] {
            let store = try ImageStore.create(directory: root + "/s\(stored)", migrationID: "s")
            try store.beginRound(1, layout: layout)
            try store.write(a, content)
            if stored { try store.write(a + UInt64(page), zero) }  // present, all zero
            try store.write(a + UInt64(2 * page), content)
            try store.commitRound()
            digests.append(try store.computeDigest(version: .v2))
            store.close()
        }
        #expect(digests[0] == digests[1])
        #expect(digests[0].version == .v2)
        let d = MemoryDigester(version: .v2)
        d.beginRegion(start: a, end: a + 64 * UInt64(page))
        content.withUnsafeBytes { d.update($0) }
        d.updateZeros(count: page)
        content.withUnsafeBytes { d.update($0) }
        d.updateZeros(count: 61 * page)
        #expect(d.finalize() == digests[0], "the image side and the digester agree")

        let store = try ImageStore.open(directory: root + "/strue")
        try store.beginRound(2, layout: layout)
        try store.commitRound(final: true, digest: digests[1])
        store.close()
        let reopened = try ImageStore.open(directory: root + "/strue")
        defer { reopened.close() }
        #expect(reopened.finalDigest == digests[1])
        #expect(reopened.finalDigest?.version == .v2)
        #expect(try reopened.computeDigest(version: .v2) == digests[1])
        #expect(try reopened.computeDigest(version: .v1) != digests[1])
        #expect(throws: ImageError.self) { try reopened.computeDigest(version: .v2, isCancelled: { true }) }
    }

    @Test func digestEqualsAnIndependentDigestAndFinalCommitStoresIt() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/d", migrationID: "d")
        var model = MemoryModel()
        // Big sparse region: holes are fed as zeros.
        let layout = [region(a, pages: 4096), region(b, pages: 3)]
        try store.beginRound(1, layout: layout)
        model.setLayout(layout)
        for (i, at) in [0, 1, 1000, 2047, 4095].enumerated() {
            let bytes = pageBytes(UInt64(i + 7), pages: 1)
            try store.write(a + UInt64(at * page), bytes)
            model.write(a + UInt64(at * page), bytes)
        }
        let expected = model.digest()
        try store.commitRound(final: true, digest: expected)
        #expect(try store.computeDigest() == expected)
        #expect(store.finalDigest == expected)
        #expect(store.state == .complete)
        #expect(throws: ImageError.closedImage(.complete)) { try store.beginRound(2, layout: layout) }
        // An empty layout digests to XXH3-128 of nothing.
        let empty = try ImageStore.create(directory: root + "/e", migrationID: "e")
        #expect(try empty.computeDigest() == independentDigest([]) { _, _ in [] })
    }

    @Test func markFailedKeepsTheLastCommittedRound() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/f"
        let store = try ImageStore.create(directory: dir, migrationID: "f")
        try store.beginRound(1, layout: [region(a, pages: 2)])
        let bytes = pageBytes(5, pages: 2)
        try store.write(a, bytes)
        try store.commitRound()
        try store.beginRound(2, layout: [region(a, pages: 2)])
        try store.markFailed(reason: "sender vanished")
        #expect(store.state == .failed)
        #expect(throws: ImageError.closedImage(.failed)) { try store.beginRound(3, layout: []) }
        store.close()
        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.state == .failed)
        #expect(reopened.failureReason == "sender vanished")
        #expect(reopened.committedRound == 1)
        #expect(try reopened.readBytes(a, 8192) == bytes)
    }

    @Test func imagesAreLockedAndIndependent() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let one = try ImageStore.create(directory: try ImageStore.directory(root: root, migrationID: "one"), migrationID: "one")
        let two = try ImageStore.create(directory: root + "/two", migrationID: "two")
        #expect(throws: ImageError.locked(directory: root + "/one")) { _ = try ImageStore.open(directory: root + "/one") }
        #expect(throws: ImageError.alreadyExists(directory: root + "/one")) {
            _ = try ImageStore.create(directory: root + "/one", migrationID: "one")
        }
        #expect(throws: ImageError.invalidMigrationID("../x")) { _ = try ImageStore.directory(root: root, migrationID: "../x") }
        #expect(throws: ImageError.notAnImage(directory: root + "/none")) { _ = try ImageStore.open(directory: root + "/none") }
        // Interleaved rounds of two migrations.
        try one.beginRound(1, layout: [region(a, pages: 4)])
        try two.beginRound(1, layout: [region(a, pages: 4)])
        try one.write(a, pageBytes(1, pages: 4))
        try two.write(a, pageBytes(2, pages: 4))
        try two.commitRound()
        try one.commitRound()
        #expect(try one.readBytes(a, 4 * page) == pageBytes(1, pages: 4))
        #expect(try two.readBytes(a, 4 * page) == pageBytes(2, pages: 4))
        one.close()
        let again = try ImageStore.open(directory: root + "/one")
        #expect(again.committedRound == 1)
    }
}

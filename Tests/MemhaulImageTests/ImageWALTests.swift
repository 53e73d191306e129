import Foundation
import Glibc
import MemhaulSystem
import Testing
@testable import MemhaulImage
import MemhaulTestSupport

/// The write-ahead log: several committed journals pending at once, checkpoints,
/// and recovery that replays them in order.
@Suite struct ImageWALTests {
    let a: UInt64 = 0x5000_0000
    let b: UInt64 = 0x5100_0000

    func journals(_ dir: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("journal-") }.sorted()
    }

    func journalName(_ round: UInt32) -> String { "journal-" + String(format: "%010u", round) }

    /// The manifest on disk (not the store's copy).
    func diskManifest(_ dir: String) throws -> Manifest {
        try Manifest.decode(readWholeFile(dir + "/manifest"), file: dir + "/manifest")
    }

    /// Commits as the receiver does: deferred apply, then finishApply.
    func commit(_ store: ImageStore) throws {
        try store.commitRound(deferApply: true)
        try store.finishApply()
    }

    /// Rounds that overwrite, shrink and regrow a region (its regrown pages
    /// must read zeros), and move a region to a new file after a journaled write
    /// to its old one (the old write must not reach the new file).
    func runLayoutRounds(_ store: ImageStore, _ model: inout MemoryModel) throws {
        func round(_ k: UInt32, _ layout: [ImageRegion], _ body: () throws -> Void) throws {
            try store.beginRound(k, layout: layout)
            model.setLayout(layout)
            try body()
            try commit(store)
        }
        func write(_ address: UInt64, _ seed: UInt64, _ pages: Int) throws {
            let bytes = pageBytes(seed, pages: pages)
            try store.write(address, bytes)
            model.write(address, bytes)
        }
        let a16 = [region(a, pages: 16)]
        try round(1, a16) { try write(a, 1, 16) }  // new file: in place
        try round(2, a16) { try write(a, 2, 8) }  // journaled
        try round(3, [region(a, pages: 8)]) {}  // pages 8-15 leave the layout
        try round(4, a16) { try write(a + 12 * 4096, 4, 2) }  // regrown in the same file: journaled, rest zeros
        try round(5, a16 + [region(b, pages: 4)]) {
            try write(b, 5, 4)  // new file: in place
            try store.zeroPages(AddressRange(start: a, end: a + 4096))
            model.clear(AddressRange(start: a, end: a + 4096))
        }
        try round(6, a16 + [region(b, pages: 4)]) { try write(b, 6, 1) }  // journaled into b's file
        try round(7, a16) {}  // b leaves
        try round(8, a16 + [region(b, pages: 4)]) { try write(b + 4096, 8, 1) }  // b back, in a new file
        try round(9, a16) {
            try write(a + 3 * 4096, 9, 2)
            try store.discardPages(AddressRange(start: a + 14 * 4096, end: a + 15 * 4096))
            model.clear(AddressRange(start: a + 14 * 4096, end: a + 15 * 4096))
        }
        try round(10, a16 + [region(b, pages: 4)]) {}
    }

    @Test(arguments: [false, true])
    func crashWithPendingJournalsReopensAtTheLastCommit(appliesLost: Bool) throws {
        let root = temporaryDirectory("wal")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "wal")
        store.checkpointThreshold = .max
        store.testSkipApply = appliesLost
        var model = MemoryModel()
        try runLayoutRounds(store, &model)
        #expect(store.pendingJournals == Array(1...10))
        #expect(store.checkpointedRound == nil)
        if !appliesLost { #expect(try store.matches(model)) }
        #expect(journals(dir).count == 10)
        store.testCrash()

        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.recovery == .reappliedJournal(round: 10))
        #expect(reopened.replayedJournals == Array(1...10))
        #expect(reopened.committedRound == 10)
        #expect(reopened.checkpointedRound == 10)
        #expect(reopened.pendingJournals.isEmpty)
        #expect(journals(dir).isEmpty)
        #expect(try reopened.matches(model))
        #expect(try reopened.readBytes(a + 8 * 4096, 4 * 4096) == [UInt8](repeating: 0, count: 4 * 4096))
        reopened.close()
        let again = try ImageStore.open(directory: dir)
        #expect(again.recovery == .clean)
        #expect(try again.matches(model))
    }

    @Test func checkpointsFollowTheThresholdAndClose() throws {
        let root = temporaryDirectory("wal")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "wal")
        store.checkpointThreshold = 3 * 4096
        var model = MemoryModel()
        let layout = [region(a, pages: 16)]
        model.setLayout(layout)
        var checkpoints: [UInt32?] = []
        for k in UInt32(1)...6 {
            try store.beginRound(k, layout: layout)
            // Round 1 fills the region (in place), so each later page is journaled.
            let bytes = pageBytes(UInt64(k), pages: k == 1 ? 16 : 1)
            let at = k == 1 ? a : a + UInt64(k) * 4096
            try store.write(at, bytes)
            model.write(at, bytes)
            try commit(store)
            checkpoints.append(store.checkpointedRound)
            #expect(store.pendingJournalBytes < 3 * 4096)
            #expect(journals(dir) == store.pendingJournals.map(journalName))
        }
        // Round 1 is in place (tiny journal); each later journal holds one page.
        #expect(checkpoints.contains { $0 != nil })
        #expect(checkpoints.contains { $0 == nil } || store.checkpointThreshold == 0)
        // A deferred final commit leaves its checkpoint to finishApply/close (after the ack).
        try store.beginRound(7, layout: layout)
        try store.write(a, pageBytes(7, pages: 1))
        model.write(a, pageBytes(7, pages: 1))
        try store.commitRound(final: true, deferApply: true)
        #expect(store.pendingJournals.last == 7)
        try store.finishApply()
        #expect(store.pendingJournals.isEmpty)
        #expect(store.checkpointedRound == 7)
        #expect(journals(dir).isEmpty)
        #expect(try store.matches(model))
    }

    @Test func aFinalCommitWithoutDeferApplyCheckpoints() throws {
        let root = temporaryDirectory("wal")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "wal")
        store.checkpointThreshold = .max
        let layout = [region(a, pages: 4)]
        for k in UInt32(1)...3 {
            try store.beginRound(k, layout: layout)
            try store.write(a, pageBytes(UInt64(k), pages: 4))
            try store.commitRound(final: k == 3)
            #expect(store.pendingJournals == (k == 3 ? [] : Array(1...k)))
        }
        #expect(store.checkpointedRound == 3)
        #expect(journals(dir).isEmpty)
        #expect(try diskManifest(dir).journals.isEmpty)
    }

    @Test func abortOfTheNextRoundKeepsPendingJournals() throws {
        let root = temporaryDirectory("wal")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "wal")
        store.checkpointThreshold = .max
        var model = MemoryModel()
        let layout = [region(a, pages: 16)]
        model.setLayout(layout)
        for k in UInt32(1)...3 {
            try store.beginRound(k, layout: layout)
            let bytes = pageBytes(UInt64(k), pages: 16 - Int(k))
            try store.write(a, bytes)
            model.write(a, bytes)
            try commit(store)
        }
        #expect(store.pendingJournals == [1, 2, 3])
        // Round 4: journaled overwrites, growth of the region's file and a new
        // region written in place; then it fails before its commit point.
        try store.beginRound(4, layout: [region(a, pages: 20), region(b, pages: 8)])
        try store.write(a, pageBytes(40, pages: 16))
        try store.write(a + 16 * 4096, pageBytes(41, pages: 4))
        try store.write(b, pageBytes(42, pages: 8))
        let journal4 = dir + "/" + journalName(4)
        Syscall.withFaults([.init("fsync(\(journal4))", .EIO)]) {
            #expect(throws: ImageError.io(file: journal4, call: "fsync", errno: .EIO)) { try store.commitRound() }
        }
        #expect(store.openRound == nil)
        #expect(store.pendingJournals == [1, 2, 3])
        #expect(journals(dir) == [1, 2, 3].map(journalName))
        #expect(memFiles(dir).count == 1)
        #expect(try store.matches(model))
        // An explicit abort too.
        try store.beginRound(4, layout: [region(a, pages: 20)])
        try store.write(a + 4096, pageBytes(43, pages: 8))
        store.abortRound()
        #expect(journals(dir) == [1, 2, 3].map(journalName))
        #expect(try store.matches(model))
        store.testCrash()

        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.replayedJournals == [1, 2, 3])
        #expect(reopened.committedRound == 3)
        #expect(try reopened.matches(model))
    }

    @Test func fullDiskWithPendingJournalsKeepsTheLastCommit() throws {
        let mountPoint = temporaryDirectory("tmpfs")
        defer { removeTree(mountPoint) }
        try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=2m") == 0, "mount tmpfs: \(Errno.current)")
        defer { umount2(mountPoint, Int32(MNT_DETACH)) }
        let dir = mountPoint + "/full"
        let store = try ImageStore.create(directory: dir, migrationID: "full")
        store.checkpointThreshold = .max
        var model = MemoryModel()
        let layout = [region(a, pages: 1024)]
        model.setLayout(layout)
        for k in UInt32(1)...3 {
            try store.beginRound(k, layout: layout)
            let bytes = pageBytes(UInt64(k), pages: 64)
            try store.write(a + UInt64(k) * 4096, bytes)
            model.write(a + UInt64(k) * 4096, bytes)
            try commit(store)
        }
        #expect(store.pendingJournals == [1, 2, 3])

        // 3 MiB cannot fit the journal (rewrites of committed pages are journaled).
        try store.beginRound(4, layout: layout)
        for _ in 0..<12 { try store.write(a + 4096, pageBytes(4, pages: 64)) }
        var caught: ImageError?
        do { try store.commitRound(deferApply: true) } catch { caught = error }
        let journal = dir + "/" + journalName(4)
        #expect(caught == .io(file: journal, call: "write", errno: .ENOSPC), "\(String(describing: caught))")
        #expect(caught.map { "\($0)".contains(journal) && "\($0)".contains("ENOSPC") } == true)
        #expect(store.openRound == nil)
        #expect(journals(dir) == [1, 2, 3].map(journalName))
        #expect(store.pendingJournals == [1, 2, 3])
        #expect(try store.matches(model))
        store.testCrash()

        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.committedRound == 3)
        #expect(reopened.replayedJournals == [1, 2, 3])
        #expect(try reopened.matches(model))
        #expect(journals(dir).isEmpty)
        // The checkpoint freed the journals: a round that did not fit now commits.
        try reopened.beginRound(4, layout: layout)
        let more = pageBytes(5, pages: 128)
        try reopened.write(a + 200 * 4096, more)
        model.write(a + 200 * 4096, more)
        try reopened.commitRound()
        #expect(try reopened.matches(model))
    }

    @Test func checkpointRemovesJournalsOnlyAfterFsyncAndPublish() throws {
        let root = temporaryDirectory("wal")
        defer { removeTree(root) }
        let dir = root + "/img"
        var model = MemoryModel()
        let layout = [region(a, pages: 16)]
        model.setLayout(layout)
        func round(_ store: ImageStore, _ k: UInt32) throws {
            try store.beginRound(k, layout: layout)
            let bytes = pageBytes(UInt64(k), pages: 4)
            try store.write(a + UInt64(k % 4) * 4096, bytes)
            model.write(a + UInt64(k % 4) * 4096, bytes)
            try commit(store)
        }
        let file = dir + "/mem-00000001.bin"
        for (k, fault) in [(UInt32(2), "fsync(\(file))"), (4, "fsync(\(dir))"), (6, "rename(\(dir)/manifest.tmp)")] {
            let store = k == 2 ? try ImageStore.create(directory: dir, migrationID: "wal") : try ImageStore.open(directory: dir)
            store.checkpointThreshold = .max
            try round(store, k - 1)
            try round(store, k)
            let pending = store.pendingJournals
            #expect(pending == (k == 2 ? [1, 2] : [k - 1, k]))
            var caught: ImageError?
            Syscall.withFaults([.init(fault, .EIO)]) {
                do throws(ImageError) { try store.checkpoint() } catch { caught = error }
            }
            if case .mustReopen(let reason) = caught {
                #expect(reason.contains("EIO"), "\(reason)")
            } else {
                Issue.record("\(fault): expected mustReopen, got \(String(describing: caught))")
            }
            // Nothing was deleted and the manifest on disk still lists the journals.
            #expect(journals(dir) == pending.map(journalName), "\(fault)")
            #expect(try diskManifest(dir).journals.map(\.round) == pending, "\(fault)")
            #expect(throws: ImageError.self) { try store.beginRound(k + 1, layout: layout) }
            store.close()

            let reopened = try ImageStore.open(directory: dir)
            #expect(reopened.replayedJournals == pending)
            #expect(reopened.checkpointedRound == k)
            #expect(try diskManifest(dir).journals.isEmpty)
            #expect(journals(dir).isEmpty)
            #expect(try reopened.matches(model))
            reopened.close()
        }
    }

    @Test func aVersionOneImageOpensAndReplaysItsCommittedJournal() throws {
        let root = temporaryDirectory("wal")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "v1")
        store.checkpointThreshold = .max
        var model = MemoryModel()
        let layout = [region(a, pages: 8)]
        model.setLayout(layout)
        try store.beginRound(1, layout: layout)
        try store.write(a, pageBytes(1, pages: 8))
        model.write(a, pageBytes(1, pages: 8))
        try store.commitRound()
        try store.checkpoint()
        try store.beginRound(2, layout: layout)
        try store.write(a + 4096, pageBytes(2, pages: 2))
        model.write(a + 4096, pageBytes(2, pages: 2))
        store.testStopAfterPublish = true
        _ = try? store.commitRound()
        store.close()
        // Rewrite the manifest as 1.0 wrote it: the same body without the 2.0 fields.
        var m = try diskManifest(dir)
        m.journals = []
        m.checkpointedRound = nil
        var bytes = m.encode()
        let bodyEnd = bytes.count - 8 - 5 - 4  // checksum, checkpoint (u8 + u32), journal count (u32)
        bytes = Array(bytes[0..<bodyEnd])
        bytes[8] = 1
        bytes.withUnsafeMutableBytes { storeLE($0, 16, UInt64(bodyEnd - 24)) }
        let sum = bytes.withUnsafeBytes { checksum64($0) }
        withUnsafeBytes(of: sum.littleEndian) { bytes += $0 }
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/manifest"))
        #expect(try diskManifest(dir).legacy)

        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.replayedJournals == [2])
        #expect(try reopened.matches(model))
        #expect(try !diskManifest(dir).legacy)  // rewritten as 2.0 by the checkpoint
    }

    @Test func theNextRoundProceedsWhileTheLastIsApplied() throws {
        let root = temporaryDirectory("wal")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "wal")
        store.checkpointThreshold = .max
        var model = MemoryModel()
        let c: UInt64 = 0x5200_0000
        func write(_ address: UInt64, _ seed: UInt64, _ pages: Int) throws {
            let bytes = pageBytes(seed, pages: pages)
            try store.write(address, bytes)
            model.write(address, bytes)
        }
        let l1 = [region(a, pages: 256)]
        try store.beginRound(1, layout: l1)
        model.setLayout(l1)
        try write(a, 1, 256)
        try commit(store)
        // Round 2 changes the layout: its apply (layout pass included) runs in the background.
        let l2 = l1 + [region(c, pages: 4)]
        try store.beginRound(2, layout: l2)
        model.setLayout(l2)
        try write(a, 2, 256)
        try write(c, 3, 4)
        try store.commitRound(deferApply: true)
        try store.finishApply()
        // Round 3 begins at once: growth of a's file, a new region in place, c dropped.
        let l3 = [region(a, pages: 260), region(b, pages: 8)]
        try store.beginRound(3, layout: l3)
        var next = model
        next.setLayout(l3)
        let grown = pageBytes(4, pages: 4), fresh = pageBytes(5, pages: 8), over = pageBytes(6, pages: 2)
        try store.write(a + 256 * 4096, grown)
        try store.write(b, fresh)
        try store.write(a + 4096, over)
        // A read in the open round waits for round 2's apply and sees round 2, and keeps round 3's new file.
        #expect(try store.matches(model))
        next.write(a + 256 * 4096, grown)
        next.write(b, fresh)
        next.write(a + 4096, over)
        model = next
        try store.commitRound(deferApply: true)
        try store.finishApply()
        #expect(try store.matches(model))
        #expect(memFiles(dir).count == 2)
        store.testCrash()
        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.replayedJournals == [1, 2, 3])
        #expect(try reopened.matches(model))
    }
}

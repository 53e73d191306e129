import Foundation
import Glibc
import MemhaulDigest
import MemhaulImage
import MemhaulSystem
import MemhaulWire
import Testing
@testable import MemhaulReceiver
import MemhaulTestSupport

/// A dense batch with gaps is reserved over its whole span before its pages
/// are written in place (one allocation instead of one extent per run on
/// ext4), where the image's file system has a device behind it; the gaps
/// still read as zeros and are still holes to `SEEK_DATA`; and the session
/// charges the span to the disk budget.
@Suite struct InPlaceReservationTests {
    let a: UInt64 = 0x4000_0000
    static let page = 4096

    /// Pages 0..<64 in runs of 3 with a one-page gap after each: 48 pages over a 63-page span.
    static let runs: [PageRun] = stride(from: 0, to: 64, by: 4).map { PageRun(start: 0x4000_0000 + UInt64($0 * page), pageCount: 3) }

    func gappyBatch() -> (PageBatch, [UInt8]) {
        var bytes = [UInt8](repeating: 0, count: 48 * Self.page)
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: i / Self.page &* 37 &+ 1) }
        let sum = bytes.withUnsafeBytes { PageChecksum.xxh3_64($0) }
        let header = PageBatchHeader(
            round: 1, encoding: .raw, runs: Self.runs, uncompressedLength: UInt32(bytes.count), checksum: sum,
            payloadLength: UInt32(bytes.count))
        return (PageBatch(header: header, payload: bytes[...]), bytes)
    }

    /// Stores the gappy batch through a storage stage into a fresh image under
    /// `parent`, commits, and returns what the region file looks like.
    func storeGappyBatch(under parent: String, gapFill: UInt64 = 0) throws -> (reserves: Bool, reserved: UInt64, filled: UInt64, allocated: Int, dataRuns: [Range<UInt64>], image: [UInt8], sent: [UInt8]) {
        let root = temporaryDirectory("reserve", in: parent)
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/img", migrationID: "reserve")
        defer { store.close() }
        store.gapFillBytes = gapFill
        try store.beginRound(1, layout: [ImageRegion(start: a, end: a + 64 * UInt64(Self.page), protection: [.read, .write], name: "")])
        let stage = StorageStage(store: store)
        let (batch, sent) = gappyBatch()
        try stage.submit(batch, reserving: store.reservesInPlace ? StorageStage.reservation(of: batch.header) : nil)
        try stage.drain()
        stage.stop()
        let info = try store.commitRound()
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: root + "/img")) ?? []).filter { $0.hasPrefix("mem-") }
        let path = root + "/img/" + files[0]
        let fd = open(path, O_RDONLY)
        try #require(fd >= 0, "open \(path): \(Errno.current)")
        defer { close(fd) }
        var st = stat()
        try #require(fstat(fd, &st) == 0)
        let dataRuns = try dataRuns(of: fd)
        let image = try read(store)  // after SEEK_DATA: reading a gap caches a page of zeros, which SEEK_DATA then counts as data
        return (store.reservesInPlace, info.reservedBytes, info.filledBytes, Int(st.st_blocks) * 512, dataRuns, image, sent)
    }

    func read(_ store: ImageStore) throws -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * Self.page, alignment: 4096)
        defer { buffer.deallocate() }
        try store.read(at: a, into: buffer)
        return Array(buffer)
    }

    /// What the image must read: the sent pages at their runs, zeros in the gaps.
    func expectedImage(_ sent: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 64 * Self.page)
        var o = 0
        for run in Self.runs {
            let at = Int(run.start - a)
            out.replaceSubrange(at..<(at + 3 * Self.page), with: sent[o..<(o + 3 * Self.page)])
            o += 3 * Self.page
        }
        return out
    }

    @Test func aDenseBatchIsReservedOverItsGapsOnADisk() throws {
        let parent = "/var/tmp"
        let type = try FileSystemType.of(parent)
        try #require(!type.isMemoryOnly, "skipped: \(parent) is \(type), not a file system with a device behind it")
        let r = try storeGappyBatch(under: parent)
        #expect(r.reserves)
        #expect(r.reserved == 63 * UInt64(Self.page), "the span from the first page to the end of the last")
        #expect(r.allocated >= 63 * Self.page, "the gaps' blocks are allocated with the pages: \(r.allocated) bytes")
        #expect(r.image == expectedImage(r.sent), "gaps read as zeros, pages as sent")
        // Reserved gaps are unwritten extents: SEEK_DATA still sees only the pages (readahead, CRIU export).
        let expectedRuns = Self.runs.map { UInt64($0.start - a)..<(UInt64($0.start - a) + 3 * UInt64(Self.page)) }
        #expect(r.dataRuns == expectedRuns)
        #expect(r.filled == 0, "gap filling off")
    }

    /// With the default gap fill, the one-page gaps are written as zeros with
    /// the runs: one stretch of data over the span, 15 pages of zeros.
    @Test func aDenseBatchHasItsShortGapsFilledOnADisk() throws {
        let parent = "/var/tmp"
        let type = try FileSystemType.of(parent)
        try #require(!type.isMemoryOnly, "skipped: \(parent) is \(type), not a file system with a device behind it")
        let r = try storeGappyBatch(under: parent, gapFill: ImageStore.defaultGapFillBytes)
        #expect(r.reserved == 63 * UInt64(Self.page))
        #expect(r.filled == 15 * UInt64(Self.page), "15 one-page gaps between 16 runs")
        #expect(r.image == expectedImage(r.sent), "gaps read as zeros, pages as sent")
        #expect(r.dataRuns == [0..<(63 * UInt64(Self.page))], "one stretch: \(r.dataRuns.count) data runs")
    }

    @Test func tmpfsReservesNothing() throws {
        let parent = "/dev/shm"
        try #require(try FileSystemType.of(parent).isMemoryOnly, "skipped: \(parent) is not tmpfs here")
        let r = try storeGappyBatch(under: parent, gapFill: ImageStore.defaultGapFillBytes)
        #expect(!r.reserves)
        #expect(r.reserved == 0)
        #expect(r.filled == 0, "nothing reserved, nothing filled: a zero page on tmpfs is a page of memory")
        #expect(r.allocated == 48 * Self.page, "only the pages take memory: \(r.allocated) bytes")
        #expect(r.image == expectedImage(r.sent))
    }

    @Test func committedPagesAreNotReservedAgain() throws {
        let parent = "/var/tmp"
        let type = try FileSystemType.of(parent)
        try #require(!type.isMemoryOnly, "skipped: \(parent) is \(type)")
        let root = temporaryDirectory("reserve", in: parent)
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/img", migrationID: "reserve")
        defer { store.close() }
        let layout = [ImageRegion(start: a, end: a + 64 * UInt64(Self.page), protection: [.read, .write], name: "")]
        try store.beginRound(1, layout: layout)
        let (batch, sent) = gappyBatch()
        let stage = StorageStage(store: store)
        try stage.submit(batch, reserving: StorageStage.reservation(of: batch.header))
        try stage.drain()
        try store.commitRound()
        // Round 2 rewrites the same pages: committed content lives there, so they go to the journal, unreserved.
        try store.beginRound(2, layout: layout)
        var again = batch
        again.header.round = 2
        try stage.submit(again, reserving: StorageStage.reservation(of: again.header))
        try stage.drain()
        stage.stop()
        #expect(try store.commitRound().reservedBytes == 0)
        #expect(try read(store) == expectedImage(sent))
    }

    @Test func theSpanIsReservedOnlyForDenseBatchesWithGaps() {
        func header(_ runs: [PageRun]) -> PageBatchHeader {
            let bytes = UInt32(runs.reduce(0) { $0 + Int($1.pageCount) } * Self.page)
            return PageBatchHeader(round: 1, encoding: .raw, runs: runs, uncompressedLength: bytes, checksum: 0, payloadLength: bytes)
        }
        let p = UInt64(Self.page)
        #expect(StorageStage.reservation(of: header(Self.runs)) == AddressRange(start: a, end: a + 63 * p))
        #expect(StorageStage.reservation(of: header(Self.runs.reversed())) == AddressRange(start: a, end: a + 63 * p), "any order")
        #expect(StorageStage.reservation(of: header([PageRun(start: a, pageCount: 8)])) == nil, "no gap: nothing to gain")
        #expect(StorageStage.reservation(of: header([PageRun(start: a, pageCount: 2), PageRun(start: a + 4 * p, pageCount: 2)])) != nil, "half full")
        #expect(StorageStage.reservation(of: header([PageRun(start: a, pageCount: 2), PageRun(start: a + 7 * p, pageCount: 2)])) == nil, "under half: the gaps would cost more than the pages")
        #expect(StorageStage.reservation(of: header([PageRun(start: UInt64.max - p, pageCount: 4)])) == nil, "an overflowing run")
        #expect(StorageStage.reservation(of: header([])) == nil)
    }

    @Test func theBudgetChargesTheReservedSpanOnlyWhereItFits() throws {
        var limits = ReceiverLimits()
        limits.maxImageBytes = 112 * UInt64(Self.page)
        let span = AddressRange(start: a, end: a + 63 * UInt64(Self.page))
        var budget = ReceiverBudget(limits: limits)
        #expect(try budget.addPages(48, round: 1, pageSize: UInt64(Self.page), reserving: span), "63 of 112 pages: reserved")
        #expect(try !budget.addPages(48, round: 1, pageSize: UInt64(Self.page), reserving: span), "63 + 63 > 112, but 63 + 48 fits: stored unreserved")
        #expect(throws: (any Error).self, "111 + 48 pages do not fit at all") {
            try budget.addPages(48, round: 1, pageSize: UInt64(Self.page), reserving: span)
        }
    }

    /// Through a real receiver on a disk: with room, the round's gappy batch is
    /// reserved over its span; with a disk budget that holds its pages but not
    /// the span, it is stored unreserved, not refused.
    @Test func theReceiverReservesWhereTheBudgetHasRoom() throws {
        let parent = "/var/tmp"
        let type = try FileSystemType.of(parent)
        try #require(!type.isMemoryOnly, "skipped: \(parent) is \(type)")
        let pki = try TestPKI()
        for (budgetPages, expectReserved) in [(0, true), (56, false)] {
            var limits = ReceiverLimits()
            limits.maxImageBytes = UInt64(budgetPages * Self.page)
            let receiver = try TestReceiver(pki: pki, images: temporaryDirectory("reserve-rx", in: parent), limits: limits)
            let id = "reserve-\(budgetPages)"
            let sender = try RawSender(receiver, pki, id: id)
            let base = RawSender.base
            let runs = Self.runs.map { PageRun(start: base + ($0.start - a), pageCount: $0.pageCount) }
            let (batch, _) = gappyBatch()
            let header = PageBatchHeader(round: 1, encoding: .raw, runs: runs, uncompressedLength: batch.header.uncompressedLength,
                                         checksum: batch.header.checksum, payloadLength: batch.header.payloadLength)
            try sender.channel.send(.layout(Layout(round: 1, regions: [RawSender.region])))
            try Array(batch.payload).withUnsafeBytes { try sender.channel.sendPageBatch(header, payload: $0) }
            try sender.channel.send(.roundEnd(RoundEnd(round: 1, stats: RoundStats(pages: 48, batches: 1))))
            guard case .roundAck = try sender.channel.receive() else { throw TestSetupError("no ROUND_ACK") }
            sender.stream.close()
            let image = try openImageWhenReleased(receiver.images + "/" + id)
            image.close()
            let dir = receiver.images + "/" + id
            let mem = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("mem-") }
            var st = stat()
            try #require(mem.count == 1 && stat(dir + "/" + mem[0], &st) == 0, "\(mem)")
            let allocated = Int(st.st_blocks) * 512
            let filled = receiver.agent.counters.values.committedFillBytes
            if expectReserved {
                #expect(allocated >= 63 * Self.page, "budget \(budgetPages) pages: \(allocated) bytes allocated")
                #expect(filled == 15 * UInt64(Self.page), "the one-page gaps, counted: \(filled)")
            } else {
                #expect(allocated < 63 * Self.page, "budget \(budgetPages) pages: \(allocated) bytes allocated")
                #expect(filled == 0, "unreserved: unfilled")
            }
        }
    }
}

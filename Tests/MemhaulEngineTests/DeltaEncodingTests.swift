import Foundation
import Glibc
import MemhaulCompression
@testable import MemhaulControl
import MemhaulDigest
import MemhaulImage
import MemhaulSystem
import MemhaulTLS
import MemhaulWire
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// Delta encoding of re-dirtied pages (capability page-delta, PAGE_BATCH encoding 2): real
/// migrations of a key-value workload, a forced reconnect, and a receiver fed hand-made deltas.
@Suite(.serialized) struct DeltaEncodingTests {
    /// A key-value workload whose hot keys keep changing one 8-byte field: later rounds go as deltas.
    func kvWorkload() throws -> WorkloadProcess {
        try startWorkload(["--size", "32M", "--threads", "2", "--rate", "20000", "--pattern", "kv:0.1"])
    }

    func migrate(_ workload: WorkloadProcess, _ receiver: TestReceiver, _ pki: TestPKI, id: String,
                 _ configure: (inout MigrationRequest) -> Void = { _ in }) throws -> MigrationStatus {
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: id)
        r.parameters.maxRounds = 6
        configure(&r)  // the source stays stopped after the proof: the image is compared with it
        let migration = SenderMigration(request: r, connect: try connector(pki))
        migration.run()
        return migration.status
    }

    @Test func reDirtiedPagesTravelAsDeltasAndTheImageEqualsTheSource() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let workload = try kvWorkload()
        // Several rounds whatever the timing: the downtime limit is never met, the round cap cuts over.
        let s = try migrate(workload, receiver, pki, id: "delta-on") { $0.parameters.downtimeLimitMs = 0.001; $0.parameters.autoConverge = false }
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(s.rounds >= 3)
        #expect(s.deltaPages > 0, "no page went as a delta: \(s.counters)")
        #expect(s.deltaCacheHits >= s.deltaPages)
        #expect(s.deltaSavedBytes > s.deltaPages * 2048, "a field update should cost far less than half a page")
        // The image is the frozen source byte for byte, not only by the ledgers.
        try expectImageMatchesSource(receiver.images + "/delta-on", pid: workload.pid)
    }

    @Test func cacheOffOffersNoCapabilityAndSendsNoDelta() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let workload = try kvWorkload()
        let s = try migrate(workload, receiver, pki, id: "delta-off") {
            $0.deltaCacheBytes = 0
            $0.parameters.downtimeLimitMs = 0.001
            $0.parameters.autoConverge = false
        }
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(s.rounds >= 3)
        #expect(s.deltaPages == 0 && s.deltaCacheHits == 0 && s.deltaCacheMisses == 0, "\(s.counters)")
    }

    /// A page discarded, then written back the same (the workload's `write` of a zero page is
    /// deterministic): the discard drops it from the cache, so it goes whole. A stale entry
    /// would send an empty delta, applied to the zeros the image holds: checksum mismatch.
    @Test func aDiscardedPageLeavesTheCache() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let w = try startWorkload(["--size", "4M", "--threads", "0"], control: true)
        var r = MigrationRequest(pid: w.pid, host: "127.0.0.1", port: receiver.port, id: "delta-discard")
        r.parameters.maxRounds = 100_000
        r.parameters.downtimeLimitMs = 0.001
        r.parameters.autoConverge = false
        let migration = SenderMigration(request: r, connect: try connector(pki))
        let done = migration.runInBackground()
        /// Returns once two more rounds are committed: the change before it was scanned and sent.
        func twoRounds() {
            let start = migration.status.rounds
            while migration.status.rounds < start + 2 && !migration.status.state.isFinal { usleep(1_000) }
        }
        let region = try #require(w.regions.first)
        let at = "0x" + String(region.start, radix: 16)
        twoRounds()
        for _ in 0..<2 {
            _ = try w.workloadCommand("discard \(at) 64K")
            twoRounds()
            _ = try w.workloadCommand("write \(at) 16")
            twoRounds()
        }
        migration.requestCutover()
        #expect(done.wait(timeout: .now() + 120) == .success)
        let s = migration.status
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(s.discardedBytes >= 16 * 4096, "the written pages were discarded: \(s.counters)")
        try expectImageMatchesSource(receiver.images + "/delta-discard", pid: w.pid)
    }

    /// No round follows the final one: its pages leave the cache instead of being copied in
    /// (what the cache held of them is stale once they are sent).
    @Test func theFinalRoundLeavesNothingInTheCache() throws {
        let w = try startWorkload(["--size", "4M", "--threads", "0"])
        let region = try #require(w.regions.first)
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let reading = ThreadResult<Int>.start {
            let channel = FrameChannel(stream: try listener.accept(timeout: .seconds(30)))
            var batches = 0
            while true {
                switch try channel.receive() {
                case .pageBatch: batches += 1
                case .close: return batches
                default: continue
                }
            }
        }
        let channel = FrameChannel(stream: try TCPStream.connect(host: "127.0.0.1", port: listener.port))
        try channel.sendPreamble()
        let cache = try #require(DeltaCache(capacityBytes: 64 << 20))
        let sender = RoundSender(pid: w.pid, configuration: RoundSender.Configuration(), deltaCache: cache)
        let dirty = [AddressRange(start: region.start, end: region.end)]
        _ = try sender.send(round: 1, dirty: dirty, discarded: [], channel: channel, firstRound: true, pace: { _ in }, cancelled: { false })
        let cached = cache.count
        #expect(cached > 0, "the first round fills the cache")
        _ = try sender.send(round: 2, dirty: dirty, discarded: [], channel: channel, lastRound: true, pace: { _ in }, cancelled: { false })
        #expect(cache.count == 0, "the final round's pages stayed: \(cache.count) of \(cached)")
        try channel.send(.close(Close(reason: .complete)))
        #expect(try reading.get() > 0)
    }

    @Test func controlMigrateTakesTheDeltaCache() throws {
        let base: [String: Any] = ["pid": 1, "to": "h:1"]
        #expect(try SenderControl.request(from: ControlRequest(op: "migrate", args: base)).deltaCacheBytes == 64 << 20)
        let off = try SenderControl.request(from: ControlRequest(op: "migrate", args: base.merging(["delta_cache_bytes": 0]) { $1 }))
        #expect(off.deltaCacheBytes == 0)
        #expect(throws: ControlError.self) {
            try SenderControl.request(from: ControlRequest(op: "migrate", args: base.merging(["delta_cache_bytes": Double(1 << 40)]) { $1 }))
        }
    }

    /// The sender offers page-delta, but a receiver that does not accept it gets whole pages.
    @Test func aReceiverWithoutTheCapabilityGetsNoDelta() throws {
        let pki = try TestPKI()
        let hostile = try HostileReceiver(pki: pki, .welcome(version: .current, capabilities: [.zstd, .keepalive, .resume], lastCommittedRound: nil))
        defer { hostile.close() }
        let workload = try kvWorkload()
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: hostile.port, id: "delta-refused")
        r.parameters.maxRounds = 4
        r.parameters.downtimeLimitMs = 0.001
        r.parameters.autoConverge = false
        let migration = SenderMigration(request: r, connect: try connector(pki))
        migration.run()  // ends at the proof: this receiver sends no digest
        let seen = hostile.seen
        #expect(seen.helloCapabilities?.contains(.pageDelta) == true)
        #expect(seen.roundEnds >= 3, "rounds after the first were sent")
        #expect(seen.deltaBatches == 0)
        #expect(migration.status.deltaPages == 0 && migration.status.deltaCacheHits == 0)
    }

    /// A connection cut while rounds of deltas stream: the chunks the receiver did not commit are
    /// dropped from the cache, so no delta after the resume is based on content the image lacks
    /// (else the receiver's checksum fails the migration).
    @Test func resumeDropsTheUncommittedChunksFromTheCache() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let workload = try kvWorkload()
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "delta-resume")
        r.parameters.maxRounds = 12
        r.parameters.downtimeLimitMs = 0.001
        r.parameters.autoConverge = false
        // Many small commits per round, so chunks are in flight when the cut comes.
        r.parameters.commitChunkBytes = 64 << 10
        let migration = SenderMigration(request: r, connect: try connector(pki))
        let done = migration.runInBackground()
        // Deltas flowing (round 2 or later): cut.
        while migration.status.deltaPages < 200 && !migration.status.state.isFinal { usleep(1_000) }
        #expect(!migration.status.state.isFinal, "the migration ended before the cut")
        receiver.agent.disconnect(migration: "delta-resume")
        #expect(done.wait(timeout: .now() + 180) == .success)
        let s = migration.status
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(s.resumes >= 1)
        #expect(s.resentBytesAfterResume > 0, "the cut hit a round in flight")
        try expectImageMatchesSource(receiver.images + "/delta-resume", pid: workload.pid)
    }
}

/// The receiver against hand-made delta batches: committed base, refusals.
@Suite(.serialized) struct DeltaReceiverTests {
    static func changed(_ page: [UInt8]) -> [UInt8] {
        var p = page
        for i in 100..<108 { p[i] = 0xEE }
        return p
    }

    /// `pages` as encoding 2 against `bases` (nil: sent whole).
    static func deltaBatch(_ s: RawSender, round: UInt64, pages: [[UInt8]], bases: [[UInt8]?], payload: [UInt8]? = nil, checksum: UInt64? = nil) throws {
        let body = try payload ?? #require(DeltaBatch.encode(pages: pages, bases: bases)).payload
        try s.batch(round: round, at: RawSender.base, pages.flatMap { $0 }, encoding: .delta, payload: body, checksum: checksum)
    }

    @Test func aDeltaIsAppliedToTheCommittedPage() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let s = try RawSender(receiver, pki, id: "delta-apply", extra: [.pageDelta])
        #expect(s.welcome?.capabilities.contains(.pageDelta) == true)
        try s.goodRound(1, value: 0x11)
        let new = [Self.changed(RawSender.page(0x11)), RawSender.page(0x44)]
        try s.channel.send(.layout(Layout(round: 2, regions: [RawSender.region])))
        // Page 0 a delta of the committed 0x11 page; page 1 (never committed) whole.
        try Self.deltaBatch(s, round: 2, pages: new, bases: [RawSender.page(0x11), nil])
        try s.channel.send(.roundEnd(RoundEnd(round: 2, stats: RoundStats(pages: 2, batches: 1))))
        guard case .roundAck(let ack) = try s.channel.receive() else { Issue.record("no ROUND_ACK"); return }
        #expect(ack.round == 2)
        s.stream.close()
        let store = try openImageWhenReleased(receiver.images + "/delta-apply")
        defer { store.close() }
        var page = [UInt8](repeating: 0, count: 8192)
        try page.withUnsafeMutableBytes { try store.read(at: RawSender.base, into: $0) }
        #expect(page == new[0] + new[1])
    }

    @Test func malformedDeltaIsRefused() throws {
        try ReceiverHostileInputTests().misbehave("delta-bad-tag", expect: .decompressionFailed, offering: [.pageDelta]) { s in
            // Tag 0x0900 (2304): neither a whole page nor a delta of at most half a page.
            try Self.deltaBatch(s, round: 2, pages: [Self.changed(RawSender.page(0x11))], bases: [RawSender.page(0x11)],
                                payload: [0x00, 0x09] + [UInt8](repeating: 1, count: 2304))
        }
        try ReceiverHostileInputTests().misbehave("delta-past-end", expect: .decompressionFailed, offering: [.pageDelta]) { s in
            // Unchanged 4000 bytes, then 200 changed: past the page end.
            try Self.deltaBatch(s, round: 2, pages: [Self.changed(RawSender.page(0x11))], bases: [RawSender.page(0x11)],
                                payload: [0xCC, 0x00, 0xA0, 0x1F, 0xC8, 0x01] + [UInt8](repeating: 1, count: 200))
        }
    }

    @Test func deltaOfAPageOutsideTheCommittedLayoutIsRefused() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let s = try RawSender(receiver, pki, id: "delta-no-base", extra: [.pageDelta])
        try s.goodRound(1, value: 0x11)
        // Round 2 adds a region: the image has no committed page there to apply a delta to.
        let added = RawSender.base + 128 * 4096
        try s.channel.send(.layout(Layout(round: 2, regions: [RawSender.region, RegionDescriptor(
            start: added, end: added + 4096, protection: [.read, .write])])))
        let page = Self.changed(RawSender.page(0))
        let body = try #require(DeltaBatch.encode(pages: [page], bases: [RawSender.page(0)])).payload
        try s.batch(round: 2, at: added, page, encoding: .delta, payload: body)
        let error = s.expectError()
        #expect(error?.code == .decompressionFailed, "\(String(describing: error))")
        #expect(error?.message.contains("not in the committed image") == true, "\(String(describing: error))")
    }

    @Test func deltaAgainstTheWrongBaseFailsTheChecksum() throws {
        try ReceiverHostileInputTests().misbehave("delta-wrong-base", expect: .checksumMismatch, offering: [.pageDelta]) { s in
            // The sender believes the page held 0x22; the image holds 0x11.
            try Self.deltaBatch(s, round: 2, pages: [Self.changed(RawSender.page(0x22))], bases: [RawSender.page(0x22)])
        }
    }

    @Test func deltaWithoutTheCapabilityIsRefused() throws {
        try ReceiverHostileInputTests().misbehave("delta-not-agreed", expect: .unexpectedMessage) { s in
            try Self.deltaBatch(s, round: 2, pages: [Self.changed(RawSender.page(0x11))], bases: [RawSender.page(0x11)])
        }
    }
}

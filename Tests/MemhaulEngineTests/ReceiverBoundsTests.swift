import Foundation
import Glibc
import MemhaulDigest
import MemhaulControl
import MemhaulImage
import MemhaulTLS
import MemhaulWire
import Testing
@testable import MemhaulSession
import MemhaulSystem
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// Peak resident set of this process (the receiver runs in it), KiB.
func vmHWM() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    return 0
}

/// Resets VmHWM to the current RSS (`clear_refs` 5), so a peak measured after
/// is this test's.
func resetPeak() {
    let fd = open("/proc/self/clear_refs", O_WRONLY)
    if fd >= 0 { _ = write(fd, "5", 1); close(fd) }
}

extension RawSender {
    /// Sends LAYOUT frames flagged continued, each `regionsPerFrame` regions
    /// with names of `nameBytes`, until `frames` are sent or the receiver
    /// answers; returns the ERROR it answered (nil: none) and the frames sent.
    func layoutFlood(round: UInt64, frames: Int, regionsPerFrame: Int, nameBytes: Int) -> (ErrorMessage?, Int) {
        let name = String(repeating: "n", count: nameBytes)
        var next = Self.base
        for f in 0..<frames {
            if (try? stream.waitReadable(timeout: .zero)) == true { return (expectError(), f) }
            var regions: [RegionDescriptor] = []
            regions.reserveCapacity(regionsPerFrame)
            for _ in 0..<regionsPerFrame {
                regions.append(RegionDescriptor(start: next, end: next + 4096, protection: [.read], name: name))
                next += 4096
            }
            do {
                try channel.send(.layout(Layout(round: round, continued: true, regions: regions)))
            } catch {
                return (expectError(), f)
            }
        }
        return (expectError(), frames)
    }
}

/// The receiver's per-connection limits (wire.md "Receiver limits"): each is
/// refused with ERROR `limit-exceeded`, logged, and the receiver serves the
/// next migration.
@Suite(.serialized) struct ReceiverBoundsTests {
    func limits(_ change: (inout ReceiverLimits) -> Void) -> ReceiverLimits {
        var l = ReceiverLimits()
        change(&l)
        return l
    }

    /// The issue's flood: 16 MiB LAYOUT frames flagged continued, 256 MiB in
    /// all. With the default 32 MiB cap the third frame is refused; the
    /// receiver's peak memory is reported (the assertion is on the refusal).
    @Test func layoutFloodIsRefusedAtTheByteCap() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let sender = try RawSender(receiver, pki, id: "flood-bytes")
        try sender.goodRound(1, value: 0x31)
        resetPeak()
        let before = vmHWM()
        // 16384 regions of 20 + 1000 bytes: one frame just under 16 MiB (the region cap is not reached first).
        let (error, sent) = sender.layoutFlood(round: 2, frames: 16, regionsPerFrame: 16384, nameBytes: 1000)
        #expect(error?.code == .limitExceeded, "got \(String(describing: error)) after \(sent) frames")
        #expect(error?.message.contains("--max-layout-bytes") == true)
        sender.stream.close()
        #expect(receiver.waitForLog("flood-bytes", "limit exceeded", "--max-layout-bytes") != nil, "\(receiver.logLines)")
        let peak = vmHWM()
        print("layout flood: \(sent) frames sent, VmHWM \(before / 1024) MiB before, \(peak / 1024) MiB peak (+\((peak - before) / 1024) MiB)")
        let image = try openImageWhenReleased(receiver.images + "/flood-bytes")
        #expect(image.committedRound == 1)
        image.close()
        try RawSender(receiver, pki, id: "flood-bytes-after").goodRound(1, value: 0x32)
    }

    @Test func layoutFloodIsRefusedAtTheRegionCap() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki, limits: limits { $0.maxLayoutRegions = 100_000 })
        let sender = try RawSender(receiver, pki, id: "flood-regions")
        let (error, sent) = sender.layoutFlood(round: 1, frames: 8, regionsPerFrame: 65536, nameBytes: 0)
        #expect(error?.code == .limitExceeded, "got \(String(describing: error)) after \(sent) frames")
        #expect(error?.message.contains("--max-layout-regions") == true)
        sender.stream.close()
        #expect(receiver.waitForLog("flood-regions", "limit exceeded", "100000 regions") != nil, "\(receiver.logLines)")
        try RawSender(receiver, pki, id: "flood-regions-after").goodRound(1, value: 0x33)
    }

    /// Round 2 over the page cap (8): refused, round 1 stays committed.
    @Test func pagesPerRoundAreCapped() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki, limits: limits { $0.maxPagesPerRound = 8 })
        let sender = try RawSender(receiver, pki, id: "pages-cap")
        try sender.goodRound(1, value: 0x41)
        try sender.channel.send(.layout(Layout(round: 2, regions: [RawSender.region])))
        try sender.batch(round: 2, at: RawSender.base, [UInt8](repeating: 1, count: 4 * 4096))
        try sender.batch(round: 2, at: RawSender.base + 4 * 4096, [UInt8](repeating: 2, count: 5 * 4096))
        let error = sender.expectError()
        #expect(error?.code == .limitExceeded && error?.message.contains("--max-pages-per-round") == true, "\(String(describing: error))")
        sender.stream.close()
        #expect(receiver.waitForLog("pages-cap", "limit exceeded") != nil, "\(receiver.logLines)")
        let image = try openImageWhenReleased(receiver.images + "/pages-cap")
        #expect(image.committedRound == 1)
        image.close()
        try RawSender(receiver, pki, id: "pages-cap-after").goodRound(1, value: 0x42)
    }

    @Test func zeroAndDiscardRunsPerRoundAreCapped() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki, limits: limits { $0.maxRangesPerRound = 2 })
        let sender = try RawSender(receiver, pki, id: "ranges-cap")
        try sender.channel.send(.layout(Layout(round: 1, regions: [RawSender.region])))
        let runs = (0..<3).map { PageRun(start: RawSender.base + UInt64($0) * 2 * 4096, pageCount: 1) }
        try sender.channel.send(.zeroRanges(RangeList(round: 1, runs: runs)))
        let error = sender.expectError()
        #expect(error?.code == .limitExceeded && error?.message.contains("--max-ranges-per-round") == true, "\(String(describing: error))")
        sender.stream.close()
        #expect(receiver.waitForLog("ranges-cap", "limit exceeded") != nil, "\(receiver.logLines)")
        try RawSender(receiver, pki, id: "ranges-cap-after").goodRound(1, value: 0x43)
    }

    /// An image capped at 128 KiB of disk: a round of 32 pages (128 KiB of data) is refused.
    @Test func imageDiskUseIsCapped() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki, limits: limits { $0.maxImageBytes = 128 << 10 })
        let sender = try RawSender(receiver, pki, id: "image-cap")
        try sender.goodRound(1, value: 0x51)
        try sender.channel.send(.layout(Layout(round: 2, regions: [RawSender.region])))
        try sender.batch(round: 2, at: RawSender.base, [UInt8](repeating: 7, count: 32 * 4096))
        let error = sender.expectError()
        #expect(error?.code == .limitExceeded && error?.message.contains("--max-image-bytes") == true, "\(String(describing: error))")
        sender.stream.close()
        #expect(receiver.waitForLog("image-cap", "limit exceeded") != nil, "\(receiver.logLines)")
        let image = try openImageWhenReleased(receiver.images + "/image-cap")
        #expect(image.committedRound == 1)
        image.close()
        try RawSender(receiver, pki, id: "image-cap-after").goodRound(1, value: 0x52)
    }

    /// Two images per certificate: the third new migration is refused before
    /// any directory is made; the owner can still resume one, and another
    /// sender can still start one.
    @Test func imagesPerSenderAreCapped() throws {
        let pki = try TestPKI()
        _ = try CertificateBundle.issue(directory: pki.directory, name: "sender-b", role: .sender)
        let receiver = try TestReceiver(pki: pki, limits: limits { $0.maxImagesPerSender = 2 })
        for id in ["quota-1", "quota-2"] {
            let s = try RawSender(receiver, pki, id: id)
            try s.goodRound(1, value: 0x61)
            try s.channel.send(.close(Close(reason: .shutdown)))
            s.stream.close()
            _ = try openImageWhenReleased(receiver.images + "/" + id)  // released
        }
        let refused: ErrorMessage
        do {
            _ = try RawSender(receiver, pki, id: "quota-3")
            Issue.record("a third image was accepted")
            return
        } catch let e as RawSenderRefused {
            refused = e.error
        }
        #expect(refused.code == .limitExceeded && refused.message.contains("--max-images-per-sender"), "\(refused)")
        #expect(!FileManager.default.fileExists(atPath: receiver.images + "/quota-3"))
        #expect(receiver.waitForLog("quota-3", "limit exceeded") != nil, "\(receiver.logLines)")
        try RawSender(receiver, pki, id: "quota-1", resumeFrom: 1).goodRound(2, value: 0x62)
        try RawSender(receiver, pki, id: "quota-b", role: "sender-b").goodRound(1, value: 0x63)
    }

    /// 1000 regions of 8 TiB (8 PiB declared, nothing stored).
    static let hugeLayout: [RegionDescriptor] = (0..<UInt64(1000)).map { i in
        let t: UInt64 = 8 << 40
        let s = (1 << 44) + i * 2 * t
        return RegionDescriptor(start: s, end: s + t, protection: [.read, .write])
    }

    /// Digest v2 (capability `digestV2`): the verification round over 8 PiB
    /// of declared, empty layout is answered (v1 hashes zeros for ~19 days).
    @Test func digestV2VerifiesAHugeEmptyLayout() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let context = try TLSClientContext(configuration: pki.configuration("sender"))
        let stream = try context.connect(host: "127.0.0.1", port: receiver.port).boundingReads()
        let channel = FrameChannel(stream: stream)
        try channel.sendPreamble()
        try channel.send(.hello(Hello(capabilities: [.zstd, .digestV2], migrationID: "huge-v2", senderName: "raw-test")))
        guard case .welcome(let w) = try channel.receive() else { throw TestSetupError("no WELCOME") }
        #expect(w.capabilities.contains(.digestV2))
        try channel.send(.layout(Layout(round: 1, regions: Self.hugeLayout)))
        try channel.send(.roundEnd(RoundEnd(round: 1, stats: RoundStats())))
        guard case .roundAck = try channel.receive() else { throw TestSetupError("no ROUND_ACK 1") }
        let d = MemoryDigester(version: .v2)
        for r in Self.hugeLayout {
            d.beginRegion(start: r.start, end: r.end)
            d.updateZeros(count: Int(r.end - r.start))
        }
        let digest = d.finalize()
        #expect(digest.hex == "bc8f3dc16bcafc65aed0cfcedae7d33a")  // MemoryDigestTests' vector
        let wire = WireDigest(high: digest.high, low: digest.low)
        try channel.send(.layout(Layout(round: 2, regions: Self.hugeLayout)))
        try channel.send(.roundEnd(RoundEnd(round: 2, stats: RoundStats(), finalDigest: wire)))
        guard case .roundAck(let ack) = try channel.receive() else { throw TestSetupError("no final ROUND_ACK") }
        #expect(ack.imageDigest == wire)
        try channel.send(.close(Close(reason: .complete)))
        stream.close()
        let image = try openImageWhenReleased(receiver.images + "/huge-v2")
        defer { image.close() }
        #expect(image.state == .complete)
        #expect(image.finalDigest == digest, "stored with its version (v2)")
    }

    /// A v1 sender declares 8 PiB, starts the verification round and hangs up:
    /// the receiver's digest (days of hashing zeros) stops at once and the
    /// session ends "aborted" with the reason; the image waits for a resume.
    @Test func digestStopsWhenThePeerHangsUp() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let sender = try RawSender(receiver, pki, id: "hangup")  // no digestV2: v1, proportional to the layout
        try sender.channel.send(.layout(Layout(round: 1, regions: Self.hugeLayout)))
        try sender.channel.send(.roundEnd(RoundEnd(round: 1, stats: RoundStats())))
        guard case .roundAck = try sender.channel.receive() else { throw TestSetupError("no ROUND_ACK 1") }
        try sender.channel.send(.layout(Layout(round: 2, regions: Self.hugeLayout)))
        try sender.channel.send(.roundEnd(RoundEnd(round: 2, stats: RoundStats(), finalDigest: WireDigest(high: 1, low: 2))))
        sender.stream.close()
        // Event: the session reports aborted (a safety net bounds the wait; without the fix it stays "receiving" for days).
        var info: ReceiverSession.Info?
        for _ in 0..<6000 {
            info = receiver.agent.sessionInfo.first { $0.migration == "hangup" }
            if info?.state == "aborted" { break }
            usleep(10_000)
        }
        #expect(info?.state == "aborted", "\(String(describing: info))")
        #expect(info?.error?.contains("went away") == true, "\(String(describing: info?.error))")
        #expect(receiver.waitForLog("hangup", "went away") != nil, "\(receiver.logLines)")
        let image = try openImageWhenReleased(receiver.images + "/hangup")
        defer { image.close() }
        #expect(image.committedRound == 1)
        #expect(image.state == .inProgress, "a gone peer does not fail the image")
    }

    /// The reference sender and receiver agree on digest v2 for a real process
    /// with zero pages (written-then-zeroed ones are present all-zero pages:
    /// the sender reads them, the image holds holes or zero bytes; both
    /// classify by content), and the image stores the digest as v2.
    @Test func realMigrationUsesDigestV2() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let workload = try startWorkload(["--size", "32M", "--mix", "zero=50,text=30,random=20", "--threads", "1", "--rate", "2000"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "v2-live")
        r.parameters.downtimeLimitMs = 300
        r.proof = .full  // the route that re-reads both sides (the default is the ledger, v3)
        let migration = SenderMigration(request: r, connect: try connector(pki))
        migration.run()
        #expect(migration.status.state == .completed, "\(migration.status.error ?? "")")
        let store = try openImageWhenReleased(receiver.images + "/v2-live")
        defer { store.close() }
        #expect(store.finalDigest?.version == .v2)
        #expect(store.finalDigest?.hex == migration.status.digest)
        #expect(try ImageVerifier.verify(store, pid: workload.pid).ok)
    }

    /// The receiver's `status` shows every limit in effect.
    @Test func statusShowsTheLimits() throws {
        let receiver = try TestReceiver(pki: nil, limits: limits { $0.maxImageBytes = 5 << 30; $0.maxImagesPerSender = 7 })
        let status = try ReceiverControl.handler(receiver.agent)(ControlRequest(op: "status"))
        let l = try #require(status["limits"] as? [String: Any])
        #expect(l["max_layout_regions"] as? Int == 131_072)
        #expect(l["max_layout_bytes"] as? Int == 32 << 20)
        #expect(l["max_pages_per_round"] as? Int == 1 << 20)
        #expect(l["max_ranges_per_round"] as? Int == 1 << 20)
        #expect(l["max_image_bytes"] as? UInt64 == 5 << 30)
        #expect(l["max_images_per_sender"] as? Int == 7)
    }
}

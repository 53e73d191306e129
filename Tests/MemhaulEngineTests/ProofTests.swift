import Foundation
import Glibc
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

/// The proofs (`ProofMode`): the incremental ledger digest (v3), the full
/// re-read, and both; what each catches.
@Suite(.serialized) struct ProofTests {
    /// One migration of a workload whose writers keep dirtying pages, so
    /// every round (the frozen final delta included) carries pages.
    func migrate(_ proof: ProofMode, id: String, sabotage: Bool = false) throws -> (MigrationStatus, TestReceiver, WorkloadProcess) {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let workload = try startWorkload(["--size", "32M", "--mix", "zero=30,text=40,random=30", "--threads", "1", "--rate", "4000"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: id)
        r.proof = proof
        r.after = .stop
        r.parameters.maxRounds = 3
        r.parameters.downtimeLimitMs = 0.001  // forced cutover after round 3, writers still running
        r.parameters.autoConverge = false
        #if DEBUG
        r.testHooks.dropFirstFinalDirtyPage = sabotage
        #endif
        let migration = SenderMigration(request: r, connect: try connector(pki))
        migration.run()
        return (migration.status, receiver, workload)
    }

    /// The default proof is the ledger's: the image stores a v3 digest equal
    /// to the sender's, which a re-read of the image (not the ledger) gives too.
    @Test func incrementalProofIsTheLedgerDigestOfTheImage() throws {
        let (s, receiver, workload) = try migrate(.incremental, id: "proof-incr")
        defer { workload.kill(); workload.wait() }
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(s.proof == "incremental")
        #expect(s.fullProofMs == nil)
        let store = try openImageWhenReleased(receiver.images + "/proof-incr")
        defer { store.close() }
        #expect(store.finalDigest?.version == .v3)
        #expect(store.finalDigest?.hex == s.digest)
        #expect(try store.computeDigest(version: .v3) == store.finalDigest, "the ledger describes the image")
        #expect(try ImageVerifier.verify(store, pid: workload.pid).ok)
    }

    /// `both`: the frozen memory re-read in v3 equals the ledger; `full`: today's v2 on both sides.
    @Test func bothAndFullProofs() throws {
        let (b, rb, wb) = try migrate(.both, id: "proof-both")
        defer { wb.kill(); wb.wait() }
        #expect(b.state == .completed, "\(b.error ?? "")")
        #expect(b.proof == "both")
        #expect(b.fullProofMs != nil && b.fullProofInFrozenWindow == true)
        let sb = try openImageWhenReleased(rb.images + "/proof-both")
        #expect(sb.finalDigest?.version == .v3)
        sb.close()

        let (f, rf, wf) = try migrate(.full, id: "proof-full")
        defer { wf.kill(); wf.wait() }
        #expect(f.state == .completed, "\(f.error ?? "")")
        #expect(f.proof == "full")
        #expect(f.fullProofMs != nil)
        let sf = try openImageWhenReleased(rf.images + "/proof-full")
        #expect(sf.finalDigest?.version == .v2)
        #expect(try ImageVerifier.verify(sf, pid: wf.pid).ok)
        sf.close()
    }

    #if DEBUG
    /// A tracking bug (the sabotage leaves one written page out of the frozen
    /// delta): both ledgers agree, so the incremental proof passes a wrong
    /// image; re-reading the frozen memory (`both`, `full`) fails the
    /// migration and the source runs on.
    @Test func aMissedPagePassesTheIncrementalProofButNotTheFullOne() throws {
        let (i, ri, wi) = try migrate(.incremental, id: "sabotage-incr", sabotage: true)
        defer { wi.kill(); wi.wait() }
        #expect(i.state == .completed, "the incremental proof cannot see it: \(i.error ?? "")")
        let store = try openImageWhenReleased(ri.images + "/sabotage-incr")
        let report = try ImageVerifier.verify(store, pid: wi.pid)
        #expect(!report.ok, "the image misses the page")
        store.close()

        for mode in [ProofMode.both, .full] {
            let (s, receiver, workload) = try migrate(mode, id: "sabotage-\(mode)", sabotage: true)
            defer { workload.kill(); workload.wait() }
            #expect(s.state == .failed, "\(mode)")
            #expect(s.error?.contains("digest") == true, "\(mode): \(s.error ?? "")")
            let state = ProcFS.state(pid: workload.pid)
            #expect(state != "T" && state != "t", "\(mode): the source runs after a failed proof (state \(String(describing: state)))")
            let image = try openImageWhenReleased(receiver.images + "/sabotage-\(mode)")
            #expect(image.state != .complete, "\(mode): \(image.state)")
            image.close()
        }
    }
    #endif

    /// A sender whose final digest is not the ledger of what it sent (it lies,
    /// or its ledger is wrong) is refused; the true ledger digest is acknowledged.
    @Test func theReceiverChecksTheLedgerDigest() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        for (id, honest) in [("ledger-liar", false), ("ledger-honest", true)] {
            let stream = try TLSClientContext(configuration: pki.configuration("sender")).connect(host: "127.0.0.1", port: receiver.port)
                .boundingReads()
            let channel = FrameChannel(stream: stream)
            try channel.sendPreamble()
            try channel.send(.hello(Hello(capabilities: [.zstd, .digestV2, .ledgerDigest], migrationID: id, senderName: "raw-test")))
            guard case .welcome(let w) = try channel.receive() else { throw TestSetupError("no WELCOME") }
            #expect(w.capabilities.contains(.ledgerDigest))
            let sender = RawSenderChannel(channel)
            try sender.round(1, pages: [(RawSender.base, 0x11), (RawSender.base + 4096, 0x22)])
            try sender.round(2, pages: [(RawSender.base + 4096, 0x33)])
            let ledger = PageLedger()
            try RawSender.page(0x11).withUnsafeBytes { try ledger.record(address: RawSender.base, pages: $0) }
            try RawSender.page(honest ? 0x33 : 0x22).withUnsafeBytes { try ledger.record(address: RawSender.base + 4096, pages: $0) }
            let digest = ledger.digest(layout: [RawSender.region.start..<RawSender.region.end])
            let wire = WireDigest(high: digest.high, low: digest.low)
            try channel.send(.layout(Layout(round: 3, regions: [RawSender.region])))
            try channel.send(.roundEnd(RoundEnd(round: 3, stats: RoundStats(), finalDigest: wire)))
            switch try channel.receive() {
            case .roundAck(let ack):
                #expect(honest, "a wrong ledger digest was acknowledged")
                #expect(ack.imageDigest == wire)
            case .error(let e):
                #expect(!honest, "\(e)")
                #expect(e.code == .digestMismatch)
            case let other:
                Issue.record("unexpected \(other)")
            }
            stream.close()
            let image = try openImageWhenReleased(receiver.images + "/" + id)
            #expect(image.state == (honest ? .complete : .failed))
            if honest { #expect(image.finalDigest == digest) }
            image.close()
        }
    }

    /// The image is changed on disk while the receiver is down (after the
    /// commit of round 0): the restarted receiver rebuilds its ledger from the
    /// image it finds, so the incremental proof sees the change.
    @Test func anImageCorruptedWhileTheReceiverWasDownIsCaught() throws {
        let pki = try TestPKI()
        let first = try ReceiverProcess(pki: pki)
        let images = first.images, port = first.port
        // Idle: nothing re-sends the corrupted page after the restart.
        let workload = try startWorkload(["--size", "16M", "--mix", "zero=0,text=0,random=100"], control: true)
        defer { workload.kill(); workload.wait() }
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: port, id: "corrupt-down")
        r.parameters.downtimeLimitMs = -1  // rounds until asked
        r.parameters.maxRounds = 1_000_000
        r.parameters.autoConverge = false
        r.parameters.resumeTimeoutSeconds = 60
        let migration = SenderMigration(request: r, connect: try connector(pki))
        let done = migration.runInBackground()
        // Round 1 starts only once every chunk of round 0 is acknowledged (committed).
        while migration.status.round < 1 && !migration.status.state.isFinal { usleep(2_000) }
        first.child.kill(SIGKILL)
        first.child.wait()
        try corruptOneDataByte(images + "/corrupt-down")
        let second = try ReceiverProcess(pki: pki, images: images, port: port)
        while migration.status.resumes == 0 && !migration.status.state.isFinal { usleep(2_000) }
        migration.requestCutover()
        #expect(done.wait(timeout: .now() + 180) == .success)
        let s = migration.status
        #expect(s.resumes >= 1)
        #expect(s.state == .failed)
        #expect(s.error?.contains("digest") == true, "\(s.error ?? "")")
        _ = second
    }

    /// Flips one byte of the first data block of the largest region file.
    func corruptOneDataByte(_ directory: String) throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
        let sized = names.compactMap { n -> (String, Int)? in
            let path = directory + "/" + n
            guard let a = try? FileManager.default.attributesOfItem(atPath: path), a[.type] as? FileAttributeType == .typeRegular,
                  let size = a[.size] as? Int else { return nil }
            return (path, size)
        }
        guard let (path, _) = sized.filter({ $0.0.hasSuffix(".bin") && $0.0.contains("/mem-") }).max(by: { $0.1 < $1.1 }) else {
            throw TestSetupError("no region file in \(names)")
        }
        let fd = open(path, O_RDWR)
        guard fd >= 0 else { throw TestSetupError("open \(path)") }
        defer { close(fd) }
        let at = lseek(fd, 0, 3)  // SEEK_DATA (Glibc does not export it)
        guard at >= 0 else { throw TestSetupError("no data in \(path)") }
        var byte: UInt8 = 0
        guard pread(fd, &byte, 1, at) == 1 else { throw TestSetupError("pread \(path)") }
        byte ^= 0xFF
        guard pwrite(fd, &byte, 1, at) == 1 else { throw TestSetupError("pwrite \(path)") }
        fsync(fd)
    }
}

/// Rounds of whole pages on a channel that has shaken hands.
struct RawSenderChannel {
    let channel: FrameChannel
    init(_ channel: FrameChannel) { self.channel = channel }

    /// LAYOUT (the test region), one raw batch per page, ROUND_END, ROUND_ACK.
    func round(_ round: UInt64, pages: [(UInt64, UInt8)]) throws {
        try channel.send(.layout(Layout(round: round, regions: [RawSender.region])))
        for (address, value) in pages {
            let bytes = RawSender.page(value)
            let header = PageBatchHeader(round: round, encoding: .raw, runs: [PageRun(start: address, pageCount: 1)],
                                         uncompressedLength: 4096, checksum: bytes.withUnsafeBytes { PageChecksum.xxh3_64($0) }, payloadLength: 4096)
            try bytes.withUnsafeBytes { try channel.sendPageBatch(header, payload: $0) }
        }
        try channel.send(.roundEnd(RoundEnd(round: round, stats: RoundStats(pages: UInt64(pages.count), batches: UInt64(pages.count)))))
        guard case .roundAck = try channel.receive() else { throw TestSetupError("no ROUND_ACK \(round)") }
    }
}

import CZstd
import Foundation
import Glibc
import MemhaulDigest
import MemhaulImage
import MemhaulTLS
import MemhaulWire
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// A hand-driven sender speaking the wire protocol over real mutual TLS, so a
/// test can commit a good round and then misbehave in a chosen way.
final class RawSender {
    let stream: TLSStream
    let channel: FrameChannel
    static let base: UInt64 = 0x7f00_0000_0000
    static let region = RegionDescriptor(start: base, end: base + 64 * 4096, protection: [.read, .write])

    /// The WELCOME the receiver answered with.
    private(set) var welcome: Welcome?

    /// Connects with the certificate `role` (`<role>.pem` in the PKI directory)
    /// and shakes hands; with `resumeFrom`, as a resuming sender.
    /// `extra`: capabilities offered beyond zstd (and resume).
    convenience init(_ receiver: TestReceiver, _ pki: TestPKI, id: String, role: String = "sender", resumeFrom: UInt64? = nil,
                     extra: Capabilities = []) throws {
        try self.init(port: receiver.port, pki, id: id, role: role, resumeFrom: resumeFrom, extra: extra)
    }

    init(port: UInt16, _ pki: TestPKI, id: String, role: String = "sender", resumeFrom: UInt64? = nil, extra: Capabilities = []) throws {
        let context = try TLSClientContext(configuration: pki.configuration(role))
        stream = try context.connect(host: "127.0.0.1", port: port).boundingReads()
        channel = FrameChannel(stream: stream)
        try channel.sendPreamble()
        try channel.send(.hello(Hello(capabilities: (resumeFrom == nil ? Capabilities.zstd : [.zstd, .resume]).union(extra), migrationID: id,
                                      senderName: "raw-test", resumeFromRound: resumeFrom)))
        switch try channel.receive() {
        case .welcome(let w): welcome = w
        case .error(let e): throw RawSenderRefused(error: e)
        case let other: throw TestSetupError("expected WELCOME, got \(other)")
        }
    }

    /// Page `i` of the test region, filled with `value`.
    static func page(_ value: UInt8) -> [UInt8] { [UInt8](repeating: value, count: 4096) }

    func batch(round: UInt64, at address: UInt64, _ bytes: [UInt8], encoding: PageEncoding = .raw, payload: [UInt8]? = nil, checksum: UInt64? = nil) throws {
        let sum = checksum ?? bytes.withUnsafeBytes { PageChecksum.xxh3_64($0) }
        let body = payload ?? bytes
        let header = PageBatchHeader(round: round, encoding: encoding, runs: [PageRun(start: address, pageCount: UInt32(bytes.count / 4096))],
                                     uncompressedLength: UInt32(bytes.count), checksum: sum, payloadLength: UInt32(body.count))
        try body.withUnsafeBytes { try channel.sendPageBatch(header, payload: $0) }
    }

    /// A full good round: layout + one page + ROUND_END, then waits for the ack.
    func goodRound(_ round: UInt64, value: UInt8) throws {
        try channel.send(.layout(Layout(round: round, regions: [Self.region])))
        try batch(round: round, at: Self.base, Self.page(value))
        try channel.send(.roundEnd(RoundEnd(round: round, stats: RoundStats(pages: 1, batches: 1))))
        guard case .roundAck = try channel.receive() else { throw TestSetupError("no ROUND_ACK") }
    }

    /// The receiver's answer to misbehaviour: an ERROR frame, or end of stream.
    func expectError() -> ErrorMessage? {
        do {
            while true {
                if case .error(let e) = try channel.receive() { return e }
            }
        } catch {
            return nil
        }
    }
}

/// The receiver answered HELLO with ERROR.
struct RawSenderRefused: Error, CustomStringConvertible {
    var error: ErrorMessage
    var description: String { "refused: \(error.code) \(error.message)" }
}

@Suite(.serialized) struct ReceiverHostileInputTests {
    /// Commits round 1, misbehaves in round 2, and checks: the peer gets the
    /// typed error, the log says why, the image still opens at round 1 with
    /// round 1's bytes, and the receiver serves a new migration afterwards.
    func misbehave(_ name: String, expect code: ErrorCode?, offering extra: Capabilities = [], _ act: (RawSender) throws -> Void) throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let sender = try RawSender(receiver, pki, id: name, extra: extra)
        try sender.goodRound(1, value: 0x11)
        try sender.channel.send(.layout(Layout(round: 2, regions: [RawSender.region])))
        try act(sender)
        let error = sender.expectError()
        if let code { #expect(error?.code == code, "\(name): got \(String(describing: error))") }
        sender.stream.close()
        // The log names the failure.
        var logged = false
        for _ in 0..<500 where !logged {
            logged = receiver.logLines.contains { $0.contains(name) && !$0.contains("→") }
            if !logged { usleep(10_000) }
        }
        #expect(logged, "\(name): nothing logged: \(receiver.logLines)")
        // The committed round is intact.
        var store: ImageStore?
        for _ in 0..<500 where store == nil {
            store = try? ImageStore.open(directory: receiver.images + "/" + name)
            if store == nil { usleep(10_000) }
        }
        let image = try #require(store)
        defer { image.close() }
        #expect(image.committedRound == 1)
        var page = [UInt8](repeating: 0, count: 4096)
        try page.withUnsafeMutableBytes { try image.read(at: RawSender.base, into: $0) }
        #expect(page == RawSender.page(0x11))
        // And the receiver still serves.
        let next = try RawSender(receiver, pki, id: name + "-after")
        try next.goodRound(1, value: 0x22)
    }

    @Test func addressOutsideTheLayout() throws {
        try misbehave("outside", expect: .outsideLayout) { s in
            try s.batch(round: 2, at: RawSender.base + 1000 * 4096, RawSender.page(0x33))
        }
    }

    @Test func badChecksum() throws {
        try misbehave("checksum", expect: .checksumMismatch) { s in
            try s.batch(round: 2, at: RawSender.base, RawSender.page(0x33), checksum: 12345)
        }
    }

    @Test func badZstdPayload() throws {
        try misbehave("badzstd", expect: .decompressionFailed) { s in
            try s.batch(round: 2, at: RawSender.base, RawSender.page(0x33), encoding: .zstd, payload: [UInt8](repeating: 0xAB, count: 200))
        }
    }

    @Test func decompressionBomb() throws {
        // A valid zstd frame of 64 MiB of zeros declared as one 4 KiB page.
        let big = [UInt8](repeating: 0, count: 64 << 20)
        var out = [UInt8](repeating: 0, count: ZSTD_compressBound(big.count))
        let n = out.withUnsafeMutableBytes { o in big.withUnsafeBytes { i in ZSTD_compress(o.baseAddress, o.count, i.baseAddress, i.count, 1) } }
        #expect(ZSTD_isError(n) == 0)
        try misbehave("bomb", expect: .decompressionFailed) { s in
            try s.batch(round: 2, at: RawSender.base, RawSender.page(0), encoding: .zstd, payload: Array(out[..<n]))
        }
    }

    @Test func oversizedLength() throws {
        try misbehave("oversized", expect: .malformedFrame) { s in
            // Frame header: type PAGE_BATCH, flags 0, reserved 0, length 0xFFFFFFF0, sequence.
            var raw: [UInt8] = [FrameType.pageBatch.rawValue, 0, 0, 0]
            withUnsafeBytes(of: UInt32(0xFFFF_FFF0).littleEndian) { raw += $0 }
            withUnsafeBytes(of: UInt32(5).littleEndian) { raw += $0 }
            try raw.withUnsafeBytes { try s.stream.writeAll($0) }
        }
    }

    @Test func randomBytesAfterTheHandshake() throws {
        try misbehave("random", expect: .malformedFrame) { s in
            var rng = SystemRandomNumberGenerator()
            let junk = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &rng) }
            try junk.withUnsafeBytes { try s.stream.writeAll($0) }
        }
    }

    @Test func truncatedFrameThenHangUp() throws {
        try misbehave("truncated", expect: nil) { s in
            var raw: [UInt8] = [FrameType.pageBatch.rawValue, 0, 0, 0]
            withUnsafeBytes(of: UInt32(5000).littleEndian) { raw += $0 }
            withUnsafeBytes(of: UInt32(5).littleEndian) { raw += $0 }
            raw += [UInt8](repeating: 7, count: 100)
            try raw.withUnsafeBytes { try s.stream.writeAll($0) }
            s.stream.shutdown()
        }
    }

    /// Found with the receiver fuzz harness: a LAYOUT of 2^63 bytes and an empty
    /// round overflowed the checkpoint threshold (twice the layout) and killed the
    /// receiver process. Now the layout is refused and the receiver serves on.
    @Test func layoutBeyondTheAddressSpace() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let sender = try RawSender(receiver, pki, id: "huge")
        try sender.goodRound(1, value: 0x11)
        try sender.channel.send(.layout(Layout(round: 2, regions: [RegionDescriptor(start: 0, end: 1 << 63, protection: [.read])])))
        try sender.channel.send(.roundEnd(RoundEnd(round: 2, stats: RoundStats())))
        let error = sender.expectError()
        #expect(error?.code == .roundMismatch, "\(String(describing: error))")
        sender.stream.close()
        var store: ImageStore?
        for _ in 0..<500 where store == nil {
            store = try? ImageStore.open(directory: receiver.images + "/huge")
            if store == nil { usleep(10_000) }
        }
        let image = try #require(store)
        #expect(image.committedRound == 1)
        image.close()
        let next = try RawSender(receiver, pki, id: "huge-after")
        try next.goodRound(1, value: 0x22)
    }

    /// Found by Fuzz/run --target receiver: an ERROR after the final round's
    /// acknowledgement marked the verified, complete image failed.
    @Test func errorAfterTheFinalRoundKeepsTheImageComplete() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let sender = try RawSender(receiver, pki, id: "late-error")
        try sender.goodRound(1, value: 0x5A)
        // The verification round: the digest of the region with page 0 = 0x5A, the rest zeros.
        let digester = MemoryDigester()
        digester.beginRegion(start: RawSender.region.start, end: RawSender.region.end)
        RawSender.page(0x5A).withUnsafeBytes { digester.update($0) }
        digester.updateZeros(count: 63 * 4096)
        let digest = digester.finalize()
        try sender.channel.send(.layout(Layout(round: 2, regions: [RawSender.region])))
        try sender.channel.send(.roundEnd(RoundEnd(round: 2, stats: RoundStats(), finalDigest: WireDigest(high: digest.high, low: digest.low))))
        guard case .roundAck(let ack) = try sender.channel.receive() else { Issue.record("no final ROUND_ACK"); return }
        #expect(ack.imageDigest == WireDigest(high: digest.high, low: digest.low))
        try sender.channel.send(.error(ErrorMessage(code: .cancelled, message: "too late")))
        _ = sender.expectError()
        sender.stream.close()
        var store: ImageStore?
        for _ in 0..<500 where store == nil {
            store = try? ImageStore.open(directory: receiver.images + "/late-error")
            if store == nil { usleep(10_000) }
        }
        let image = try #require(store)
        defer { image.close() }
        #expect(image.state == .complete)
        #expect(image.committedRound == 2)
        #expect(image.finalDigest == digest)
    }

    @Test func foreignCAExpiredAndPlaintextClientsAreRefused() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        // A client certificate from another CA.
        let foreign = try TestPKI()
        #expect(throws: (any Error).self) {
            _ = try TLSClientContext(configuration: TLSConfiguration(
                caFile: pki.directory + "/ca.pem", certificateFile: foreign.directory + "/sender.pem",
                privateKeyFile: foreign.directory + "/sender.key")).connect(host: "127.0.0.1", port: receiver.port)
        }
        // An expired client certificate from the right CA.
        let ca = try CertificateAuthority(
            certificatePEM: String(contentsOfFile: pki.directory + "/ca.pem", encoding: .utf8),
            privateKeyPEM: String(contentsOfFile: pki.directory + "/ca.key", encoding: .utf8))
        let now = Int64(time(nil))
        let expired = try ca.issue(commonName: "old-sender", usage: .clientAuth, notBefore: now - 7200, notAfter: now - 3600)
        let dir = temporaryDirectory("expired")
        try expired.certificatePEM.write(toFile: dir + "/sender.pem", atomically: true, encoding: .utf8)
        try expired.privateKeyPEM.write(toFile: dir + "/sender.key", atomically: true, encoding: .utf8)
        #expect(throws: (any Error).self) {
            _ = try TLSClientContext(configuration: TLSConfiguration(
                caFile: pki.directory + "/ca.pem", certificateFile: dir + "/sender.pem",
                privateKeyFile: dir + "/sender.key")).connect(host: "127.0.0.1", port: receiver.port)
        }
        // A plaintext client: the receiver drops it; our HELLO gets no WELCOME.
        let plain = try TCPStream.connect(host: "127.0.0.1", port: receiver.port)
        let channel = FrameChannel(stream: plain)
        #expect(throws: (any Error).self) {
            try channel.sendPreamble()
            try channel.send(.hello(Hello(capabilities: [], migrationID: "plain", senderName: "x")))
            _ = try channel.receive()
        }
        // Each refusal is logged, and no image was created.
        var refused = 0
        for _ in 0..<500 where refused < 3 {
            refused = receiver.logLines.filter { $0.contains("refused connection") }.count
            if refused < 3 { usleep(10_000) }
        }
        #expect(refused == 3, "\(receiver.logLines)")
        #expect((try? FileManager.default.contentsOfDirectory(atPath: receiver.images))?.isEmpty ?? true)
    }
}

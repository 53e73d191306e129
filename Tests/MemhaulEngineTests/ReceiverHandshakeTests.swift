import Foundation
import Glibc
import MemhaulImage
import MemhaulTLS
import MemhaulWire
import Testing
import MemhaulTestSupport
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver

/// HELLOs the receiver must refuse (Protocol/wire.md, HELLO and "Resume
/// handshake"), sent by hand over real mutual TLS to a real receiver.
@Suite(.serialized) struct ReceiverHandshakeTests {
    /// Sends one HELLO and returns the receiver's answer to it.
    func answer(to hello: Hello, _ receiver: TestReceiver, _ pki: TestPKI) throws -> Message {
        let stream = try TLSClientContext(configuration: pki.configuration("sender")).connect(host: "127.0.0.1", port: receiver.port)
            .boundingReads()
        defer { stream.close() }
        let channel = FrameChannel(stream: stream)
        try channel.sendPreamble()
        try channel.send(.hello(hello))
        return try channel.receive()
    }

    func expectNothingCreatedAndStillServing(_ receiver: TestReceiver, _ pki: TestPKI, _ id: String) throws {
        #expect(!FileManager.default.fileExists(atPath: receiver.images + "/" + id), "an image was created for \(id)")
        let next = try RawSender(receiver, pki, id: id + "-after")
        try next.goodRound(1, value: 0x42)
    }

    /// A resume of a migration the receiver has never seen: `resume-rejected`,
    /// where it used to create a fresh image and welcome the sender.
    @Test(arguments: [UInt64(0), 3])
    func resumeOfAnUnknownMigrationIsRejected(from round: UInt64) throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let id = "ghost-\(round)"
        let reply = try answer(to: Hello(capabilities: [.zstd, .resume, .keepalive], migrationID: id, senderName: "test", resumeFromRound: round), receiver, pki)
        guard case .error(let e) = reply else { Issue.record("expected ERROR resume-rejected, got \(reply)"); return }
        #expect(e.code == .resumeRejected, "\(e)")
        #expect(e.message.contains(id))
        #expect(receiver.waitForLog(id, "resume") != nil, "\(receiver.logLines)")
        try expectNothingCreatedAndStillServing(receiver, pki, id)
    }

    /// A HELLO whose version field names another major than the preamble's
    /// (1): `bad-hello`, where it used to be welcomed.
    @Test(arguments: [UInt16(0), 2, 0xFFFF])
    func helloWithAnotherMajorIsRefused(major: UInt16) throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let id = "major-\(major)"
        let hello = Hello(version: WireVersion(major: major, minor: 0), capabilities: [.zstd], migrationID: id, senderName: "test")
        let reply = try answer(to: hello, receiver, pki)
        guard case .error(let e) = reply else { Issue.record("expected ERROR bad-hello, got \(reply)"); return }
        #expect(e.code == .badHello, "\(e)")
        #expect(e.message.contains("version \(major).0"), "\(e)")
        try expectNothingCreatedAndStillServing(receiver, pki, id)
    }
}

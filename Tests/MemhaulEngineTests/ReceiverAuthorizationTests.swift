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

/// Every file of an image directory with its bytes: "untouched" means this
/// stays equal (manifest, journals, region files, owner record).
func imageSnapshot(_ directory: String) throws -> [String: Data] {
    var out: [String: Data] = [:]
    for name in try FileManager.default.contentsOfDirectory(atPath: directory) {
        out[name] = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name))
    }
    return out
}

/// Waits until no session holds the image (its flock is free), without
/// opening the store (an open recovers and checkpoints, which writes).
func waitUntilImageReleased(_ directory: String) throws {
    for _ in 0..<2000 {
        let fd = open(directory + "/migration.lock", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw TestSetupError("no lock file in \(directory)") }
        let free = flock(fd, LOCK_EX | LOCK_NB) == 0
        if free { flock(fd, LOCK_UN) }
        close(fd)
        if free { return }
        usleep(10_000)
    }
    throw TestSetupError("\(directory) stays locked")
}

/// HELLO with the certificate `role`; the receiver's answer must be ERROR.
func expectRefusal(port: UInt16, _ pki: TestPKI, role: String, id: String, resumeFrom: UInt64? = nil) throws -> ErrorMessage {
    do {
        let s = try RawSender(port: port, pki, id: id, role: role, resumeFrom: resumeFrom)
        s.stream.close()
        throw TestSetupError("\(role) was welcomed for \(id)")
    } catch let refused as RawSenderRefused {
        return refused.error
    }
}

@Suite(.serialized) struct ReceiverAuthorizationTests {
    /// A second sender certificate from the same CA, CN `sender-b`.
    static func pkiWithSecondSender() throws -> TestPKI {
        let pki = try TestPKI()
        _ = try CertificateBundle.issue(directory: pki.directory, name: "sender-b", role: .sender)
        return pki
    }

    /// Sender A (CN memhaul-sender) commits round 1 of x-1. Sender B (CN
    /// sender-b, same CA) tries to resume it while A is connected and after A's
    /// connection broke, and to start it afresh: each is refused with
    /// `unauthorized`, A's live connection is not cut, the log names both
    /// identities, and the image stays byte for byte the same. A then resumes
    /// and completes x-1 (digest verified), and `image inspect` shows A as owner.
    @Test func anotherSendersCertificateCannotWriteOrResumeTheImage() throws {
        let pki = try Self.pkiWithSecondSender()
        let receiver = try TestReceiver(pki: pki)
        let dir = receiver.images + "/x-1"
        let a = try RawSender(receiver, pki, id: "x-1")
        try a.goodRound(1, value: 0x11)

        // B while A is live: refused before any preemption, A carries on.
        let live = try expectRefusal(port: receiver.port, pki, role: "sender-b", id: "x-1", resumeFrom: 1)
        #expect(live.code == .unauthorized, "\(live)")
        try a.goodRound(2, value: 0x22)

        // A's connection breaks (no CLOSE): the image waits for A's resume.
        a.stream.close()
        try waitUntilImageReleased(dir)
        let before = try imageSnapshot(dir)
        #expect(before["owner"] != nil)
        #expect(try ImageStore.peek(directory: dir).committedRound == 2)

        // B resumes, then tries a fresh start of the same id: refused both times.
        let resume = try expectRefusal(port: receiver.port, pki, role: "sender-b", id: "x-1", resumeFrom: 2)
        #expect(resume.code == .unauthorized, "\(resume)")
        #expect(!resume.message.contains("memhaul-sender"), "the refusal must not reveal the owner: \(resume.message)")
        let fresh = try expectRefusal(port: receiver.port, pki, role: "sender-b", id: "x-1")
        #expect(fresh.code == .unauthorized, "\(fresh)")
        let line = receiver.waitForLog("x-1", "unauthorized", "CN=sender-b", "CN=memhaul-sender")
        #expect(line != nil, "no log line naming both identities: \(receiver.logLines)")

        try waitUntilImageReleased(dir)
        #expect(try imageSnapshot(dir) == before, "B's attempts changed the image")
        let peeked = try ImageStore.peek(directory: dir)
        #expect(peeked.committedRound == 2)
        #expect(peeked.state == .inProgress)

        // The owner resumes and completes.
        let again = try RawSender(receiver, pki, id: "x-1", resumeFrom: 2)
        #expect(again.welcome?.lastCommittedRound == 2)
        try again.goodRound(3, value: 0x33)
        let digester = MemoryDigester()
        digester.beginRegion(start: RawSender.region.start, end: RawSender.region.end)
        RawSender.page(0x33).withUnsafeBytes { digester.update($0) }
        digester.updateZeros(count: Int(RawSender.region.end - RawSender.region.start) - 4096)
        let digest = digester.finalize()
        try again.channel.send(.layout(Layout(round: 4, regions: [RawSender.region])))
        try again.channel.send(.roundEnd(RoundEnd(round: 4, stats: RoundStats(), finalDigest: WireDigest(high: digest.high, low: digest.low))))
        guard case .roundAck(let ack) = try again.channel.receive() else { throw TestSetupError("no final ROUND_ACK") }
        #expect(ack.imageDigest == WireDigest(high: digest.high, low: digest.low))
        try again.channel.send(.close(Close(reason: .complete)))
        again.stream.close()
        let store = try openImageWhenReleased(dir)
        #expect(store.state == .complete)
        store.close()

        // `image inspect` names the owner.
        let inspect = try ChildProcess([builtBinary("memhaul"), "image", "inspect", "--json", dir], stdin: .null)
        let json = try #require(try inspect.readLine())
        #expect(inspect.wait() == 0)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        let owner = try #require(object["owner"] as? [String: Any], "\(json)")
        #expect(owner["common_name"] as? String == "memhaul-sender")
        let senderPEM = try String(contentsOfFile: pki.directory + "/sender.pem", encoding: .utf8)
        #expect(owner["sha256"] as? String == (try PeerIdentity(certificatePEM: senderPEM)).sha256Fingerprint)
    }

    /// `memhaul receive --authorize` (the real binary) with a policy that gives
    /// sender-b only `b-*`: its HELLO for a-1 is refused and no image directory
    /// appears, b-1 is accepted; memhaul-sender keeps a-*. A real
    /// SenderMigration with sender-b's certificate fails at once with the
    /// receiver's reason (no resume attempts) and leaves its target untracked.
    @Test func policyConfinesEachSenderToItsMigrationIDs() throws {
        let pki = try Self.pkiWithSecondSender()
        let policy = temporaryDirectory("policy") + "/authorize"
        try """
            # sender            migration ids
            sender-b            b-*
            memhaul-sender      a-*   shared-?
            """.write(toFile: policy, atomically: true, encoding: .utf8)
        let receiver = try ReceiverProcess(pki: pki, extraArgs: ["--authorize", policy])

        let refused = try expectRefusal(port: receiver.port, pki, role: "sender-b", id: "a-1")
        #expect(refused.code == .unauthorized, "\(refused)")
        #expect(!FileManager.default.fileExists(atPath: receiver.images + "/a-1"))
        let refusedResume = try expectRefusal(port: receiver.port, pki, role: "sender-b", id: "a-1", resumeFrom: 0)
        #expect(refusedResume.code == .unauthorized, "\(refusedResume)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: receiver.images).isEmpty)

        let b = try RawSender(port: receiver.port, pki, id: "b-1", role: "sender-b")
        try b.goodRound(1, value: 0x44)
        let a = try RawSender(port: receiver.port, pki, id: "a-1")
        try a.goodRound(1, value: 0x55)
        let aElsewhere = try expectRefusal(port: receiver.port, pki, role: "sender", id: "b-2")
        #expect(aElsewhere.code == .unauthorized)
        // The receiver's status names each session's sender certificate.
        let ctl = try ChildProcess([builtBinary("memhaul"), "ctl", "status", "--socket", receiver.control], stdin: .null)
        var output = ""
        while let line = try ctl.readLine() { output += line }
        #expect(ctl.wait() == 0)
        let status = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any], "\(output)")
        let sessions = try #require((status["result"] as? [String: Any])?["sessions"] as? [[String: Any]], "\(output)")
        let b1 = try #require(sessions.first { $0["migration"] as? String == "b-1" }, "\(output)")
        #expect((b1["sender"] as? [String: Any])?["common_name"] as? String == "sender-b", "\(output)")
        #expect(sessions.contains { $0["migration"] as? String == "b-2" && $0["state"] as? String == "failed" }, "\(output)")
        b.stream.close()
        a.stream.close()

        // A real migration by sender-b into an id it may not write.
        let workload = try startWorkload(["--size", "8M"])
        let context = try TLSClientContext(configuration: pki.configuration("sender-b"))
        let migration = SenderMigration(
            request: MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "a-2"),
            connect: { r in try context.connect(host: r.host, port: r.port) })
        migration.run()
        let s = migration.status
        #expect(s.state == .failed)
        #expect(s.error?.contains("unauthorized") == true, "\(s.error ?? "")")
        #expect(s.resumes == 0)
        #expect(!FileManager.default.fileExists(atPath: receiver.images + "/a-2"))
        #expect(!workload.holdsUserfaultfd && !workload.hasUffdWriteProtect)
    }

    /// Without a policy, a new id from any CA-signed sender is accepted (the
    /// binding alone); an image made without TLS has no owner, and a sender
    /// with a certificate may not take it over.
    @Test func withoutAPolicyAnySenderStartsAndOwnerlessImagesAreNotTakenOver() throws {
        let pki = try Self.pkiWithSecondSender()
        let images = temporaryDirectory("images")
        do {
            let plain = try TestReceiver(pki: nil, images: images)
            let stream = try TCPStream.connect(host: "127.0.0.1", port: plain.port).boundingReads()
            let channel = FrameChannel(stream: stream)
            try channel.sendPreamble()
            try channel.send(.hello(Hello(capabilities: [], migrationID: "plain-1", senderName: "x")))
            guard case .welcome = try channel.receive() else { throw TestSetupError("no WELCOME without TLS") }
            stream.close()
            try waitUntilImageReleased(images + "/plain-1")
            #expect(try ImageStore.owner(directory: images + "/plain-1") == nil)
        }
        let receiver = try TestReceiver(pki: pki, images: images)
        let b = try RawSender(receiver, pki, id: "anything-1", role: "sender-b")
        try b.goodRound(1, value: 0x66)
        let taken = try expectRefusal(port: receiver.port, pki, role: "sender", id: "plain-1", resumeFrom: 0)
        #expect(taken.code == .unauthorized, "\(taken)")
    }

    @Test func policyFilesParseAndBadLinesNameTheirNumber() throws {
        let fp = String(repeating: "ab", count: 32)
        let colons = stride(from: 0, to: 64, by: 2).map { i in fp.dropFirst(i).prefix(2).uppercased() }.joined(separator: ":")
        let policy = try AuthorizationPolicy(parsing: """
            # comment line

            host-a   m-hostA-*   # trailing comment
            sha256:\(colons)\tb-?
            *        shared-*
            """, source: "p")
        #expect(policy.rules.count == 3)
        let a = ImageOwner(fingerprint: String(repeating: "0", count: 64), commonName: "host-a", subject: "")
        let b = ImageOwner(fingerprint: fp, commonName: "host-b", subject: "")
        #expect(policy.allows(a, migrationID: "m-hostA-1234"))
        #expect(!policy.allows(a, migrationID: "m-hostB-1"))
        #expect(!policy.allows(a, migrationID: "xm-hostA-1"))
        #expect(policy.allows(b, migrationID: "b-1"))
        #expect(!policy.allows(b, migrationID: "b-12"))
        #expect(policy.allows(a, migrationID: "shared-x") && policy.allows(b, migrationID: "shared-"))
        #expect(!policy.allows(b, migrationID: "m-hostA-1"))
        // A certificate without a CN is matched by fingerprint only.
        #expect(!policy.allows(ImageOwner(fingerprint: fp, commonName: "", subject: ""), migrationID: "m-hostA-1"))
        #expect(try AuthorizationPolicy(parsing: "# nothing\n").rules.isEmpty)
        // The shipped example parses.
        let example = try AuthorizationPolicy.load(path: repositoryRoot + "/deploy/authorize.example")
        #expect(example.rules.map(\.sender) == [.commonName("hostA-sender"), .commonName("hostB-sender")])

        for (text, line, words) in [
            ("ok a-*\nlonely\n", 2, "no migration-id pattern"),
            ("ok a-*\n\n# x\nsha256:1234 a-*\n", 4, "64 hex digits"),
            ("ok a/b\n", 1, "pattern a/b"),
            ("ok a-* [ab]\n", 1, "pattern [ab]"),
        ] {
            let e = #expect(throws: AuthorizationPolicyError.self) { try AuthorizationPolicy(parsing: text, source: "f") }
            #expect(e?.line == line && e?.description.hasPrefix("f:\(line): ") == true && e?.message.contains(words) == true,
                    "\(String(describing: e))")
        }
        for (pattern, id, match) in [
            ("*", "x", true), ("a*b*c", "aXXbYc", true), ("a*b*c", "aXXbYcd", false), ("a?c", "abc", true),
            ("a?c", "ac", false), ("**", "", true), ("m-*-1", "m-a-b-1", true), ("abc", "abcd", false),
        ] {
            #expect(AuthorizationPolicy.glob(pattern, matches: id) == match, "\(pattern) ~ \(id)")
        }
    }

    @Test func reloadSwapsThePolicyAndKeepsTheOldOneWhenTheNewFileIsBad() throws {
        let path = temporaryDirectory("policy") + "/authorize"
        try "sender-b b-*\n".write(toFile: path, atomically: true, encoding: .utf8)
        let auth = try ReceiverAuthorization(path: path)
        let b = ImageOwner(fingerprint: String(repeating: "1", count: 64), commonName: "sender-b", subject: "")
        #expect(!auth.current.allows(b, migrationID: "c-1"))
        try "sender-b b-* c-*\n".write(toFile: path, atomically: true, encoding: .utf8)
        try auth.reload()
        #expect(auth.current.allows(b, migrationID: "c-1"))
        try "sender-b\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: AuthorizationPolicyError.self) { try auth.reload() }
        #expect(auth.current.allows(b, migrationID: "c-1"))
    }
}

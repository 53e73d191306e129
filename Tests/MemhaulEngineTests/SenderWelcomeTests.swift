import Foundation
import Glibc
import MemhaulTLS
import MemhaulWire
import Testing
import MemhaulTestSupport
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver

/// A frame-level man in the middle over real mutual TLS: terminates the
/// sender's TLS with the receiver certificate, dials the real receiver with the
/// sender certificate, forwards every frame, rewrites the WELCOME, records what
/// the sender sends, and can cut both connections after N ROUND_ACKs.
final class WelcomeRewritingProxy: @unchecked Sendable {  // counters behind `lock`
    let port: UInt16
    private let listener: TCPListener
    private let lock = NSLock()
    private var _connections = 0
    private var _senderFrames: [FrameType] = []
    private var _zstdBatches = 0
    private var _rawBatches = 0

    var connections: Int { lock.withLock { _connections } }
    var senderFrames: [FrameType] { lock.withLock { _senderFrames } }
    var zstdBatches: Int { lock.withLock { _zstdBatches } }
    var rawBatches: Int { lock.withLock { _rawBatches } }

    init(pki: TestPKI, upstream: UInt16, cutAfterAcks: Int? = nil, rewrite: @escaping @Sendable (Welcome) -> Welcome) throws {
        listener = try TCPListener(host: "127.0.0.1", port: 0)
        port = listener.port
        let server = try TLSServerContext(configuration: pki.configuration("receiver"))
        let client = try TLSClientContext(configuration: pki.configuration("sender"))
        let listener = self.listener
        Thread.detachNewThread { [self] in
            while let tcp = try? listener.accept() {
                lock.withLock { _connections += 1 }
                guard let down = try? server.accept(on: tcp),
                      let up = try? client.connect(host: "127.0.0.1", port: upstream) else { tcp.close(); continue }
                let toSender = FrameChannel(stream: down), toReceiver = FrameChannel(stream: up)
                let cut: @Sendable () -> Void = {
                    _ = Glibc.shutdown(down.transport.fileDescriptor, Int32(SHUT_RDWR))
                    _ = Glibc.shutdown(up.transport.fileDescriptor, Int32(SHUT_RDWR))
                }
                Thread.detachNewThread { [self] in
                    defer { cut() }
                    guard (try? toSender.sendPreamble()) != nil else { return }
                    while let m = try? toSender.receive() {
                        lock.withLock {
                            _senderFrames.append(m.frameType)
                            if case .pageBatch(let b) = m {
                                if b.header.encoding == .zstd { _zstdBatches += 1 } else { _rawBatches += 1 }
                            }
                        }
                        guard (try? toReceiver.send(m)) != nil else { return }
                    }
                }
                Thread.detachNewThread {
                    defer { cut() }
                    guard (try? toReceiver.sendPreamble()) != nil else { return }
                    var acks = 0
                    while var m = try? toReceiver.receive() {
                        if case .welcome(let w) = m { m = .welcome(rewrite(w)) }
                        if case .roundAck = m { acks += 1 }
                        guard (try? toSender.send(m)) != nil else { return }
                        if let n = cutAfterAcks, acks >= n { return }
                    }
                }
            }
        }
    }

    deinit { listener.close() }
}

/// The sender uses only what WELCOME accepts and refuses a WELCOME that lies
/// (Protocol/wire.md, WELCOME).
@Suite(.serialized) struct SenderWelcomeTests {
    func migration(_ workload: WorkloadProcess, through proxy: WelcomeRewritingProxy, _ pki: TestPKI, id: String,
                   _ configure: (inout MigrationRequest) -> Void = { _ in }) throws -> MigrationStatus {
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: proxy.port, id: id)
        r.after = .resume
        // A safety bound only: every receiver here answers, and what is judged is
        // the answer. The default 10 s includes the fsyncs of the new image behind
        // whatever else the shared disk is writing (CI runs benches beside tests).
        r.deadlines.welcome = 120
        configure(&r)
        let migration = SenderMigration(request: r, connect: try connector(pki))
        migration.run()
        return migration.status
    }

    /// A receiver that accepts none of zstd, keepalive and resume: the sender
    /// sends raw batches only and no KEEPALIVE (its pre-freeze drain is one),
    /// and still completes.
    @Test func nothingAcceptedMeansRawPagesAndNoKeepalive() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        // digestV2, ledgerDigest and receiverLoad are left as the receiver answered: the receiver
        // computes the digest version its own WELCOME named and reports its load if it said so,
        // so taking them away here (a rewrite no TLS peer can do) would make the two sides
        // disagree (the sender refuses a load it did not accept).
        let proxy = try WelcomeRewritingProxy(pki: pki, upstream: receiver.port) { w in
            Welcome(version: w.version, capabilities: w.capabilities.intersection([.digestV2, .ledgerDigest, .receiverLoad]),
                    lastCommittedRound: w.lastCommittedRound)
        }
        let workload = try startWorkload(["--size", "16M", "--threads", "1", "--rate", "2000"])
        let status = try migration(workload, through: proxy, pki, id: "no-caps") { r in
            r.compressionLevel = 3
            r.parameters.maxRounds = 2
            r.parameters.downtimeLimitMs = 0.001  // forced cutover after round 2: through the drain
            r.parameters.autoConverge = false
        }
        #expect(status.state == .completed, "\(status.error ?? "")")
        #expect(status.cutoverReason?.contains("max rounds") == true, "\(status.cutoverReason ?? "")")
        #expect(!proxy.senderFrames.contains(.keepalive), "KEEPALIVE sent though not accepted")
        #expect(proxy.zstdBatches == 0, "\(proxy.zstdBatches) zstd batches though zstd was not accepted")
        #expect(proxy.rawBatches > 0)
        #expect(status.warnings.contains { $0.contains("zstd") }, "\(status.warnings)")
    }

    /// Without the resume capability a broken connection fails the migration
    /// at once (source resumed, untracked) instead of being resumed.
    @Test func noResumeWithoutTheResumeCapability() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        // Without final-delta-digest too: round 0 then stays short of the proof (a verification round follows).
        let proxy = try WelcomeRewritingProxy(pki: pki, upstream: receiver.port, cutAfterAcks: 1) { w in
            Welcome(version: w.version, capabilities: w.capabilities.subtracting([.resume, .finalDeltaDigest]), lastCommittedRound: w.lastCommittedRound)
        }
        let workload = try startWorkload(["--size", "16M", "--threads", "1", "--rate", "2000"])
        let status = try migration(workload, through: proxy, pki, id: "no-resume") { r in
            r.parameters.maxRounds = 0  // stop-and-copy: the cut comes after round 0's ack, before the proof
            r.parameters.resumeTimeoutSeconds = 30
        }
        #expect(status.state == .failed)
        #expect(status.resumes == 0)
        #expect(proxy.connections == 1, "the sender reconnected \(proxy.connections - 1) times")
        #expect(workload.state != "T", "the source runs on")
        #expect(!workload.hasUffdWriteProtect, "the source is untracked")
    }

    /// A ROUND_ACK carrying a load the sender's WELCOME did not accept (the
    /// proxy strips `receiverLoad` from WELCOME; the receiver still reports):
    /// a protocol violation, the source resumed and untracked.
    @Test func aLoadWithoutTheCapabilityIsRefused() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        // Without final-delta-digest too: round 0's ack is then not the final one (which carries no load).
        let proxy = try WelcomeRewritingProxy(pki: pki, upstream: receiver.port) { w in
            Welcome(version: w.version, capabilities: w.capabilities.subtracting([.receiverLoad, .finalDeltaDigest]), lastCommittedRound: w.lastCommittedRound)
        }
        let workload = try startWorkload(["--size", "16M", "--threads", "1", "--rate", "0"])
        let status = try migration(workload, through: proxy, pki, id: "load-unaccepted") { $0.parameters.maxRounds = 0 }
        #expect(status.state == .failed)
        #expect(status.error?.contains("carries a load without the receiver-load capability") == true, "\(status.error ?? "")")
        #expect(workload.state != "T", "the source runs on")
        #expect(!workload.hasUffdWriteProtect, "the source is untracked")
    }

    enum Lie: String, CaseIterable { case unofferedCapability, committedRoundOnAFreshStart, otherMajor }

    /// WELCOMEs a lying receiver could send: each fails the migration with a
    /// protocol violation naming WELCOME, before the target is touched.
    @Test(arguments: Lie.allCases)
    func lyingWelcomeIsRefused(_ lie: Lie) throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let proxy = try WelcomeRewritingProxy(pki: pki, upstream: receiver.port) { w in
            switch lie {
            case .unofferedCapability:
                Welcome(version: w.version, capabilities: w.capabilities.union(Capabilities(rawValue: 1 << 40)), lastCommittedRound: w.lastCommittedRound)
            case .committedRoundOnAFreshStart:
                Welcome(version: w.version, capabilities: w.capabilities, lastCommittedRound: 5)
            case .otherMajor:
                Welcome(version: WireVersion(major: 2, minor: 0), capabilities: w.capabilities, lastCommittedRound: w.lastCommittedRound)
            }
        }
        let workload = try startWorkload(["--size", "4M", "--threads", "1", "--rate", "0"])
        let status = try migration(workload, through: proxy, pki, id: "lie-\(lie.rawValue)")
        #expect(status.state == .failed, "\(lie): \(status.state)")
        #expect(status.error?.contains("protocol violation: WELCOME") == true, "\(lie): \(status.error ?? "")")
        #expect(proxy.connections == 1)
        #expect(workload.state != "T")
        #expect(!workload.hasUffdWriteProtect)
    }
}

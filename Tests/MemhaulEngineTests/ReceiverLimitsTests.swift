import Foundation
import Glibc
import MemhaulImage
import MemhaulTLS
import MemhaulWire
import Testing
@testable import MemhaulSession
import MemhaulSystem
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// A plain TCP connection to the receiver from a chosen loopback address
/// (127.0.0.x), so per-host limits can be told apart from the global one.
final class RawConnection {
    let fd: Int32

    init(to port: UInt16, from source: String = "127.0.0.1") throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSetupError("socket: \(errno)") }
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, source, &local.sin_addr)
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr)
        let bound = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        let connected = withUnsafePointer(to: &remote) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, connected == 0 else { close(fd); throw TestSetupError("bind/connect from \(source): \(errno)") }
        SafetyBound.boundReads(fd: fd)  // a test that waits longer fails instead of hanging
    }

    /// Blocks until the receiver closes the connection: true when it did
    /// (end of stream or reset), false when the safety timeout passed.
    func waitClosedByPeer() -> Bool {
        var byte: UInt8 = 0
        while true {
            let n = recv(fd, &byte, 1, 0)
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET || errno == EPIPE }
        }
    }

    deinit { close(fd) }
}

/// Stalled and dripping peers, and connection limits: none of them may tie up the receiver.
@Suite(.serialized) struct ReceiverLimitsTests {
    static func limits(handshake: Int64 = 10_000, frame: Int64 = 120_000, total: Int = 64, perHost: Int = 16) -> ReceiverLimits {
        var l = ReceiverLimits()
        l.handshakeTimeout = .milliseconds(handshake)
        l.frameTimeout = .milliseconds(frame)
        l.maxConnections = total
        l.maxConnectionsPerHost = perHost
        return l
    }

    @Test func clientThatConnectsAndSendsNothingIsCut() throws {
        let receiver = try TestReceiver(pki: try TestPKI(), limits: Self.limits(handshake: 1000))
        let stalled = try RawConnection(to: receiver.port)
        #expect(stalled.waitClosedByPeer(), "the receiver cut the silent client")
        #expect(receiver.waitForLog("cut connection", "handshake") != nil, "\(receiver.logLines)")
        #expect(receiver.agent.connections.openConnections == 0)
    }

    /// Each byte in its own TLS record, one per 200 ms: SO_RCVTIMEO never
    /// fires, only the handshake deadline does.
    @Test func clientDrippingItsHelloIsCutAtTheHandshakeDeadline() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki, limits: Self.limits(handshake: 1500))
        let stream = try TLSClientContext(configuration: pki.configuration("sender")).connect(host: "127.0.0.1", port: receiver.port)
        defer { stream.close() }
        var bytes: [UInt8] = []
        var encoder = FrameEncoder()
        encoder.encodePreamble(into: &bytes)
        try encoder.encode(.hello(Hello(capabilities: [.zstd], migrationID: "drip-hello", senderName: "drip")), into: &bytes)
        let written = drip(bytes, into: stream, every: 200_000)
        #expect(written < bytes.count, "the receiver cut the connection before the HELLO was complete")
        #expect(receiver.waitForLog("cut connection", "handshake") != nil, "\(receiver.logLines)")
        #expect(!FileManager.default.fileExists(atPath: receiver.images + "/drip-hello"), "no image for an unfinished HELLO")
    }

    /// An authenticated sender that commits a round, then sends its next
    /// frame at a byte per 200 ms, is cut at the frame deadline; its
    /// committed round stays, and the image waits for a resume.
    @Test func senderDrippingAFrameIsCutAndItsImageKept() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki, limits: Self.limits(frame: 1500))
        let sender = try RawSender(receiver, pki, id: "drip-frame")
        try sender.goodRound(1, value: 0x5a)
        var bytes: [UInt8] = []
        var encoder = FrameEncoder()
        try encoder.encode(.layout(Layout(round: 2, regions: [RawSender.region])), into: &bytes)
        let written = drip(bytes, into: sender.stream, every: 200_000)
        #expect(written < bytes.count, "the receiver cut the connection before the frame was complete")
        #expect(receiver.waitForLog("cut connection", "next frame") != nil, "\(receiver.logLines)")
        let image = try openImageWhenReleased(receiver.images + "/drip-frame")
        defer { image.close() }
        #expect(image.committedRound == 1)
        #expect(image.state != .failed, "a cut connection leaves the image open for a resume")
    }

    /// A receiver that is busy (here: a real migration with several stalled
    /// connections open) refuses connections over its limits at once, with a
    /// log line, and still completes the migration byte for byte.
    @Test func connectionLimitsRefuseExtraConnectionsAndTheMigrationStillCompletes() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki, limits: Self.limits(handshake: 120_000, total: 4, perHost: 2))
        let held = [try RawConnection(to: receiver.port, from: "127.0.0.2"), try RawConnection(to: receiver.port, from: "127.0.0.2")]
        // The third from the same host is over the per-host limit.
        try waitUntil { receiver.agent.connections.openConnections == 2 }
        let third = try RawConnection(to: receiver.port, from: "127.0.0.2")
        #expect(third.waitClosedByPeer())
        #expect(receiver.waitForLog("refused connection from 127.0.0.2", "limit 2 per host") != nil, "\(receiver.logLines)")
        // Two more from elsewhere fill the global limit: a fifth is refused.
        let other = try RawConnection(to: receiver.port, from: "127.0.0.3")
        var last: RawConnection? = try RawConnection(to: receiver.port, from: "127.0.0.5")
        try waitUntil { receiver.agent.connections.openConnections == 4 }
        let fifth = try RawConnection(to: receiver.port, from: "127.0.0.4")
        #expect(fifth.waitClosedByPeer())
        #expect(receiver.waitForLog("refused connection from 127.0.0.4", "limit 4") != nil, "\(receiver.logLines)")
        // One slot frees up; a real migration from 127.0.0.1 takes it and completes.
        last = nil
        try waitUntil { receiver.agent.connections.openConnections == 3 }
        let workload = try startWorkload(["--size", "32M", "--threads", "1", "--rate", "5000"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "limits-1")
        r.parameters.downtimeLimitMs = 300
        let migration = SenderMigration(request: r, connect: try connector(pki))
        let done = migration.runInBackground()
        #expect(done.wait(timeout: .now() + 120) == .success)
        #expect(migration.status.state == .completed, "\(migration.status.error ?? "")")
        try expectImageMatchesSource(receiver.images + "/limits-1", pid: workload.pid)
        _ = (held, other, last)
    }

    /// Writes `bytes` one at a time (each its own TLS record), pausing
    /// `micros` between them, until done or the receiver has cut the
    /// connection; returns how many were written.
    func drip(_ bytes: [UInt8], into stream: ByteStream, every micros: useconds_t) -> Int {
        for (i, b) in bytes.enumerated() {
            var one = b
            do { try withUnsafeBytes(of: &one) { try stream.writeAll($0) } } catch { return i }
            usleep(micros)
        }
        return bytes.count
    }

    func waitUntil(seconds: Double = 30, _ condition: () -> Bool) throws {
        let deadline = MonotonicClock.seconds() + seconds
        while !condition() {
            guard MonotonicClock.seconds() < deadline else { throw TestSetupError("condition not met within \(seconds) s") }
            usleep(5_000)
        }
    }
}

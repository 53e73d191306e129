import Foundation
import Testing
@testable import MemhaulSystem
@testable import MemhaulTLS
import MemhaulTestSupport

/// Real sockets on 127.0.0.1 / ::1 and real TLS 1.3.
@Suite struct TLSTests {
    let pki = CertificateFixtures.shared

    @Test func mutualTLSMovesMegabytesBothWays() throws {
        let harness = try TLSServerHarness(pki.server())
        let up = pattern(3 << 20, seed: 1)
        let down = pattern(3 << 20 + 17, seed: 2)
        let serverSide = Background { () -> (PeerIdentity?, Bool) in
            let tls = try harness.server.value()
            let got = try tls.readAll(count: up.count)
            try tls.write(down)
            // Clean close from the client reads as end of stream.
            var byte: UInt8 = 0
            let eof = try withUnsafeMutableBytes(of: &byte) { try tls.read(into: $0) } == 0
            tls.close()
            return (tls.peerIdentity, got == up && eof)
        }
        let client = try TLSClientContext(configuration: pki.client())
        let tls = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        #expect(tls.protocolVersion == "TLSv1.3")
        #expect(tls.cipherSuite == "TLS_AES_128_GCM_SHA256")
        #expect(tls.peerIdentity?.ipAddresses.contains("127.0.0.1") == true)
        #expect(tls.peerIdentity?.commonName == "receiver")
        try tls.write(up)
        #expect(try tls.readAll(count: down.count) == down)
        tls.close()
        let (senderIdentity, intact) = try serverSide.value()
        #expect(intact)
        #expect(senderIdentity?.commonName == "memhaul-sender")
        let expected = try PeerIdentity(certificatePEM: pki.pem("sender")).sha256Fingerprint
        #expect(senderIdentity?.sha256Fingerprint == expected)
        #expect(expected.count == 64)
    }

    @Test func oneServerContextServesConcurrentClients() throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let context = try TLSServerContext(configuration: pki.server())
        let clients = 4
        let servers = (0..<clients).map { _ in
            Background { () -> [UInt8] in
                let tls = try context.accept(on: try listener.accept(timeout: .seconds(30)))
                let got = try tls.readAll(count: 256 << 10)
                try tls.write(Array(got.prefix(16)))
                return got
            }
        }
        let clientContext = try TLSClientContext(configuration: pki.client())
        let senders = (0..<clients).map { i in
            Background { () -> Bool in
                let data = pattern(256 << 10, seed: UInt8(40 + i))
                let tls = try clientContext.connect(host: "127.0.0.1", port: listener.port)
                try tls.write(data)
                return try tls.readAll(count: 16) == Array(data.prefix(16))
            }
        }
        for s in senders { #expect(try s.value()) }
        var seeds = Set<[UInt8]>()
        for s in servers { seeds.insert(Array(try s.value().prefix(8))) }
        #expect(seeds.count == clients)
    }

    @Test(arguments: ["::1", "localhost"])
    func dialsByIPv6LiteralAndName(host: String) throws {
        let harness = try TLSServerHarness(pki.server(), host: host == "::1" ? "::1" : "127.0.0.1")
        let client = try TLSClientContext(configuration: pki.client())
        let tls = try client.connect(host: host, port: harness.listener.port)
        try tls.write([1, 2, 3])
        let server = try harness.server.value()
        #expect(try server.readAll(count: 3) == [1, 2, 3])
        if host == "::1" { #expect(tls.peerDescription.hasPrefix("[::1]:")) }
    }

    @Test func clientFromForeignCAIsRefused() throws {
        let harness = try TLSServerHarness(pki.server())
        let client = try TLSClientContext(configuration: pki.client("foreign-sender"))
        let clientError = #expect(throws: TLSError.self) {
            _ = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        }
        let serverError = harness.server.error() as? TLSError
        #expect(serverError?.kind == .certificateRejected)
        #expect(serverError?.message.contains("certificate verify failed") == true)
        #expect(serverError?.message.hasPrefix("TLS handshake with 127.0.0.1:") == true)
        #expect(clientError?.kind == .rejectedByPeer)
        #expect(clientError?.message.hasSuffix("peer refused: tlsv1 alert unknown ca (the peer does not trust the CA that issued our certificate)") == true)
    }

    @Test func expiredClientCertificateIsRefused() throws {
        let harness = try TLSServerHarness(pki.server())
        let client = try TLSClientContext(configuration: pki.client("expired-sender"))
        let clientError = #expect(throws: TLSError.self) {
            _ = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        }
        let serverError = harness.server.error() as? TLSError
        #expect(serverError?.kind == .certificateRejected)
        #expect(serverError?.message.contains("certificate has expired") == true)
        #expect(clientError?.kind == .rejectedByPeer)
    }

    @Test func clientWithoutCertificateIsRefused() throws {
        let harness = try TLSServerHarness(pki.server())
        let client = try TLSClientContext(configuration: TLSConfiguration(caFile: pki.ca))
        let clientError = #expect(throws: TLSError.self) {
            _ = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        }
        #expect((harness.server.error() as? TLSError)?.kind == .certificateRejected)
        #expect(clientError?.kind == .rejectedByPeer)
    }

    @Test func serverCertificateWithWrongNameIsRefused() throws {
        let harness = try TLSServerHarness(pki.server("wrong-name-receiver"))
        let client = try TLSClientContext(configuration: pki.client())
        let clientError = #expect(throws: TLSError.self) {
            _ = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        }
        #expect(clientError?.kind == .certificateRejected)
        #expect(clientError?.message.contains("certificate verify failed (IP address mismatch)") == true)
        #expect(harness.server.error() is TLSError)
    }

    /// Names are checked against SANs only (README, "Security"): a certificate
    /// whose CN is the name but which has no SAN is refused, where OpenSSL's
    /// default would fall back to the CN.
    @Test func serverNameOnlyInTheCommonNameIsRefused() throws {
        let harness = try TLSServerHarness(pki.server("cn-only-receiver"))
        let client = try TLSClientContext(configuration: pki.client(serverName: "localhost"))
        let clientError = #expect(throws: TLSError.self) {
            _ = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        }
        #expect(clientError?.kind == .certificateRejected)
        #expect(clientError?.message.contains("certificate verify failed (hostname mismatch)") == true, "\(String(describing: clientError))")
        #expect(harness.server.error() is TLSError)
    }

    @Test func serverNameInADNSSANIsAccepted() throws {
        let harness = try TLSServerHarness(pki.server())
        let client = try TLSClientContext(configuration: pki.client(serverName: "localhost"))
        let tls = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        #expect(tls.peerIdentity?.dnsNames.contains("localhost") == true)
        _ = try harness.server.value()
    }

    @Test func serverNameOverrideIsWhatGetsVerified() throws {
        let harness = try TLSServerHarness(pki.server("wrong-name-receiver"))
        let client = try TLSClientContext(configuration: pki.client(serverName: "wrong.example"))
        let tls = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        #expect(tls.peerIdentity?.dnsNames == ["wrong.example"])
        _ = try harness.server.value()
    }

    @Test func serverFromForeignCAIsRefused() throws {
        let harness = try TLSServerHarness(pki.server("foreign-receiver", ca: pki.ca))
        let client = try TLSClientContext(configuration: pki.client())
        let clientError = #expect(throws: TLSError.self) {
            _ = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        }
        #expect(clientError?.message.contains("unable to get local issuer certificate") == true)
        #expect(harness.server.error() is TLSError)
    }

    @Test func pinnedFingerprintMatchIsAccepted() throws {
        let fingerprint = try PeerIdentity(certificatePEM: pki.pem("receiver")).colonFingerprint
        #expect(fingerprint.count == 95)
        let harness = try TLSServerHarness(pki.server())
        let client = try TLSClientContext(configuration: pki.client(pins: ["00" + String(repeating: "11", count: 31), fingerprint]))
        let tls = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        #expect(tls.peerIdentity?.colonFingerprint == fingerprint)
        _ = try harness.server.value()
    }

    @Test func pinnedFingerprintMismatchIsRefused() throws {
        let other = try PeerIdentity(certificatePEM: pki.pem("wrong-name-receiver")).sha256Fingerprint
        let harness = try TLSServerHarness(pki.server())
        let client = try TLSClientContext(configuration: pki.client(pins: [other.uppercased()]))
        let error = #expect(throws: TLSError.self) {
            _ = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        }
        #expect(error?.kind == .pinMismatch)
        #expect(error?.message.contains("is not pinned") == true)
        // The server's handshake completed; it then sees the client hang up (no close_notify).
        let server = try harness.server.value()
        let serverError = #expect(throws: TLSError.self) { _ = try server.readAll(count: 1) }
        #expect(serverError?.kind == .connectionClosed)
    }

    @Test func writingToAVanishedPeerIsAnErrorNotSIGPIPE() throws {
        let harness = try TLSServerHarness(pki.server())
        let tls = try TLSClientContext(configuration: pki.client()).connect(host: "127.0.0.1", port: harness.listener.port)
        try harness.server.value().transport.close()  // abrupt: no close_notify
        let chunk = [UInt8](repeating: 7, count: 1 << 20)
        let error = #expect(throws: (any Error).self) {
            for _ in 0..<64 { try tls.write(chunk) }
        }
        if let tlsError = error as? TLSError { #expect(tlsError.kind == .connectionClosed, "\(tlsError)") }
    }

    /// The socket BIO gathers records (``TLSSocketBuffers/write``): every write,
    /// below, at and across the gathering buffer's size, arrives intact and
    /// without waiting for a later write (writeAll flushes).
    @Test func writesAroundTheGatheringBufferSizeArriveIntactAndAtOnce() throws {
        let gather = TLSSocketBuffers.write
        let sizes = [1, 16383, 16384, 16385, gather - 1, gather, gather + 1, 3 * gather + 7, 5 << 20 + 3]
        let harness = try TLSServerHarness(pki.server())
        let tls = try TLSClientContext(configuration: pki.client()).connect(host: "127.0.0.1", port: harness.listener.port)
        let server = try harness.server.value()
        // Bound a failure (data stuck in a buffer) instead of hanging; not a speed gate.
        try server.setTimeouts(read: .seconds(30), write: nil)
        try tls.setTimeouts(read: .seconds(60), write: nil)
        let serverSide = Background { () -> [Bool] in
            var intact: [Bool] = []
            for (i, size) in sizes.enumerated() {
                intact.append(try server.readAll(count: size) == pattern(size, seed: UInt8(i)))
                try server.write([UInt8(i)])
            }
            return intact
        }
        for (i, size) in sizes.enumerated() {
            try tls.write(pattern(size, seed: UInt8(i)))
            #expect(try tls.readAll(count: 1) == [UInt8(i)])  // the server had all of it
        }
        #expect(try serverSide.value() == Array(repeating: true, count: sizes.count))
        tls.close()
        server.close()
    }

    /// A peer that stops reading: once the socket buffers fill, writeAll times
    /// out with the typed error, whether the blocked send happens inside
    /// SSL_write (writes larger than the gathering buffer) or at the final
    /// flush (smaller writes, sent only there).
    @Test(arguments: [60 << 10, 1 << 20]) func writeToAPeerThatStopsReadingTimesOut(chunkSize: Int) throws {
        let harness = try TLSServerHarness(pki.server())
        let tls = try TLSClientContext(configuration: pki.client()).connect(host: "127.0.0.1", port: harness.listener.port)
        let server = try harness.server.value()
        try tls.transport.setTimeouts(read: nil, write: .milliseconds(200))
        let chunk = [UInt8](repeating: 9, count: chunkSize)
        let error = #expect(throws: NetworkError.self) {
            for _ in 0..<(256 << 20) / chunkSize { try tls.write(chunk) }
        }
        #expect(error?.description == "write to 127.0.0.1:\(harness.listener.port) timed out after 200ms")
        tls.close()
        server.close()
    }

    @Test func waitReadableSeesDataAndEnd() throws {
        let harness = try TLSServerHarness(pki.server())
        let tls = try TLSClientContext(configuration: pki.client()).connect(host: "127.0.0.1", port: harness.listener.port)
        let server = try harness.server.value()
        #expect(try !tls.waitReadable(timeout: .zero))
        try server.write([1, 2, 3, 4])
        #expect(try tls.waitReadable(timeout: .seconds(10)))
        #expect(try tls.readAll(count: 2) == [1, 2])
        #expect(try tls.waitReadable(timeout: .zero))  // the rest of the record is buffered in OpenSSL
        #expect(try tls.readAll(count: 2) == [3, 4])
        server.close()
        #expect(try tls.waitReadable(timeout: .seconds(10)))
        #expect(try tls.readAll(count: 1) == [])  // close_notify: clean end
    }

    @Test func readTimeoutAfterHandshakeIsTyped() throws {
        let harness = try TLSServerHarness(pki.server())
        let tls = try TLSClientContext(configuration: pki.client()).connect(host: "127.0.0.1", port: harness.listener.port)
        let server = try harness.server.value()
        try tls.transport.setTimeouts(read: .milliseconds(100), write: nil)
        let error = #expect(throws: NetworkError.self) { _ = try tls.readAll(count: 1) }
        #expect(error?.description == "read from 127.0.0.1:\(harness.listener.port) timed out after 100ms")
        server.close()
    }

    @Test func malformedPinIsAConfigurationError() {
        let error = #expect(throws: TLSError.self) { _ = try TLSClientContext(configuration: pki.client(pins: ["abc"])) }
        #expect(error?.kind == .configuration)
    }

    @Test func plaintextClientIsRefusedWithoutHanging() throws {
        let harness = try TLSServerHarness(pki.server())
        let plain = try TCPStream.connect(host: "127.0.0.1", port: harness.listener.port)
        try plain.write(Array("HELLO memhaul 1\n".utf8))
        let error = harness.server.error() as? TLSError
        #expect(error?.kind == .notTLS)
        #expect(error?.message.hasSuffix("failed: peer did not speak TLS (plaintext client?)") == true)
        // The server closed the connection (with the client's bytes unread: a reset).
        let after = Result { try plain.readAll(count: 1) }
        switch after {
        case .success(let bytes): #expect(bytes.isEmpty)
        case .failure(let error): #expect((error as? SystemError)?.errno == .ECONNRESET)
        }
    }

    @Test func silentClientTimesOutTheHandshake() throws {
        let harness = try TLSServerHarness(pki.server(timeout: .milliseconds(300)))
        let plain = try TCPStream.connect(host: "127.0.0.1", port: harness.listener.port)
        let error = harness.server.error() as? TLSError
        #expect(error?.kind == .timedOut)
        #expect(error?.message.contains("timed out after 300ms") == true)
        #expect(try plain.readAll(count: 1) == [])
    }

    @Test func tls12OnlyClientIsRefused() throws {
        let harness = try TLSServerHarness(pki.server())
        let tls12: Int32 = 0x0303  // TLS1_2_VERSION
        let client = try TLSClientContext(configuration: pki.client(), protocolVersions: (tls12, tls12))
        let clientError = #expect(throws: TLSError.self) {
            _ = try client.connect(host: "127.0.0.1", port: harness.listener.port)
        }
        let serverError = harness.server.error() as? TLSError
        #expect(serverError?.kind == .protocolVersion)
        #expect(clientError?.kind == .protocolVersion)
    }

    @Test func tlsClientAgainstPlaintextServerFailsClearly() throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let server = Background { () -> Void in
            let tcp = try listener.accept(timeout: .seconds(30))
            var buf = [UInt8](repeating: 0, count: 512)
            _ = try buf.withUnsafeMutableBytes { try tcp.read(into: $0) }
            try tcp.write(Array("ERR unknown command\r\n".utf8))
            tcp.close()
        }
        let client = try TLSClientContext(configuration: pki.client())
        let error = #expect(throws: TLSError.self) { _ = try client.connect(host: "127.0.0.1", port: listener.port) }
        #expect(error?.kind == .notTLS)
        try server.value()
    }

    @Test func missingFilesAreConfigurationErrors() {
        let e1 = #expect(throws: TLSError.self) {
            _ = try TLSServerContext(configuration: TLSConfiguration(caFile: "/nonexistent/ca.pem", certificateFile: "x", privateKeyFile: "y"))
        }
        #expect(e1?.kind == .configuration)
        #expect(e1?.message == "cannot read /nonexistent/ca.pem: ENOENT (No such file or directory)")
        let e2 = #expect(throws: TLSError.self) {
            _ = try TLSServerContext(configuration: TLSConfiguration(
                caFile: pki.ca, certificateFile: "\(pki.dir)/receiver.pem", privateKeyFile: "\(pki.dir)/sender.key"))
        }
        #expect(e2?.message.hasPrefix("private key \(pki.dir)/sender.key does not match certificate") == true, "\(String(describing: e2))")
        #expect(throws: TLSError.self) { _ = try TLSServerContext(configuration: TLSConfiguration(caFile: pki.ca)) }
    }
}

@Suite struct TCPTests {
    @Test func plaintextRoundTripAndEndOfStream() throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        #expect(listener.port != 0)
        let data = pattern(1 << 20, seed: 9)
        let server = Background { () -> [UInt8] in
            let tcp = try listener.accept(timeout: .seconds(30))
            let got = try tcp.readAll(count: data.count)
            try tcp.write(Array(got.reversed()))
            tcp.shutdown()
            return got
        }
        let client = try TCPStream.connect(host: "localhost", port: listener.port)
        try client.write(data)
        #expect(try client.readAll(count: data.count) == Array(data.reversed()))
        #expect(try client.readAll(count: 4) == [])  // clean end of stream
        #expect(try server.value() == data)
    }

    @Test func shortStreamIsUnexpectedEnd() throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let server = Background { () -> Void in
            let tcp = try listener.accept(timeout: .seconds(30))
            try tcp.write([1, 2, 3])
            tcp.close()
        }
        let client = try TCPStream.connect(host: "127.0.0.1", port: listener.port)
        try server.value()
        #expect(throws: NetworkError.self) { _ = try client.readAll(count: 10) }
    }

    @Test func readTimeoutIsTyped() throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let server = Background { try listener.accept(timeout: .seconds(30)) }
        let client = try TCPStream.connect(
            host: "127.0.0.1", port: listener.port, options: TCPOptions(readTimeout: .milliseconds(100)))
        let held = try server.value()  // keep the server side open and silent
        let error = #expect(throws: NetworkError.self) { _ = try client.readAll(count: 1) }
        guard case .timedOut(let op, let peer, let after)? = error else { Issue.record("not a timeout"); return }
        #expect(op == "read from" && peer == "127.0.0.1:\(listener.port)" && after == .milliseconds(100))
        #expect(error?.description == "read from 127.0.0.1:\(listener.port) timed out after 100ms")
        held.close()
    }

    @Test func refusedConnectNamesTheCallAndPeer() throws {
        let port: UInt16
        do {
            let l = try TCPListener(host: "127.0.0.1", port: 0)
            port = l.port
            l.close()
        }
        #expect(throws: SystemError("connect(127.0.0.1:\(port))", .ECONNREFUSED)) {
            _ = try TCPStream.connect(host: "127.0.0.1", port: port)
        }
    }

    @Test func wildcardListenerTakesIPv4AndIPv6() throws {
        let listener = try TCPListener(host: nil, port: 0)
        for host in ["127.0.0.1", "::1"] {
            let server = Background { try listener.accept(timeout: .seconds(30)) }
            let client = try TCPStream.connect(host: host, port: listener.port)
            try client.write([42])
            #expect(try server.value().readAll(count: 1) == [42])
        }
    }

    @Test func injectedFaultsSurfaceThroughTheSeam() throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        // Call names carry the address, so these faults touch no other test.
        let connectName = "connect(127.0.0.1:\(listener.port))"
        Syscall.withFaults([.init(connectName, .EHOSTUNREACH)]) {
            #expect(throws: SystemError(connectName, .EHOSTUNREACH)) { _ = try TCPStream.connect(host: "127.0.0.1", port: listener.port) }
        }

        let acceptName = "accept4(127.0.0.1:\(listener.port))"
        let client = try TCPStream.connect(host: "127.0.0.1", port: listener.port)
        Syscall.withFaults([.init(acceptName, .EMFILE)]) {
            #expect(throws: SystemError(acceptName, .EMFILE)) { _ = try listener.accept(timeout: .seconds(10)) }
        }
        try client.write([5])
        #expect(try listener.accept(timeout: .seconds(10)).readAll(count: 1) == [5])
    }

    @Test func unresolvableHostIsTyped() {
        #expect(throws: NetworkError.self) { _ = try TCPStream.connect(host: "no-such-host.invalid", port: 1) }
    }
}

@Suite struct CertificateBundleTests {
    private func tempDir() -> String { temporaryDirectory("certs-test") + "/pki" }

    private func mode(_ path: String) -> mode_t {
        var st = stat()
        return stat(path, &st) == 0 ? st.st_mode & 0o777 : 0
    }

    @Test func bundleHasTightPermissionsAndWorksForMutualTLS() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        let written = try CertificateBundle.create(directory: dir, receiverNames: ["migrate.example", "10.1.2.3"], senderName: "db-7")
        #expect(written == CertificateBundle.fileNames.map { "\(dir)/\($0)" })
        #expect(mode(dir) == 0o700)
        for path in written { #expect(mode(path) == (path.hasSuffix(".key") ? 0o600 : 0o644), "\(path)") }

        let receiver = try PeerIdentity(certificatePEM: String(contentsOfFile: "\(dir)/receiver.pem", encoding: .utf8))
        #expect(receiver.dnsNames == ["localhost", "migrate.example"])
        #expect(receiver.ipAddresses == ["127.0.0.1", "::1", "10.1.2.3"])

        let server = TLSConfiguration(caFile: "\(dir)/ca.pem", certificateFile: "\(dir)/receiver.pem", privateKeyFile: "\(dir)/receiver.key")
        let client = TLSConfiguration(
            caFile: "\(dir)/ca.pem", certificateFile: "\(dir)/sender.pem", privateKeyFile: "\(dir)/sender.key",
            serverName: "migrate.example")
        let harness = try TLSServerHarness(server)
        let tls = try TLSClientContext(configuration: client).connect(host: "127.0.0.1", port: harness.listener.port)
        #expect(tls.peerIdentity?.commonName == "migrate.example")
        #expect(try harness.server.value().peerIdentity?.commonName == "db-7")

        // A sender certificate cannot serve as a receiver (extendedKeyUsage clientAuth only).
        let swapped = TLSConfiguration(caFile: "\(dir)/ca.pem", certificateFile: "\(dir)/sender.pem", privateKeyFile: "\(dir)/sender.key")
        let wrongWay = try TLSServerHarness(swapped)
        let error = #expect(throws: TLSError.self) {
            _ = try TLSClientContext(configuration: TLSConfiguration(
                caFile: "\(dir)/ca.pem", certificateFile: "\(dir)/sender.pem", privateKeyFile: "\(dir)/sender.key",
                serverName: "memhaul-sender")).connect(host: "127.0.0.1", port: wrongWay.listener.port)
        }
        #expect(error?.kind == .certificateRejected)
        _ = wrongWay.server.error()
    }

    @Test func existingFilesAreKeptUnlessForced() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        _ = try CertificateBundle.create(directory: dir)
        let before = try String(contentsOfFile: "\(dir)/ca.pem", encoding: .utf8)
        #expect(throws: CertificateBundleError.wouldOverwrite(CertificateBundle.fileNames.map { "\(dir)/\($0)" })) {
            _ = try CertificateBundle.create(directory: dir)
        }
        #expect(try String(contentsOfFile: "\(dir)/ca.pem", encoding: .utf8) == before)
        _ = try CertificateBundle.create(directory: dir, force: true)
        #expect(try String(contentsOfFile: "\(dir)/ca.pem", encoding: .utf8) != before)
        #expect(mode("\(dir)/ca.key") == 0o600)
    }

    @Test func caRoundTripsThroughPEM() throws {
        let ca = try CertificateAuthority.create(commonName: "round trip", days: 2)
        let loaded = try CertificateAuthority(certificatePEM: ca.certificatePEM, privateKeyPEM: ca.privateKeyPEM)
        let leaf = try loaded.issue(commonName: "leaf", sans: [SubjectAlternativeName("10.0.0.1"), SubjectAlternativeName("h.example")], usage: [.serverAuth, .clientAuth])
        let id = try PeerIdentity(certificatePEM: leaf.certificatePEM)
        #expect(id.commonName == "leaf" && id.ipAddresses == ["10.0.0.1"] && id.dnsNames == ["h.example"])
        let other = try CertificateAuthority.create(commonName: "other")
        #expect(throws: TLSError.self) { _ = try CertificateAuthority(certificatePEM: ca.certificatePEM, privateKeyPEM: other.privateKeyPEM) }
    }

    @Test func cliCertsInitWritesTheBundle() throws {
        let dir = tempDir()
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        func run(_ args: [String]) throws -> (Int32, String) {
            let r = try runProgram([builtBinary("memhaul"), "certs", "init", dir] + args)
            return (r.status, r.out + r.err)
        }
        let (rc, text) = try run(["--receiver-name", "r.example", "--days", "30"])
        #expect(rc == 0, "\(text)")
        #expect(text.contains("wrote \(dir)/receiver.key"))
        let (rc2, text2) = try run([])
        #expect(rc2 != 0)
        #expect(text2.contains("refusing to overwrite"))
        #expect(try run(["--force"]).0 == 0)
    }
}

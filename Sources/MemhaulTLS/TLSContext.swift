#if canImport(Glibc)
import Glibc
#endif
import CMemhaulTLS
import COpenSSL
import MemhaulSystem

/// TLS 1.3 cipher suites, fastest first on AES-NI machines (AES-128-GCM beats
/// AES-256-GCM by ~30%; ChaCha20 for machines without AES instructions).
let memhaulCipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

/// Per-connection socket buffers (BENCHMARKS.md, "Transport"): one `recv`
/// brings up to `read` bytes of records (`SSL_CTX_set_default_read_buffer_len`),
/// and records are gathered into `write` bytes per `send` (the C socket BIO,
/// flushed at the end of each ``TLSStream/writeAll(_:)``), instead of one
/// syscall per 16 KiB record.
enum TLSSocketBuffers {
    static let read = 128 << 10
    static let write = 128 << 10
}

/// Owns an `SSL_CTX` (freed in deinit) set up for TLS 1.3 only with our CA,
/// certificate and key.
public class TLSContextBase: @unchecked Sendable {
    // @unchecked: an SSL_CTX is read-only after set-up and OpenSSL locks its shared parts.
    let ctx: OpaquePointer
    public let configuration: TLSConfiguration
    /// Normalised pins (64 hex digits).
    let pins: Set<String>

    init(configuration: TLSConfiguration, server: Bool, protocolVersions: (Int32, Int32)?) throws {
        self.configuration = configuration
        var pins = Set<String>()
        for pin in configuration.pinnedSHA256Fingerprints {
            guard let p = TLSConfiguration.normalizeFingerprint(pin) else {
                throw TLSError(.configuration, "pinned fingerprint \(pin) is not a SHA-256 hex digest")
            }
            pins.insert(p)
        }
        self.pins = pins
        OpenSSLErrors.clear()
        guard let ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()) else {
            throw OpenSSLErrors.configurationError("SSL_CTX_new")
        }
        self.ctx = ctx
        let versionsSet =
            if let (lo, hi) = protocolVersions { cmh_ssl_ctx_set_proto_versions(ctx, lo, hi) } else { cmh_ssl_ctx_set_tls13_only(ctx) }
        guard versionsSet == 1 else { throw OpenSSLErrors.configurationError("cannot restrict TLS to version 1.3") }
        guard SSL_CTX_set_ciphersuites(ctx, memhaulCipherSuites) == 1 else {
            throw OpenSSLErrors.configurationError("SSL_CTX_set_ciphersuites")
        }
        // Fetch many records per recv instead of header then body, one per call.
        cmh_ssl_ctx_set_read_ahead(ctx, 1)
        SSL_CTX_set_default_read_buffer_len(ctx, TLSSocketBuffers.read)

        for file in [configuration.caFile, configuration.certificateFile, configuration.privateKeyFile].compactMap({ $0 }) {
            // OpenSSL says only "system lib" for a missing file: name the errno ourselves.
            do {
                _ = try Syscall.run("access(\(file))") { access(file, R_OK) }
            } catch {
                throw TLSError(.configuration, "cannot read \(file): \(error.errno)")
            }
        }
        guard SSL_CTX_load_verify_locations(ctx, configuration.caFile, nil) == 1 else {
            throw OpenSSLErrors.configurationError("cannot load CA file \(configuration.caFile)")
        }
        if let certificate = configuration.certificateFile {
            guard SSL_CTX_use_certificate_chain_file(ctx, certificate) == 1 else {
                throw OpenSSLErrors.configurationError("cannot load certificate \(certificate)")
            }
            guard let key = configuration.privateKeyFile else {
                throw TLSError(.configuration, "certificate \(certificate) given without its private key")
            }
            // Loading the key also checks it against the certificate (X509_check_private_key).
            guard SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
                let error = OpenSSLErrors.configurationError("cannot load private key \(key)")
                if error.reasons.contains(where: { $0.contains("mismatch") }) {
                    throw TLSError(.configuration, "private key \(key) does not match certificate \(certificate)", reasons: error.reasons)
                }
                throw error
            }
        } else if configuration.privateKeyFile != nil {
            throw TLSError(.configuration, "private key given without a certificate")
        }
    }

    deinit { SSL_CTX_free(ctx) }

    /// A new `SSL` over `stream`'s socket through the MSG_NOSIGNAL BIO.
    func newSSL(for stream: TCPStream) throws -> OpaquePointer {
        OpenSSLErrors.clear()
        guard let ssl = SSL_new(ctx) else { throw OpenSSLErrors.configurationError("SSL_new") }
        guard let bio = cmh_bio_new_socket(stream.fileDescriptor, TLSSocketBuffers.write) else {
            SSL_free(ssl)
            throw OpenSSLErrors.configurationError("BIO_new")
        }
        SSL_set_bio(ssl, bio, bio)
        return ssl
    }

    /// Checks the peer's leaf against the pins; returns its identity.
    func checkPeer(_ ssl: OpaquePointer, what: String) throws -> PeerIdentity? {
        guard let cert = SSL_get1_peer_certificate(ssl) else {
            if pins.isEmpty { return nil }
            throw TLSError(.pinMismatch, "\(what) failed: peer sent no certificate to check against the pinned fingerprints")
        }
        defer { X509_free(cert) }
        let identity = PeerIdentity(certificate: cert)
        if !pins.isEmpty && !pins.contains(identity.sha256Fingerprint) {
            throw TLSError(
                .pinMismatch,
                "\(what) failed: peer certificate SHA-256 \(identity.colonFingerprint) is not pinned")
        }
        return identity
    }

    /// Runs `handshake` with the stream's timeouts set to the handshake timeout, then restores them.
    func withHandshakeTimeout<R>(_ stream: TCPStream, _ body: () throws -> R) throws -> R {
        let saved = (stream.options.readTimeout, stream.options.writeTimeout)
        let t = configuration.handshakeTimeout
        try stream.setTimeouts(read: t, write: t)
        let result = try body()
        try stream.setTimeouts(read: saved.0, write: saved.1)
        return result
    }
}

/// The receiver's side: accepts TLS 1.3 clients holding a certificate from
/// our CA (`SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT`).
public final class TLSServerContext: TLSContextBase, @unchecked Sendable {
    /// `SSL_CTX_new(TLS_server_method())` with the configuration's CA, certificate and key (both required).
    public convenience init(configuration: TLSConfiguration) throws {
        try self.init(configuration: configuration, protocolVersions: nil)
    }

    init(configuration: TLSConfiguration, protocolVersions: (Int32, Int32)?) throws {
        guard configuration.certificateFile != nil else {
            throw TLSError(.configuration, "a TLS server needs a certificate and a private key")
        }
        try super.init(configuration: configuration, server: true, protocolVersions: protocolVersions)
        let mode = configuration.requireClientCertificate ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER
        SSL_CTX_set_verify(ctx, mode, nil)
        // Tell clients which CA we accept.
        if let names = SSL_load_client_CA_file(configuration.caFile) { SSL_CTX_set_client_CA_list(ctx, names) }
        // One session ticket, sent right after the client's certificate is
        // accepted: it lets the client learn our verdict during connect().
        SSL_CTX_set_num_tickets(ctx, 1)
    }

    /// Runs the server handshake on an accepted connection (`SSL_accept`).
    ///
    /// Fails fast and clearly on a peer that does not start with a TLS
    /// handshake record (plaintext client) or sends nothing within the
    /// handshake timeout. On any failure the connection is closed.
    public func accept(on stream: TCPStream) throws -> TLSStream {
        let what = "TLS handshake with \(stream.peerDescription)"
        do {
            return try withHandshakeTimeout(stream) {
                try expectClientHello(stream, what: what)
                let ssl = try newSSL(for: stream)
                let tls = TLSStream(ssl: ssl, transport: stream)
                let rc = SSL_accept(ssl)
                if rc != 1 {
                    tls.markFailed()
                    throw TLSFailure.error(ssl: ssl, ret: rc, what: what, timeout: configuration.handshakeTimeout)
                }
                tls.peerIdentity = try checkPeer(ssl, what: what)
                return tls
            }
        } catch {
            stream.close()
            throw error
        }
    }

    /// Peeks at the first byte: a TLS connection starts with a handshake record (0x16).
    private func expectClientHello(_ stream: TCPStream, what: String) throws {
        var first: UInt8 = 0
        let n: Int
        do {
            n = try withUnsafeMutableBytes(of: &first) { try stream.peek(into: $0, timeout: configuration.handshakeTimeout) }
        } catch is NetworkError {
            throw TLSError(
                .timedOut,
                "\(what) timed out after \(formatDuration(configuration.handshakeTimeout)): no ClientHello (plaintext client?)")
        }
        if n == 0 { throw TLSError(.connectionClosed, "\(what) failed: peer closed the connection before the handshake") }
        if first != 0x16 { throw TLSError(.notTLS, "\(what) failed: peer did not speak TLS (plaintext client?)") }
    }
}

/// The sender's side: connects to a receiver whose certificate chains to our
/// CA and names the host we dialled (or ``TLSConfiguration/serverName``).
public final class TLSClientContext: TLSContextBase, @unchecked Sendable {
    /// `SSL_CTX_new(TLS_client_method())` with the configuration's CA, certificate and key.
    public convenience init(configuration: TLSConfiguration) throws {
        try self.init(configuration: configuration, protocolVersions: nil)
    }

    /// Tests only: other protocol versions (e.g. TLS 1.2 only, to check refusal).
    init(configuration: TLSConfiguration, protocolVersions: (Int32, Int32)?) throws {
        try super.init(configuration: configuration, server: false, protocolVersions: protocolVersions)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
    }

    /// TCP connect to `host:port`, then the TLS handshake, verifying the
    /// server against `configuration.serverName ?? host`.
    public func connect(
        host: String, port: UInt16, timeout: Duration = .seconds(10), options: TCPOptions = TCPOptions()
    ) throws -> TLSStream {
        let stream = try TCPStream.connect(host: host, port: port, timeout: timeout, options: options)
        return try connect(over: stream, serverName: configuration.serverName ?? host)
    }

    /// Runs the client handshake over a connected stream (`SSL_connect`).
    ///
    /// `serverName` is checked against the certificate: an IP literal against
    /// its IP SANs (`X509_VERIFY_PARAM_set1_ip_asc`), a name against DNS SANs
    /// (`SSL_set1_host`, also sent as SNI), never against the subject CN
    /// (`X509_CHECK_FLAG_NEVER_CHECK_SUBJECT`). In TLS 1.3 the server judges our
    /// certificate after our side has finished; connect waits (within the
    /// handshake timeout) for the server's session ticket or its alert, so a
    /// refusal surfaces here as ``TLSError/Kind/rejectedByPeer``, not on the
    /// first read. On any failure the connection is closed.
    public func connect(over stream: TCPStream, serverName: String) throws -> TLSStream {
        let what = "TLS handshake with \(stream.peerDescription)"
        do {
            return try withHandshakeTimeout(stream) {
                let ssl = try newSSL(for: stream)
                let tls = TLSStream(ssl: ssl, transport: stream)
                let name = serverName.hasPrefix("[") && serverName.hasSuffix("]") ? String(serverName.dropFirst().dropLast()) : serverName
                // SAN only (README, "Security"): never fall back to the subject CN,
                // which OpenSSL does for a certificate without DNS SANs.
                SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NEVER_CHECK_SUBJECT))
                if SocketAddressText.isIPLiteral(name) {
                    guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 else {
                        throw OpenSSLErrors.configurationError("cannot verify against address \(name)")
                    }
                } else {
                    guard SSL_set1_host(ssl, name) == 1, cmh_ssl_set_sni(ssl, name) == 1 else {
                        throw OpenSSLErrors.configurationError("cannot verify against name \(name)")
                    }
                }
                let rc = SSL_connect(ssl)
                if rc != 1 {
                    tls.markFailed()
                    throw TLSFailure.error(ssl: ssl, ret: rc, what: what, timeout: configuration.handshakeTimeout)
                }
                // Verdict first: a pin mismatch then closes with nothing unread (a FIN, not a reset).
                try awaitServerVerdict(tls, what: what)
                tls.peerIdentity = try checkPeer(ssl, what: what)
                return tls
            }
        } catch {
            stream.close()
            throw error
        }
    }

    /// Waits for the server's post-handshake message: a session ticket (it
    /// accepted us) or an alert (it refused our certificate).
    private func awaitServerVerdict(_ tls: TLSStream, what: String) throws {
        let stream = tls.transport
        let timeout = configuration.handshakeTimeout
        guard try stream.waitReadable(timeout: timeout) else {
            throw TLSError(.timedOut, "\(what) timed out after \(formatDuration(timeout)) waiting for the server to accept our certificate")
        }
        // Non-blocking peek: consume the ticket, stop when only app data or nothing is left.
        let fd = stream.fileDescriptor
        let flags = try Syscall.run("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        _ = try Syscall.run("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, flags | O_NONBLOCK) }
        defer { _ = fcntl(fd, F_SETFL, flags) }
        var byte: UInt8 = 0
        var n = 0
        OpenSSLErrors.clear()
        let rc = SSL_peek_ex(tls.ssl, &byte, 1, &n)
        if rc == 1 { return }
        let code = SSL_get_error(tls.ssl, rc)
        if code == SSL_ERROR_WANT_READ { return }
        tls.markFailed()
        throw TLSFailure.error(ssl: tls.ssl, ret: rc, what: what, timeout: timeout)
    }
}

import CMemhaulTLS
import COpenSSL

/// A TLS 1.3 session over a ``TCPStream`` (owns the `SSL`, freed in deinit).
///
/// Made by ``TLSServerContext/accept(on:)`` or ``TLSClientContext/connect(host:port:timeout:options:)``.
/// Records are up to 16 KiB; `writeAll` hands OpenSSL the whole buffer
/// (`SSL_write_ex`), the socket BIO sends the records in batches
/// (``TLSSocketBuffers``), and read-ahead lets one `recv` fetch many records.
/// One thread at a time (OpenSSL forbids concurrent use of one `SSL`).
/// Socket I/O is done by OpenSSL through a C BIO (send with MSG_NOSIGNAL),
/// not through `Syscall.run`.
public final class TLSStream: ByteStream, @unchecked Sendable {
    // @unchecked: owns the SSL; one thread uses a stream at a time (ByteStream contract).
    let ssl: OpaquePointer
    /// The connection underneath (timeouts are set there).
    public let transport: TCPStream
    /// The peer's verified certificate, nil only for a server not requiring client certificates.
    public internal(set) var peerIdentity: PeerIdentity?
    private var failed = false
    private var shutDown = false

    init(ssl: OpaquePointer, transport: TCPStream) {
        self.ssl = ssl
        self.transport = transport
    }

    deinit { SSL_free(ssl) }

    public var peerDescription: String { transport.peerDescription }

    /// Negotiated protocol, e.g. `TLSv1.3` (`SSL_get_version`).
    public var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

    /// Negotiated cipher suite, e.g. `TLS_AES_128_GCM_SHA256`.
    public var cipherSuite: String { String(cString: SSL_CIPHER_get_name(SSL_get_current_cipher(ssl))) }

    /// After a fatal error OpenSSL must not send close_notify.
    func markFailed() { failed = true }

    /// `SSL_read_ex`; 0 at a clean end (close_notify). A read timeout is
    /// ``NetworkError/timedOut(operation:peer:after:)``; a peer vanishing
    /// without close_notify is ``TLSError/Kind/connectionClosed``.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard buffer.count > 0 else { return 0 }
        var n = 0
        let rc = SSL_read_ex(ssl, buffer.baseAddress, buffer.count, &n)
        if rc == 1 { return n }
        let code = SSL_get_error(ssl, rc)
        if code == SSL_ERROR_ZERO_RETURN { return 0 }
        throw failure(rc, code, operation: "read from", timeout: transport.options.readTimeout)
    }

    /// Buffered bytes in OpenSSL (`SSL_has_pending`), else `poll(POLLIN)` on the socket.
    public func waitReadable(timeout: Duration?) throws -> Bool {
        if SSL_has_pending(ssl) == 1 { return true }
        return try transport.waitReadable(timeout: timeout)
    }

    /// `SSL_write_ex` of the whole buffer, then `BIO_flush`: the socket BIO
    /// gathers records, and everything is sent before this returns.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        try writeRecords(buffer)
        try flush()
    }

    /// Both buffers' records, then one `BIO_flush`: no send between them.
    public func writeAll(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) throws {
        try writeRecords(first)
        try writeRecords(second)
        try flush()
    }

    /// `SSL_write_ex` until the whole buffer is in records (the BIO sends them as its buffer fills).
    private func writeRecords(_ buffer: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            var n = 0
            let rc = SSL_write_ex(ssl, buffer.baseAddress! + done, buffer.count - done, &n)
            if rc != 1 {
                throw failure(rc, SSL_get_error(ssl, rc), operation: "write to", timeout: transport.options.writeTimeout)
            }
            done += n
        }
    }

    /// `BIO_flush` of the gathered records.
    private func flush() throws {
        if cmh_ssl_flush(ssl) != 1 {
            // The flush is the BIO's send failing as it would inside SSL_write_ex: classify it the same way.
            let timedOut = BIO_test_flags(SSL_get_wbio(ssl), BIO_FLAGS_SHOULD_RETRY) != 0
            throw failure(-1, timedOut ? SSL_ERROR_WANT_WRITE : SSL_ERROR_SYSCALL, operation: "write to", timeout: transport.options.writeTimeout)
        }
    }

    private func failure(_ rc: Int32, _ code: Int32, operation: String, timeout: Duration?) -> Error {
        if code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE {
            _ = OpenSSLErrors.drain()
            // The session is still sound, but a record may be half-sent: treat as fatal.
            failed = true
            return NetworkError.timedOut(operation: operation, peer: peerDescription, after: timeout ?? .zero)
        }
        failed = true
        return TLSFailure.error(ssl: ssl, ret: rc, what: "TLS \(operation) \(peerDescription)", timeout: timeout)
    }

    /// Sends close_notify (`SSL_shutdown`) and `shutdown(SHUT_WR)`; reading stays possible.
    public func shutdown() {
        if !failed && !shutDown {
            shutDown = true
            OpenSSLErrors.clear()
            _ = SSL_shutdown(ssl)
            _ = OpenSSLErrors.drain()
        }
        transport.shutdown()
    }

    /// Sends close_notify unless already sent or the session failed, then closes the socket.
    /// The close_notify write waits at most 1 s, so a peer that stopped reading cannot hang close.
    /// Cuts the socket underneath (see ``ByteStream/abort()``).
    public func abort() { transport.abort() }

    public func setTimeouts(read: Duration?, write: Duration?) throws {
        try transport.setTimeouts(read: read, write: write)
    }

    public func close() {
        if !failed && !shutDown {
            shutDown = true
            try? transport.setTimeouts(read: transport.options.readTimeout, write: .seconds(1))
            OpenSSLErrors.clear()
            _ = SSL_shutdown(ssl)
            _ = OpenSSLErrors.drain()
        }
        transport.close()
    }
}

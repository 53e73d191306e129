import CMemhaulTLS
import COpenSSL
import MemhaulSystem

/// A TLS failure, one readable line carrying OpenSSL's reason, e.g.
/// `TLS handshake with 127.0.0.1:7070 failed: certificate verify failed (unable to get local issuer certificate)`.
public struct TLSError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A CA, certificate, key or pin could not be loaded or does not fit.
        case configuration
        /// The peer sent something that is not TLS (a plaintext client or server).
        case notTLS
        /// The peer does not offer TLS 1.3.
        case protocolVersion
        /// We refused the peer's certificate (chain, expiry, name, or none sent).
        case certificateRejected
        /// The peer refused the handshake or our certificate (it sent an alert).
        case rejectedByPeer
        /// The peer's certificate is valid but not one of the pinned fingerprints.
        case pinMismatch
        /// The handshake did not finish within the handshake timeout.
        case timedOut
        /// The peer closed the connection during the handshake, or later without close_notify.
        case connectionClosed
        /// Any other handshake or record-layer failure.
        case failed
    }

    public var kind: Kind
    public var message: String
    /// OpenSSL's reason strings for the failure, outermost first.
    public var reasons: [String]

    public init(_ kind: Kind, _ message: String, reasons: [String] = []) {
        self.kind = kind
        self.message = message
        self.reasons = reasons
    }

    public var description: String { message }
}

/// The thread's OpenSSL error queue.
enum OpenSSLErrors {
    struct Entry {
        var code: UInt
        var reason: Int32
        var text: String
    }

    /// Empties the queue, oldest first (`ERR_get_error`); text is the reason string.
    static func drain() -> [Entry] {
        var out: [Entry] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            let text: String
            if let r = ERR_reason_error_string(code) {
                text = String(cString: r)
            } else {
                var buf = [CChar](repeating: 0, count: 256)
                ERR_error_string_n(code, &buf, buf.count)
                text = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            }
            out.append(Entry(code: code, reason: cmh_err_get_reason(code), text: text))
        }
        return out
    }

    /// `ERR_clear_error`, before an operation whose failure we will explain.
    static func clear() { ERR_clear_error() }

    /// A configuration error naming what failed and OpenSSL's reasons.
    static func configurationError(_ what: String) -> TLSError {
        let entries = drain()
        let reason = entries.last.map { ": \($0.text)" } ?? ""
        return TLSError(.configuration, "\(what)\(reason)", reasons: entries.map(\.text))
    }
}

/// What the common alerts mean for memhaul's mutual TLS.
private let alertHints: [Int32: String] = [
    SSL_R_TLSV1_ALERT_UNKNOWN_CA: "the peer does not trust the CA that issued our certificate",
    SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED: "the peer says our certificate has expired",
    SSL_R_SSLV3_ALERT_BAD_CERTIFICATE: "the peer rejected our certificate",
    SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED: "the peer requires a client certificate; give one",
]

/// Classifies a failed SSL_accept / SSL_connect / SSL_read / SSL_write.
enum TLSFailure {
    /// - Parameters:
    ///   - what: the start of the message, e.g. `TLS handshake with 127.0.0.1:7070`.
    ///   - ret: the failed call's return value.
    static func error(ssl: OpaquePointer, ret: Int32, what: String, timeout: Duration?) -> Error {
        let code = SSL_get_error(ssl, ret)
        let entries = OpenSSLErrors.drain()
        let reasons = entries.map(\.text)
        switch code {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            // Blocking socket: the BIO only asks to retry when SO_RCVTIMEO/SO_SNDTIMEO expired.
            return TLSError(.timedOut, "\(what) timed out after \(formatDuration(timeout ?? .zero))", reasons: reasons)
        case SSL_ERROR_ZERO_RETURN:
            return TLSError(.connectionClosed, "\(what) failed: peer closed the TLS session", reasons: reasons)
        case SSL_ERROR_SYSCALL:
            let err = cmh_bio_last_errno(SSL_get_rbio(ssl))
            if err == 0 {
                return TLSError(.connectionClosed, "\(what) failed: peer closed the connection", reasons: reasons)
            }
            if err == Errno.ECONNRESET.rawValue || err == Errno.EPIPE.rawValue {
                return TLSError(.connectionClosed, "\(what) failed: \(Errno(rawValue: err))", reasons: reasons)
            }
            return TLSError(.failed, "\(what) failed: \(Errno(rawValue: err))", reasons: reasons)
        default:
            break
        }
        guard let first = entries.first(where: { $0.reason != 0 }) ?? entries.first else {
            return TLSError(.failed, "\(what) failed (SSL_get_error \(code))", reasons: reasons)
        }
        let reason = first.reason
        switch reason {
        case SSL_R_CERTIFICATE_VERIFY_FAILED:
            let verify = SSL_get_verify_result(ssl)
            let detail = String(cString: X509_verify_cert_error_string(verify))
            return TLSError(.certificateRejected, "\(what) failed: certificate verify failed (\(detail))", reasons: reasons)
        case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
            return TLSError(.certificateRejected, "\(what) failed: peer sent no certificate", reasons: reasons)
        case SSL_R_WRONG_VERSION_NUMBER, SSL_R_HTTP_REQUEST, SSL_R_HTTPS_PROXY_REQUEST, SSL_R_PACKET_LENGTH_TOO_LONG,
            SSL_R_RECORD_LENGTH_MISMATCH:
            return TLSError(.notTLS, "\(what) failed: peer did not speak TLS (\(first.text))", reasons: reasons)
        case SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION, SSL_R_NO_PROTOCOLS_AVAILABLE:
            return TLSError(.protocolVersion, "\(what) failed: peer does not offer TLS 1.3 (\(first.text))", reasons: reasons)
        case SSL_R_UNEXPECTED_EOF_WHILE_READING:
            return TLSError(.connectionClosed, "\(what) failed: peer closed the connection without close_notify", reasons: reasons)
        case SSL_AD_REASON_OFFSET...(SSL_AD_REASON_OFFSET + 255):
            let hint = alertHints[reason].map { " (\($0))" } ?? ""
            return TLSError(.rejectedByPeer, "\(what) failed: peer refused: \(first.text)\(hint)", reasons: reasons)
        default:
            return TLSError(.failed, "\(what) failed: \(first.text)", reasons: reasons)
        }
    }
}

import CMemhaulTLS
import COpenSSL

/// Who is on the other end: read from the peer's verified leaf certificate,
/// so the receiver can authorise a sender per migration.
public struct PeerIdentity: Sendable, Equatable, CustomStringConvertible {
    /// Subject commonName, if any.
    public var commonName: String?
    /// DNS subjectAltNames.
    public var dnsNames: [String]
    /// IP subjectAltNames (inet_ntop form).
    public var ipAddresses: [String]
    /// SHA-256 of the DER certificate: 64 lower-case hex digits, no colons.
    public var sha256Fingerprint: String
    /// notAfter, seconds since the epoch.
    public var notAfter: Int64

    /// `AB:CD:…`, the form `openssl x509 -fingerprint -sha256` prints.
    public var colonFingerprint: String {
        var out = ""
        for (i, c) in sha256Fingerprint.uppercased().enumerated() {
            if i > 0 && i % 2 == 0 { out.append(":") }
            out.append(c)
        }
        return out
    }

    public var description: String {
        let sans = dnsNames.map { "DNS:\($0)" } + ipAddresses.map { "IP:\($0)" }
        return "CN=\(commonName ?? "-") SAN=[\(sans.joined(separator: ","))] sha256=\(sha256Fingerprint)"
    }

    /// Reads an `X509*` (not consumed).
    public init(commonName: String?, dnsNames: [String], ipAddresses: [String], sha256Fingerprint: String, notAfter: Int64) {
        self.commonName = commonName
        self.dnsNames = dnsNames
        self.ipAddresses = ipAddresses
        self.sha256Fingerprint = sha256Fingerprint
        self.notAfter = notAfter
    }

    init(certificate cert: OpaquePointer) {
        var buf = [CChar](repeating: 0, count: 1024)
        let cnLen = cmh_x509_subject_cn(cert, &buf, Int32(buf.count))
        commonName = cnLen >= 0 ? buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) } : nil
        dnsNames = []
        ipAddresses = []
        for i in 0..<cmh_x509_san_count(cert) {
            var kind: Int32 = 0
            guard cmh_x509_san_at(cert, i, &kind, &buf, Int32(buf.count)) >= 0 else { continue }
            let text = buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            if kind == 1 { dnsNames.append(text) } else if kind == 2 { ipAddresses.append(text) }
        }
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var len: UInt32 = 0
        X509_digest(cert, EVP_sha256(), &digest, &len)
        sha256Fingerprint = digest[0..<Int(len)].map { byte in
            let s = String(byte, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined()
        notAfter = cmh_x509_not_after(cert)
    }

    /// The identity in a PEM certificate (for tests and for pinning setup).
    public init(certificatePEM: String) throws {
        guard let cert = PEM.readCertificate(certificatePEM) else {
            throw OpenSSLErrors.configurationError("cannot parse PEM certificate")
        }
        defer { X509_free(cert) }
        self.init(certificate: cert)
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CMemhaulTLS
import COpenSSL
import MemhaulSystem

/// What an issued certificate may be used for (extendedKeyUsage).
public struct CertificateUsage: OptionSet, Sendable, Hashable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// TLS server (the receiver).
    public static let serverAuth = CertificateUsage(rawValue: 1)
    /// TLS client (the sender).
    public static let clientAuth = CertificateUsage(rawValue: 2)
}

/// A subjectAltName entry.
public enum SubjectAlternativeName: Sendable, Hashable, CustomStringConvertible {
    case dns(String)
    case ip(String)

    /// An IP literal becomes `.ip`, anything else `.dns`.
    public init(_ text: String) {
        self = SocketAddressText.isIPLiteral(text) ? .ip(text) : .dns(text)
    }

    /// OpenSSL config syntax: `DNS:name` or `IP:addr`.
    public var description: String {
        switch self {
        case .dns(let name): "DNS:\(name)"
        case .ip(let address): "IP:\(address)"
        }
    }
}

/// A private certificate authority made with the OpenSSL C API: EC P-256
/// keys, SHA-256 signatures, X.509 v3 extensions. Used by `memhaul certs init`
/// and by tests to make expired certificates and foreign CAs.
public final class CertificateAuthority: @unchecked Sendable {
    // @unchecked: the key and certificate are not modified after creation.
    private let key: OpaquePointer  // EVP_PKEY
    private let certificate: OpaquePointer  // X509
    /// The CA certificate, PEM.
    public let certificatePEM: String
    /// The CA private key, PEM (PKCS#8, unencrypted).
    public let privateKeyPEM: String

    private init(key: OpaquePointer, certificate: OpaquePointer) throws {
        self.key = key
        self.certificate = certificate
        self.certificatePEM = try PEM.write(certificate: certificate)
        self.privateKeyPEM = try PEM.write(privateKey: key)
    }

    deinit {
        X509_free(certificate)
        EVP_PKEY_free(key)
    }

    /// A new self-signed CA: basicConstraints critical CA:TRUE, keyUsage keyCertSign+cRLSign.
    public static func create(commonName: String, days: Int = 365) throws -> CertificateAuthority {
        OpenSSLErrors.clear()
        guard let key = cmh_keygen_p256() else { throw OpenSSLErrors.configurationError("EC P-256 key generation") }
        let now = Int64(time(nil))
        let cert: OpaquePointer
        do {
            cert = try makeCertificate(
                subjectKey: key, commonName: commonName, issuer: nil, issuerKey: key,
                notBefore: now - 300, notAfter: now + Int64(days) * 86400,
                extensions: [
                    (NID_basic_constraints, "critical,CA:TRUE"),
                    (NID_key_usage, "critical,keyCertSign,cRLSign"),
                    (NID_subject_key_identifier, "hash"),
                ])
        } catch {
            EVP_PKEY_free(key)
            throw error
        }
        return try CertificateAuthority(key: key, certificate: cert)
    }

    /// Loads a CA from its PEM certificate and key (e.g. to issue more certificates later).
    public init(certificatePEM: String, privateKeyPEM: String) throws {
        OpenSSLErrors.clear()
        guard let cert = PEM.readCertificate(certificatePEM) else {
            throw OpenSSLErrors.configurationError("cannot parse CA certificate")
        }
        guard let key = PEM.readPrivateKey(privateKeyPEM) else {
            X509_free(cert)
            throw OpenSSLErrors.configurationError("cannot parse CA private key")
        }
        guard X509_check_private_key(cert, key) == 1 else {
            X509_free(cert)
            EVP_PKEY_free(key)
            throw OpenSSLErrors.configurationError("CA key does not match CA certificate")
        }
        self.key = key
        self.certificate = cert
        self.certificatePEM = certificatePEM
        self.privateKeyPEM = privateKeyPEM
    }

    /// Issues a leaf certificate with a fresh P-256 key.
    ///
    /// keyUsage digitalSignature; extendedKeyUsage from `usage`; validity
    /// `[notBefore, notAfter]` in seconds since the epoch (default: from 5
    /// minutes ago, for clock skew, to 365 days ahead). Past dates make expired
    /// certificates for tests.
    public func issue(
        commonName: String, sans: [SubjectAlternativeName] = [], usage: CertificateUsage,
        notBefore: Int64? = nil, notAfter: Int64? = nil
    ) throws -> (certificatePEM: String, privateKeyPEM: String) {
        OpenSSLErrors.clear()
        guard let leafKey = cmh_keygen_p256() else { throw OpenSSLErrors.configurationError("EC P-256 key generation") }
        defer { EVP_PKEY_free(leafKey) }
        let now = Int64(time(nil))
        var extensions: [(Int32, String)] = [
            (NID_basic_constraints, "critical,CA:FALSE"),
            (NID_key_usage, "critical,digitalSignature"),
            (NID_subject_key_identifier, "hash"),
            (NID_authority_key_identifier, "keyid:always"),
        ]
        var eku: [String] = []
        if usage.contains(.serverAuth) { eku.append("serverAuth") }
        if usage.contains(.clientAuth) { eku.append("clientAuth") }
        if !eku.isEmpty { extensions.append((NID_ext_key_usage, eku.joined(separator: ","))) }
        if !sans.isEmpty { extensions.append((NID_subject_alt_name, sans.map(\.description).joined(separator: ","))) }
        let cert = try Self.makeCertificate(
            subjectKey: leafKey, commonName: commonName, issuer: certificate, issuerKey: key,
            notBefore: notBefore ?? now - 300, notAfter: notAfter ?? now + 365 * 86400, extensions: extensions)
        defer { X509_free(cert) }
        return (try PEM.write(certificate: cert), try PEM.write(privateKey: leafKey))
    }

    /// Builds and signs (SHA-256) an X.509 v3 certificate; `issuer` nil means self-signed.
    private static func makeCertificate(
        subjectKey: OpaquePointer, commonName: String, issuer: OpaquePointer?, issuerKey: OpaquePointer,
        notBefore: Int64, notAfter: Int64, extensions: [(Int32, String)]
    ) throws -> OpaquePointer {
        guard let cert = X509_new() else { throw OpenSSLErrors.configurationError("X509_new") }
        var ok = X509_set_version(cert, 2) == 1 && cmh_x509_set_random_serial(cert) == 1
        ok = ok && ASN1_TIME_set(X509_getm_notBefore(cert), time_t(notBefore)) != nil
        ok = ok && ASN1_TIME_set(X509_getm_notAfter(cert), time_t(notAfter)) != nil
        ok = ok && X509_set_pubkey(cert, subjectKey) == 1
        let name = X509_get_subject_name(cert)
        ok = ok && X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, commonName, -1, -1, 0) == 1
        ok = ok && X509_set_issuer_name(cert, issuer.map { X509_get_subject_name($0) } ?? name) == 1
        guard ok else {
            X509_free(cert)
            throw OpenSSLErrors.configurationError("cannot build certificate for \(commonName)")
        }
        for (nid, value) in extensions where cmh_x509_add_ext(cert, issuer ?? cert, nid, value) != 1 {
            X509_free(cert)
            throw OpenSSLErrors.configurationError("cannot add extension \(value) to certificate for \(commonName)")
        }
        guard X509_sign(cert, issuerKey, EVP_sha256()) > 0 else {
            X509_free(cert)
            throw OpenSSLErrors.configurationError("cannot sign certificate for \(commonName)")
        }
        return cert
    }
}

/// PEM encoding through memory BIOs.
enum PEM {
    static func write(certificate: OpaquePointer) throws -> String {
        try withMemoryBIO { PEM_write_bio_X509($0, certificate) == 1 }
    }

    static func write(privateKey: OpaquePointer) throws -> String {
        try withMemoryBIO { PEM_write_bio_PrivateKey($0, privateKey, nil, nil, 0, nil, nil) == 1 }
    }

    /// An `X509*` the caller frees, or nil.
    static func readCertificate(_ pem: String) -> OpaquePointer? {
        withReadBIO(pem) { PEM_read_bio_X509($0, nil, nil, nil) }
    }

    /// An `EVP_PKEY*` the caller frees, or nil.
    static func readPrivateKey(_ pem: String) -> OpaquePointer? {
        withReadBIO(pem) { PEM_read_bio_PrivateKey($0, nil, nil, nil) }
    }

    private static func withReadBIO(_ pem: String, _ body: (OpaquePointer) -> OpaquePointer?) -> OpaquePointer? {
        var bytes = Array(pem.utf8)
        return bytes.withUnsafeMutableBytes { raw -> OpaquePointer? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return body(bio)
        }
    }

    private static func withMemoryBIO(_ write: (OpaquePointer) -> Bool) throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw OpenSSLErrors.configurationError("BIO_new") }
        defer { BIO_free(bio) }
        guard write(bio) else { throw OpenSSLErrors.configurationError("PEM write") }
        let pending = Int(BIO_ctrl_pending(bio))
        var out = [UInt8](repeating: 0, count: pending)
        let n = out.withUnsafeMutableBytes { BIO_read(bio, $0.baseAddress, Int32(pending)) }
        return String(decoding: out[0..<max(Int(n), 0)], as: UTF8.self)
    }
}

/// Why ``CertificateBundle/create(directory:receiverNames:senderName:days:force:)`` refused.
public enum CertificateBundleError: Error, Equatable, Sendable, CustomStringConvertible {
    /// These files exist and `force` was not given.
    case wouldOverwrite([String])

    public var description: String {
        switch self {
        case .wouldOverwrite(let paths):
            "refusing to overwrite \(paths.joined(separator: ", ")) (use --force)"
        }
    }
}

/// The files `memhaul certs init DIR` writes.
public enum CertificateBundle {
    public static let fileNames = ["ca.pem", "ca.key", "receiver.pem", "receiver.key", "sender.pem", "sender.key"]

    /// Creates `directory` (0700) with a new CA, a receiver certificate
    /// (serverAuth; SANs DNS:localhost, IP:127.0.0.1, IP:::1 and
    /// `receiverNames`) and a sender certificate (clientAuth, CN `senderName`).
    /// Keys are 0600, certificates 0644. Existing files are an error unless
    /// `force`. Returns the paths written.
    public static func create(
        directory: String, receiverNames: [String] = [], senderName: String = "memhaul-sender",
        days: Int = 365, force: Bool = false
    ) throws -> [String] {
        precondition(days > 0, "days must be positive")
        let dir = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
        // An existing directory is fine; the files in it are checked next.
        let made: Result<Int32, SystemError> = Result { () throws(SystemError) -> Int32 in
            try Syscall.run("mkdir(\(dir))") { mkdir(dir, 0o700) }
        }
        if case .failure(let error) = made, error.errno != .EEXIST { throw error }
        let paths = fileNames.map { "\(dir)/\($0)" }
        if !force {
            let existing = paths.filter { path in (try? Syscall.run("access(\(path))") { access(path, F_OK) }) != nil }
            if !existing.isEmpty { throw CertificateBundleError.wouldOverwrite(existing) }
        }
        let ca = try CertificateAuthority.create(commonName: "memhaul CA", days: days)
        let now = Int64(time(nil))
        let notAfter = now + Int64(days) * 86400
        var receiverSANs: [SubjectAlternativeName] = [.dns("localhost"), .ip("127.0.0.1"), .ip("::1")]
        for name in receiverNames {
            let san = SubjectAlternativeName(name)
            if !receiverSANs.contains(san) { receiverSANs.append(san) }
        }
        let receiver = try ca.issue(
            commonName: receiverNames.first ?? "memhaul-receiver", sans: receiverSANs, usage: .serverAuth, notAfter: notAfter)
        let sender = try ca.issue(commonName: senderName, usage: .clientAuth, notAfter: notAfter)
        let contents = [
            ca.certificatePEM, ca.privateKeyPEM, receiver.certificatePEM, receiver.privateKeyPEM,
            sender.certificatePEM, sender.privateKeyPEM,
        ]
        for (path, text) in zip(paths, contents) {
            try writeFile(path, text, mode: path.hasSuffix(".key") ? 0o600 : 0o644, force: force)
        }
        return paths
    }

    /// What a certificate issued by ``issue(directory:name:role:names:days:force:)`` is for.
    public enum Role: String, Sendable, CaseIterable {
        /// clientAuth: a sender agent (`memhaul migrate`, `memhaul sender`).
        case sender
        /// serverAuth: a receiver agent, with DNS/IP SANs.
        case receiver
    }

    /// Issues one more certificate from the CA in `directory` (needs `ca.pem`
    /// and `ca.key`): CN `name`, written to `<name>.pem` (0644) and
    /// `<name>.key` (0600) in `directory`. A receiver certificate names
    /// localhost, 127.0.0.1, ::1 and `names`; a sender one has no SANs (the
    /// receiver tells senders apart by CN and fingerprint). Existing files are
    /// an error unless `force`. Returns the paths written.
    public static func issue(
        directory: String, name: String, role: Role, names: [String] = [], days: Int = 365, force: Bool = false
    ) throws -> [String] {
        precondition(days > 0, "days must be positive")
        let dir = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
        let paths = ["\(dir)/\(name).pem", "\(dir)/\(name).key"]
        if !force {
            let existing = paths.filter { path in (try? Syscall.run("access(\(path))") { access(path, F_OK) }) != nil }
            if !existing.isEmpty { throw CertificateBundleError.wouldOverwrite(existing) }
        }
        let ca = try CertificateAuthority(
            certificatePEM: try readSmallFile("\(dir)/ca.pem"), privateKeyPEM: try readSmallFile("\(dir)/ca.key"))
        var sans: [SubjectAlternativeName] = []
        if role == .receiver {
            sans = [.dns("localhost"), .ip("127.0.0.1"), .ip("::1")]
            for n in names where !sans.contains(SubjectAlternativeName(n)) { sans.append(SubjectAlternativeName(n)) }
        }
        let leaf = try ca.issue(
            commonName: name, sans: sans, usage: role == .sender ? .clientAuth : .serverAuth,
            notAfter: Int64(time(nil)) + Int64(days) * 86400)
        try writeFile(paths[0], leaf.certificatePEM, mode: 0o644, force: force)
        try writeFile(paths[1], leaf.privateKeyPEM, mode: 0o600, force: force)
        return paths
    }

    /// A PEM file (at most 1 MiB), read through the syscall seam.
    static func readSmallFile(_ path: String) throws -> String {
        do {
            return String(decoding: try SmallFile.read(path), as: UTF8.self)
        } catch let e as SmallFile.TooLarge {
            throw OpenSSLErrors.configurationError("\(e), not a PEM file")
        }
    }

    private static func writeFile(_ path: String, _ text: String, mode: mode_t, force: Bool) throws {
        let flags = O_WRONLY | O_CREAT | (force ? O_TRUNC : O_EXCL)
        let fd = try FileDescriptor.open(path, flags, mode: mode)
        // open's mode is filtered by umask and ignored for existing files.
        _ = try Syscall.run("fchmod(\(path))") { fchmod(fd.rawValue, mode) }
        try Array(text.utf8).withUnsafeBytes { try fd.writeAll($0) }
        _ = try Syscall.run("fsync(\(path))") { fsync(fd.rawValue) }
        try fd.close()
    }
}

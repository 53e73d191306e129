/// Files and checks for one side of a mutual-TLS 1.3 connection.
///
/// The receiver (server) and the sender (client) each present a certificate
/// issued by the CA in `caFile` and verify the other's chain against it
/// (`memhaul certs init` makes such a set).
public struct TLSConfiguration: Sendable, Equatable {
    /// PEM CA bundle the peer's chain must lead to.
    public var caFile: String
    /// PEM certificate (chain) we present.
    public var certificateFile: String?
    /// PEM private key of `certificateFile`.
    public var privateKeyFile: String?
    /// Client: the name the server certificate must carry (DNS SAN, or IP SAN
    /// for an address literal). nil: the host that was dialled.
    public var serverName: String?
    /// Extra check of the peer's leaf certificate: its SHA-256 fingerprint
    /// must be one of these (hex, with or without colons, any case). Empty: no pinning.
    public var pinnedSHA256Fingerprints: [String]
    /// Server: refuse clients without a valid certificate. Off, a client
    /// certificate is still verified if one is sent.
    public var requireClientCertificate: Bool
    /// Longest a handshake may take before ``TLSError/Kind/timedOut``.
    public var handshakeTimeout: Duration

    public init(
        caFile: String, certificateFile: String? = nil, privateKeyFile: String? = nil, serverName: String? = nil,
        pinnedSHA256Fingerprints: [String] = [], requireClientCertificate: Bool = true,
        handshakeTimeout: Duration = .seconds(10)
    ) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
        self.serverName = serverName
        self.pinnedSHA256Fingerprints = pinnedSHA256Fingerprints
        self.requireClientCertificate = requireClientCertificate
        self.handshakeTimeout = handshakeTimeout
    }

    /// A fingerprint as 64 lower-case hex digits without colons, or nil if it is not SHA-256 hex.
    public static func normalizeFingerprint(_ text: String) -> String? {
        let hex = text.lowercased().filter { $0 != ":" && $0 != " " }
        guard hex.count == 64, hex.allSatisfy({ $0.isHexDigit }) else { return nil }
        return hex
    }
}

import MemhaulTLS

/// A `memhaul certs init` bundle (CA, receiver, sender) in a fresh temporary
/// directory, for one test; never committed.
public struct TestPKI: Sendable {
    public let directory: String

    public init() throws {
        directory = temporaryDirectory("pki")
        _ = try CertificateBundle.create(directory: directory, force: true)
    }

    /// `role` is `receiver` or `sender`.
    public func configuration(_ role: String) -> TLSConfiguration {
        TLSConfiguration(caFile: directory + "/ca.pem", certificateFile: directory + "/\(role).pem", privateKeyFile: directory + "/\(role).key")
    }
}

import ArgumentParser
import Foundation
import MemhaulSession
import MemhaulSender
import MemhaulReceiver
import MemhaulTLS

/// TLS options shared by `receive`, `sender` and `migrate`: mutual TLS 1.3 by
/// default, plaintext only with `--insecure`.
struct TransportOptions: ParsableArguments {
    @Option(help: "Directory made by `memhaul certs init` (takes ca.pem and this role's .pem/.key).")
    var certs: String?
    @Option(help: "CA certificate (PEM) the peer must chain to.")
    var ca: String?
    @Option(help: "This agent's certificate (PEM).")
    var cert: String?
    @Option(help: "This agent's private key (PEM).")
    var key: String?
    @Option(name: .customLong("pin"), help: "Accept the peer only with this SHA-256 certificate fingerprint (repeatable).")
    var pins: [String] = []
    @Flag(help: "Plaintext, unauthenticated transport. Never use across a network you do not own.")
    var insecure = false
    @Option(help: ArgumentHelp("Seconds the peer may leave our data or keepalive probes unacknowledged before the connection counts as broken (TCP_USER_TIMEOUT).", discussion: "A sender then resumes the migration (see --resume-timeout); a receiver drops the connection and keeps the image for a resume."))
    var peerTimeout: Double = 20

    func validate() throws {
        guard peerTimeout >= 1, peerTimeout <= 3600 else { throw ValidationError("--peer-timeout must be between 1 and 3600 seconds") }
        if insecure {
            if certs != nil || ca != nil || cert != nil || key != nil {
                throw ValidationError("--insecure cannot be combined with TLS options")
            }
            return
        }
        if certs == nil && (ca == nil || cert == nil || key == nil) {
            throw ValidationError("TLS needs --certs DIR, or --ca, --cert and --key; plaintext only with --insecure")
        }
        for pin in pins where TLSConfiguration.normalizeFingerprint(pin) == nil {
            throw ValidationError("--pin \(pin) is not a SHA-256 fingerprint (64 hex digits)")
        }
    }

    func warnIfInsecure() {
        if insecure {
            Log.logger.warning("--insecure: memory pages travel in plaintext, and the peer is not authenticated")
        }
    }

    /// Files for `role` ("sender" or "receiver").
    func configuration(role: String, serverName: String? = nil) -> TLSConfiguration? {
        if insecure { return nil }
        let dir = certs.map { $0.hasSuffix("/") ? $0 : $0 + "/" }
        return TLSConfiguration(
            caFile: ca ?? dir! + "ca.pem",
            certificateFile: cert ?? dir! + "\(role).pem",
            privateKeyFile: key ?? dir! + "\(role).key",
            serverName: serverName,
            pinnedSHA256Fingerprints: pins)
    }

    /// The sender's connector: TLS client (verifying the receiver's name) or plain TCP.
    func connector() throws -> SenderMigration.Connector {
        guard let config = configuration(role: "sender") else {
            return { request in try TCPStream.connect(host: request.host, port: request.port, options: tcpOptions) }
        }
        let context = try TLSClientContext(configuration: config)
        return { request in
            let tcp = try TCPStream.connect(host: request.host, port: request.port, options: tcpOptions)
            return try context.connect(over: tcp, serverName: request.serverName ?? request.host)
        }
    }

    /// The receiver's handshake: TLS server requiring a client certificate, or plain.
    func handshake() throws -> ReceiverAgent.Handshake {
        guard let config = configuration(role: "receiver") else { return { $0 } }
        let context = try TLSServerContext(configuration: config)
        return { tcp in try context.accept(on: tcp) }
    }

    var tcpOptions: TCPOptions {
        TCPOptions(socketBufferBytes: 4 << 20, deadPeerTimeout: .milliseconds(Int64(peerTimeout * 1000)))
    }
}

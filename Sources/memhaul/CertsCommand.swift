import ArgumentParser
import Foundation
import Glibc
import MemhaulSystem
import MemhaulTLS

/// `memhaul certs`: certificates for the mutual-TLS link between sender and receiver.
struct CertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "Manage the certificates for mutual TLS between sender and receiver.",
        subcommands: [Init.self, Show.self]
    )

    /// `memhaul certs init DIR`: a private CA plus one receiver and one sender certificate.
    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "init",
            abstract: "Create a CA and receiver/sender certificates (EC P-256) in DIR.",
            discussion: """
                Writes ca.pem, ca.key, receiver.pem, receiver.key, sender.pem and sender.key. \
                The receiver certificate names localhost, 127.0.0.1 and ::1 plus every --receiver-name. \
                Copy ca.pem and the receiver pair to the receiving machine, ca.pem and the sender pair \
                to the sending one; keep ca.key offline.
                """
        )

        @Argument(help: "Directory to create (mode 0700).")
        var directory: String

        @Option(name: .customLong("receiver-name"), help: "A DNS name or IP address the receiver is dialled by (repeatable).")
        var receiverNames: [String] = []

        @Option(name: .customLong("sender-name"), help: "Common name of the sender certificate.")
        var senderName = "memhaul-sender"

        @Option(help: "Validity in days.")
        var days = 365

        @Flag(help: "Overwrite existing files.")
        var force = false

        func validate() throws {
            guard days > 0 && days <= 36500 else { throw ValidationError("--days must be between 1 and 36500") }
            guard !senderName.isEmpty else { throw ValidationError("--sender-name must not be empty") }
            for name in receiverNames where name.isEmpty || name.contains(",") {
                throw ValidationError("--receiver-name '\(name)' is not a host name or IP address")
            }
        }

        func run() throws {
            let paths = try CertificateBundle.create(
                directory: directory, receiverNames: receiverNames, senderName: senderName, days: days, force: force)
            let roles = [
                "CA certificate (both sides)", "CA private key (keep offline)",
                "receiver certificate", "receiver private key",
                "sender certificate (CN=\(senderName))", "sender private key",
            ]
            for (path, role) in zip(paths, roles) { print("wrote \(path)  \(role)") }
            let names = ["localhost", "127.0.0.1", "::1"] + receiverNames
            print("receiver names: \(names.joined(separator: ", ")); valid for \(days) days")
            for role in ["receiver", "sender"] {
                let pem = try readText("\(directory)/\(role).pem")
                print("\(role) SHA-256 fingerprint: \(try PeerIdentity(certificatePEM: pem).colonFingerprint)")
            }
        }
    }

    /// `memhaul certs show FILE...`: the identity memhaul sees in a certificate (for pinning and authorisation).
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Print a certificate's common name, alternative names, expiry and SHA-256 fingerprint."
        )

        @Argument(help: "PEM certificate files.")
        var files: [String]

        func run() throws {
            for file in files {
                let id: PeerIdentity
                do {
                    id = try PeerIdentity(certificatePEM: readText(file))
                } catch let error as SystemError {
                    throw error
                } catch {
                    throw CertsFileError(message: "\(file): \(error)")
                }
                let sans = id.dnsNames.map { "DNS:\($0)" } + id.ipAddresses.map { "IP:\($0)" }
                print("\(file):")
                print("  CN: \(id.commonName ?? "-")")
                print("  SAN: \(sans.isEmpty ? "-" : sans.joined(separator: ", "))")
                print("  not after: \(Date(timeIntervalSince1970: TimeInterval(id.notAfter)))")
                print("  SHA-256: \(id.colonFingerprint)")
            }
        }
    }
}

/// A certs failure naming the file, printed as one line.
struct CertsFileError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// A small text file, read through the syscall seam (errors name the call and errno).
private func readText(_ path: String) throws -> String {
    let fd = try FileDescriptor.open(path, O_RDONLY)
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16384)
    while true {
        let n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
        if n == 0 { break }
        bytes += chunk[0..<n]
        if bytes.count > 1 << 20 { throw CertsFileError(message: "\(path): larger than 1 MiB, not a certificate") }
    }
    return String(decoding: bytes, as: UTF8.self)
}

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
        subcommands: [Init.self, Issue.self, Show.self]
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
            // What the certificate carries (a name given twice is in it once).
            let receiver = try PeerIdentity(certificatePEM: try readText("\(directory)/receiver.pem"))
            print("receiver names: \((receiver.dnsNames + receiver.ipAddresses).joined(separator: ", ")); valid for \(days) days")
            for role in ["receiver", "sender"] {
                let pem = try readText("\(directory)/\(role).pem")
                print("\(role) SHA-256 fingerprint: \(try PeerIdentity(certificatePEM: pem).colonFingerprint)")
            }
        }
    }

    /// `memhaul certs issue DIR --name NAME --role sender|receiver`: one more
    /// certificate from the CA of `certs init`, e.g. a second sender the
    /// receiver can tell apart (`receive --authorize`).
    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "issue",
            abstract: "Issue another sender or receiver certificate from the CA in DIR (needs DIR/ca.key).",
            discussion: """
                Writes DIR/NAME.pem (0644) and DIR/NAME.key (0600), common name NAME. A receiver \
                certificate names localhost, 127.0.0.1 and ::1 plus every --receiver-name. Prints the \
                common name and SHA-256 fingerprint a receiver's --authorize policy can name.
                """
        )

        @Argument(help: "Directory made by `memhaul certs init` (holds ca.pem and ca.key).")
        var directory: String

        @Option(help: "Common name of the certificate, also its file name (NAME.pem, NAME.key).")
        var name: String

        @Option(help: "sender (client certificate) or receiver (server certificate).")
        var role: String = "sender"

        @Option(name: .customLong("receiver-name"), help: "For --role receiver: a DNS name or IP address it is dialled by (repeatable).")
        var receiverNames: [String] = []

        @Option(help: "Validity in days.")
        var days = 365

        @Flag(help: "Overwrite existing files.")
        var force = false

        func validate() throws {
            guard CertificateBundle.Role(rawValue: role) != nil else { throw ValidationError("--role must be sender or receiver") }
            guard days > 0 && days <= 36500 else { throw ValidationError("--days must be between 1 and 36500") }
            // The name is a file name in DIR: no path, nothing `certs init` writes.
            guard !name.isEmpty, name.utf8.count <= 64, !name.hasPrefix("."),
                  name.utf8.allSatisfy({ c in
                      (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x2D || c == 0x5F
                  }) else {
                throw ValidationError("--name '\(name)' must be 1-64 of A-Z a-z 0-9 . _ - (it names the files), not starting with .")
            }
            guard name != "ca" else { throw ValidationError("--name ca would overwrite the CA") }
            if role == "sender" && !receiverNames.isEmpty { throw ValidationError("--receiver-name is only for --role receiver") }
            for n in receiverNames where n.isEmpty || n.contains(",") {
                throw ValidationError("--receiver-name '\(n)' is not a host name or IP address")
            }
        }

        func run() throws {
            let dir = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
            for file in ["ca.pem", "ca.key"] where access("\(dir)/\(file)", R_OK) != 0 {
                throw CertsFileError(message: "\(dir)/\(file): \(String(cString: strerror(errno))) (certs issue needs the CA certificate and its private key)")
            }
            let paths = try CertificateBundle.issue(
                directory: dir, name: name, role: CertificateBundle.Role(rawValue: role)!, names: receiverNames, days: days, force: force)
            print("wrote \(paths[0])  \(role) certificate (CN=\(name))")
            print("wrote \(paths[1])  \(role) private key")
            let id = try PeerIdentity(certificatePEM: readText(paths[0]))
            print("CN: \(name)")
            print("SHA-256: \(id.colonFingerprint)")
            if role == "sender" { print("authorize as: \(name)  or  sha256:\(id.sha256Fingerprint)") }
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
                print("  authorize as: \(id.commonName ?? "sha256:\(id.sha256Fingerprint)")  or  sha256:\(id.sha256Fingerprint)")
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
    do {
        return String(decoding: try SmallFile.read(path), as: UTF8.self)
    } catch let e as SmallFile.TooLarge {
        throw CertsFileError(message: "\(e), not a certificate")
    }
}

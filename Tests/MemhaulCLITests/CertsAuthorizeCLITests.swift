import Foundation
import Glibc
import Testing
import MemhaulTestSupport

/// `memhaul certs issue` and `memhaul receive --authorize`, run as the built binary.
@Suite(.serialized) struct CertsAuthorizeCLITests {

    func mode(_ path: String) -> mode_t {
        var st = stat()
        return stat(path, &st) == 0 ? st.st_mode & 0o777 : 0
    }

    /// A second sender certificate from the CA of `certs init`: files and modes,
    /// verifiable against ca.pem, a distinct CN and fingerprint that `certs show`
    /// prints the same way; no overwrite without --force; a directory without
    /// ca.key is one clear line.
    @Test func issueAddsASenderCertificateFromTheSameCA() throws {
        let dir = temporaryDirectory("pki") + "/pki"
        defer { try? FileManager.default.removeItem(atPath: URL(fileURLWithPath: dir).deletingLastPathComponent().path) }
        let initRun = try runMemhaul(["certs", "init", dir])
        #expect(initRun.status == 0, "\(initRun.err)")

        let issued = try runMemhaul(["certs", "issue", dir, "--name", "sender-b", "--role", "sender"])
        #expect(issued.status == 0, "\(issued.err)")
        #expect(mode(dir + "/sender-b.key") == 0o600)
        #expect(mode(dir + "/sender-b.pem") == 0o644)
        let fingerprint = try #require(issued.out.split(separator: "\n").first { $0.hasPrefix("SHA-256: ") }).dropFirst(9)
        #expect(fingerprint.count == 95, "\(issued.out)")  // 32 bytes as AB:CD:…

        // Chains to the CA, for client authentication, with CN sender-b.
        let verify = try runProgram(["/usr/bin/openssl", "verify", "-CAfile", dir + "/ca.pem", "-purpose", "sslclient", dir + "/sender-b.pem"])
        #expect(verify.status == 0, "\(verify.err)")

        let show = try runMemhaul(["certs", "show", dir + "/sender-b.pem", dir + "/sender.pem"])
        #expect(show.status == 0, "\(show.err)")
        #expect(show.out.contains("CN: sender-b"))
        #expect(show.out.contains("CN: memhaul-sender"))
        #expect(show.out.contains("SHA-256: \(fingerprint)"))
        let hex = fingerprint.replacingOccurrences(of: ":", with: "").lowercased()
        #expect(show.out.contains("authorize as: sender-b  or  sha256:\(hex)"))
        let shown = show.out.split(separator: "\n").filter { $0.contains("SHA-256: ") }
        #expect(shown.count == 2 && shown[0] != shown[1], "two certificates, two fingerprints")

        let again = try runMemhaul(["certs", "issue", dir, "--name", "sender-b"])
        #expect(again.status != 0)
        #expect(again.err.contains("refusing to overwrite"), "\(again.err)")
        #expect(try runMemhaul(["certs", "issue", dir, "--name", "sender-b", "--force"]).status == 0)

        let bad = try runMemhaul(["certs", "issue", dir, "--name", "../escape"])
        #expect(bad.status != 0 && bad.err.contains("--name"), "\(bad.err)")

        try FileManager.default.removeItem(atPath: dir + "/ca.key")
        let noKey = try runMemhaul(["certs", "issue", dir, "--name", "sender-c"])
        #expect(noKey.status != 0)
        #expect(noKey.err.contains("ca.key"), "\(noKey.err)")
        #expect(access(dir + "/sender-c.pem", F_OK) != 0)
    }

    /// A malformed policy stops `memhaul receive` before it listens, with the
    /// file and line number; --authorize without TLS is refused too.
    @Test func malformedPolicyFailsReceiverStartupWithTheLineNumber() throws {
        let root = temporaryDirectory("authz")
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(try runMemhaul(["certs", "init", root + "/pki"]).status == 0)
        let policy = root + "/authorize"
        try "# senders\nsender-a  a-*\n\nsender-b  b/*\n".write(toFile: policy, atomically: true, encoding: .utf8)
        let args = ["receive", "--listen", "127.0.0.1:0", "--images", root + "/images", "--control", root + "/r.sock",
                    "--certs", root + "/pki", "--authorize", policy]
        let r = try runMemhaul(args)
        #expect(r.status != 0)
        #expect(r.err.contains("\(policy):4:"), "\(r.err)")
        #expect(r.err.contains("b/*"), "\(r.err)")
        #expect(!r.out.contains("listening"))

        let missing = try runMemhaul(["receive", "--listen", "127.0.0.1:0", "--images", root + "/images",
                                      "--control", root + "/r.sock", "--certs", root + "/pki", "--authorize", root + "/nope"])
        #expect(missing.status != 0 && missing.err.contains(root + "/nope"), "\(missing.err)")

        let plain = try runMemhaul(["receive", "--listen", "127.0.0.1:0", "--images", root + "/images",
                                    "--control", root + "/r.sock", "--insecure", "--authorize", policy])
        #expect(plain.status != 0 && plain.err.contains("--authorize needs TLS"), "\(plain.err)")
    }
}

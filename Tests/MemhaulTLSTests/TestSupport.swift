import Foundation
import Synchronization
import Testing
@testable import MemhaulTLS
import MemhaulTestSupport

/// Runs `body` on its own OS thread (so blocking socket calls never tie up
/// the test's cooperative threads) and hands back its result.
final class Background<T: Sendable>: Sendable {
    private let result = Mutex<Result<T, any Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)

    init(_ body: @escaping @Sendable () throws -> T) {
        let thread = Thread { self.run(body) }
        thread.stackSize = 1 << 20
        thread.start()
    }

    private func run(_ body: @Sendable () throws -> T) {
        let r = Result { try body() }
        result.withLock { $0 = r }
        done.signal()
    }

    /// Waits for the thread and returns its value or rethrows its error.
    func value() throws -> T {
        guard done.waitBounded("the background thread's result") else { throw TestSetupError("the background thread never returned") }
        done.signal()
        return try result.withLock { $0! }.get()
    }

    /// Waits for the thread and returns its error, nil if it succeeded.
    func error() -> (any Error)? {
        do {
            _ = try value()
            return nil
        } catch {
            return error
        }
    }
}

/// Removed at exit (set once, before any test reads it).
nonisolated(unsafe) private var testPKIDirectory: String?

/// A throw-away PKI in a temporary directory: our CA and a foreign one, and
/// certificates good and bad. Built once per test process.
final class CertificateFixtures: Sendable {
    static let shared = try! CertificateFixtures()

    let dir: String
    var ca: String { "\(dir)/ca.pem" }
    var foreignCA: String { "\(dir)/foreign-ca.pem" }

    init() throws {
        dir = temporaryDirectory("tls-test")
        testPKIDirectory = dir
        atexit { if let dir = testPKIDirectory { try? FileManager.default.removeItem(atPath: dir) } }
        let ca = try CertificateAuthority.create(commonName: "test CA")
        let foreign = try CertificateAuthority.create(commonName: "foreign CA")
        try write("ca.pem", ca.certificatePEM)
        try write("foreign-ca.pem", foreign.certificatePEM)
        let now = Int64(time(nil))
        let sets: [(String, CertificateAuthority, String, [SubjectAlternativeName], CertificateUsage, Int64?, Int64?)] = [
            ("receiver", ca, "receiver", [.dns("localhost"), .ip("127.0.0.1"), .ip("::1")], .serverAuth, nil, nil),
            ("sender", ca, "memhaul-sender", [], .clientAuth, nil, nil),
            ("foreign-sender", foreign, "intruder", [], .clientAuth, nil, nil),
            ("expired-sender", ca, "old-sender", [], .clientAuth, now - 10 * 86400, now - 86400),
            ("wrong-name-receiver", ca, "elsewhere", [.dns("wrong.example")], .serverAuth, nil, nil),
            // The right name, but only as the subject CN: no SAN at all.
            ("cn-only-receiver", ca, "localhost", [], .serverAuth, nil, nil),
            ("foreign-receiver", foreign, "impostor", [.dns("localhost"), .ip("127.0.0.1")], .serverAuth, nil, nil),
        ]
        for (name, issuer, cn, sans, usage, notBefore, notAfter) in sets {
            let issued = try issuer.issue(commonName: cn, sans: sans, usage: usage, notBefore: notBefore, notAfter: notAfter)
            try write("\(name).pem", issued.certificatePEM)
            try write("\(name).key", issued.privateKeyPEM)
        }
    }

    private func write(_ name: String, _ text: String) throws {
        try text.write(toFile: "\(dir)/\(name)", atomically: false, encoding: .utf8)
    }

    func pem(_ name: String) throws -> String { try String(contentsOfFile: "\(dir)/\(name).pem", encoding: .utf8) }

    func server(_ name: String = "receiver", ca: String? = nil, timeout: Duration = .seconds(10), requireClient: Bool = true) -> TLSConfiguration {
        TLSConfiguration(
            caFile: ca ?? self.ca, certificateFile: "\(dir)/\(name).pem", privateKeyFile: "\(dir)/\(name).key",
            requireClientCertificate: requireClient, handshakeTimeout: timeout)
    }

    func client(_ name: String = "sender", ca: String? = nil, serverName: String? = nil, pins: [String] = []) -> TLSConfiguration {
        TLSConfiguration(
            caFile: ca ?? self.ca, certificateFile: "\(dir)/\(name).pem", privateKeyFile: "\(dir)/\(name).key",
            serverName: serverName, pinnedSHA256Fingerprints: pins, handshakeTimeout: .seconds(10))
    }
}

/// A listener on 127.0.0.1 (or `host`) whose next connection is TLS-accepted on a background thread.
struct TLSServerHarness {
    let listener: TCPListener
    let server: Background<TLSStream>

    init(_ configuration: TLSConfiguration, host: String = "127.0.0.1") throws {
        let listener = try TCPListener(host: host, port: 0)
        let context = try TLSServerContext(configuration: configuration)
        self.listener = listener
        server = Background {
            let tcp = try listener.accept(timeout: .seconds(30))
            return try context.accept(on: tcp)
        }
    }
}

/// Deterministic bytes.
func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    var x = UInt32(seed) &+ 1
    for i in 0..<count {
        x = x &* 1_103_515_245 &+ 12345
        out[i] = UInt8(truncatingIfNeeded: x >> 16)
    }
    return out
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulImage
import MemhaulSystem
import MemhaulTLS

extension ImageOwner {
    /// The sender identity the receiver records and compares: the verified
    /// peer certificate's fingerprint and common name.
    public init(peer: PeerIdentity) {
        self.init(fingerprint: peer.sha256Fingerprint, commonName: peer.commonName ?? "", subject: peer.description)
    }
}

/// Why a policy file was refused: `FILE:LINE: message`, one line.
public struct AuthorizationPolicyError: Error, Equatable, CustomStringConvertible {
    public var file: String
    /// 1-based; 0 when the file as a whole failed (unreadable, too large).
    public var line: Int
    public var message: String
    public var description: String { line > 0 ? "\(file):\(line): \(message)" : "\(file): \(message)" }
}

/// Which sender may write which migration ids (`memhaul receive --authorize FILE`).
///
/// One rule per line: a sender, then one or more migration-id patterns,
/// separated by blanks; `#` starts a comment. The sender is a certificate
/// common name, `sha256:<fingerprint>` (64 hex digits, colons allowed, as
/// `memhaul certs show` prints it) or `*` (any sender with a certificate from
/// the CA). Patterns are globs over `[A-Za-z0-9._-]` with `*` (any run) and
/// `?` (one character). A migration id is allowed for a sender if any rule
/// naming that sender has a pattern matching the whole id; everything else is
/// refused. An empty policy refuses every migration.
public struct AuthorizationPolicy: Sendable, Equatable {
    public enum Sender: Sendable, Equatable, CustomStringConvertible {
        case commonName(String)
        case fingerprint(String)
        case anyone

        public var description: String {
            switch self {
            case .commonName(let cn): cn
            case .fingerprint(let fp): "sha256:\(fp)"
            case .anyone: "*"
            }
        }

        func matches(_ sender: ImageOwner) -> Bool {
            switch self {
            case .commonName(let cn): !sender.commonName.isEmpty && sender.commonName == cn
            case .fingerprint(let fp): sender.fingerprint == fp
            case .anyone: true
            }
        }
    }

    public struct Rule: Sendable, Equatable {
        public var sender: Sender
        public var patterns: [String]
        /// Where the rule is in the file (for log lines).
        public var line: Int
    }

    public var rules: [Rule]
    /// The file it came from (log lines name it).
    public var source: String

    /// Parses policy text; the first bad line is an error naming its number.
    public init(parsing text: String, source: String = "policy") throws(AuthorizationPolicyError) {
        self.source = source
        rules = []
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = index + 1
            let content = rawLine.prefix { $0 != "#" }
            let fields = content.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard let first = fields.first else { continue }
            func fail(_ message: String) -> AuthorizationPolicyError {
                AuthorizationPolicyError(file: source, line: number, message: message)
            }
            let sender: Sender
            if first == "*" {
                sender = .anyone
            } else if first.lowercased().hasPrefix("sha256:") {
                guard let fp = TLSConfiguration.normalizeFingerprint(String(first.dropFirst(7))),
                      fp.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
                    throw fail("\(first) is not sha256: followed by 64 hex digits")
                }
                sender = .fingerprint(fp)
            } else {
                guard first.utf8.allSatisfy({ $0 > 0x20 && $0 != 0x7F }) else { throw fail("sender name \(first) has control characters") }
                sender = .commonName(first)
            }
            let patterns = Array(fields.dropFirst())
            guard !patterns.isEmpty else {
                throw fail("\(first) has no migration-id pattern (expected: SENDER PATTERN...; e.g. \(first) m-hostA-*)")
            }
            for p in patterns {
                guard p.utf8.count <= 128, p.utf8.allSatisfy({ Self.isIDByte($0) || $0 == 0x2A || $0 == 0x3F }) else {
                    throw fail("pattern \(p) may use only A-Z a-z 0-9 . _ - and the wildcards * ?")
                }
            }
            rules.append(Rule(sender: sender, patterns: patterns, line: number))
        }
    }

    /// Reads and parses `path` (at most 1 MiB).
    public static func load(path: String) throws(AuthorizationPolicyError) -> AuthorizationPolicy {
        let bytes: [UInt8]
        do {
            bytes = try SmallFile.read(path)
        } catch let e as SmallFile.TooLarge {
            throw AuthorizationPolicyError(file: path, line: 0, message: "\(e), not a policy")
        } catch {
            throw AuthorizationPolicyError(file: path, line: 0, message: "cannot read: \(error)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw AuthorizationPolicyError(file: path, line: 0, message: "not UTF-8 text")
        }
        return try AuthorizationPolicy(parsing: text, source: path)
    }

    /// The first rule that lets `sender` write `migrationID`, nil if none does.
    public func rule(allowing sender: ImageOwner, migrationID: String) -> Rule? {
        rules.first { rule in
            rule.sender.matches(sender) && rule.patterns.contains { Self.glob($0, matches: migrationID) }
        }
    }

    public func allows(_ sender: ImageOwner, migrationID: String) -> Bool {
        rule(allowing: sender, migrationID: migrationID) != nil
    }

    static func isIDByte(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x2D || c == 0x5F
    }

    /// `*` matches any run (also empty), `?` one byte; everything else itself.
    /// Iterative with one backtrack point, so linear-ish, no recursion.
    public static func glob(_ pattern: String, matches text: String) -> Bool {
        let p = Array(pattern.utf8), t = Array(text.utf8)
        var pi = 0, ti = 0
        var star: Int? = nil, starT = 0
        while ti < t.count {
            if pi < p.count && (p[pi] == 0x3F || (p[pi] != 0x2A && p[pi] == t[ti])) {
                pi += 1
                ti += 1
            } else if pi < p.count && p[pi] == 0x2A {
                star = pi
                starT = ti
                pi += 1
            } else if let s = star {
                pi = s + 1
                starT += 1
                ti = starT
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == 0x2A { pi += 1 }
        return pi == p.count
    }
}

/// The receiver's policy, shared by its sessions; `reload()` swaps it atomically
/// (SIGHUP), keeping the old one when the new file is bad.
public final class ReceiverAuthorization: @unchecked Sendable {  // `policy` behind `lock`
    public let path: String
    private let lock = NSLock()
    private var policy: AuthorizationPolicy

    /// Loads `path`; a bad file is an error naming the line.
    public init(path: String) throws(AuthorizationPolicyError) {
        self.path = path
        policy = try AuthorizationPolicy.load(path: path)
    }

    /// A policy from text (tests).
    public init(policy: AuthorizationPolicy) {
        path = policy.source
        self.policy = policy
    }

    public var current: AuthorizationPolicy { lock.withLock { policy } }

    /// Re-reads the file; on error the policy in force stays.
    @discardableResult
    public func reload() throws(AuthorizationPolicyError) -> AuthorizationPolicy {
        let fresh = try AuthorizationPolicy.load(path: path)
        lock.withLock { policy = fresh }
        return fresh
    }

    /// What SIGHUP does: re-read the policy, log the outcome (the memhaul
    /// executable calls this from its signal thread).
    public static func hangUp(_ authorization: ReceiverAuthorization?, log: @escaping @Sendable (String) -> Void) {
        guard let authorization else { return log("receiver: SIGHUP: no --authorize policy to reload") }
        do {
            let p = try authorization.reload()
            log("receiver: SIGHUP: reloaded authorisation policy \(authorization.path) (\(p.rules.count) rules)")
        } catch {
            log("receiver: SIGHUP: kept the previous authorisation policy: \(error)")
        }
    }
}

import Foundation
import MemhaulSession
import MemhaulWire

/// What happens to the source process after a successful migration.
public enum AfterAction: String, Sendable, CaseIterable {
    /// Left frozen (SIGSTOP), for the orchestrator to decide.
    case stop
    /// SIGKILL.
    case kill
    /// SIGCONT: the source runs on (a copy, not a move).
    case resume
}

/// How long the sender waits for the receiver, per wait (`Protocol/wire.md`,
/// "Deadlines"). Each limit covers the whole wait: KEEPALIVE traffic and
/// dripped bytes do not extend it. A missed deadline fails the migration with
/// ``MigrationError/peerTimeout(wait:seconds:)``; the target is then resumed
/// and untracked (``TargetHold``). Limits are seconds, > 0.
public struct PeerDeadlines: Sendable, Equatable {
    /// HELLO sent → WELCOME (or ERROR), first connection and every resume.
    /// The receiver only checks the policy and opens or creates the image.
    public var welcome: Double = 10
    /// ROUND_END of a pre-copy commit chunk (≤ `commitChunkBytes`, 64 MiB by
    /// default) → its ROUND_ACK, counted from when the sender starts waiting
    /// for it. The receiver writes and syncs the chunk first: 64 MiB at
    /// 20 MB/s on a slow or busy disk is 3–4 s, so 60 s is a wide margin;
    /// the target runs meanwhile.
    public var roundAck: Double = 60
    /// The same while the target is frozen (the final delta): shorter,
    /// because every second of it is downtime.
    public var frozenRoundAck: Double = 30
    /// Pre-cutover KEEPALIVE round trip (the receiver has applied everything).
    public var keepaliveDrain: Double = 60
    /// Verification round: ROUND_END with the sender's digest → the final
    /// ROUND_ACK with the receiver's. The receiver digests the whole image
    /// (about a second per few GiB from the page cache); the target is frozen.
    public var verification: Double = 30

    public init() {}

    /// `(name, value)` for messages and checks, in the order of the table.
    public var all: [(String, Double)] {
        [("welcome", welcome), ("round ack", roundAck), ("frozen round ack", frozenRoundAck),
         ("keepalive drain", keepaliveDrain), ("verification", verification)]
    }
}

/// Everything one migration needs to start.
public struct MigrationRequest: Sendable {
    public var pid: Int32
    public var host: String
    public var port: UInt16
    public var id: String
    public var parameters = ConvergenceParameters()
    public var deadlines = PeerDeadlines()
    public var after: AfterAction = .stop
    /// zstd level; nil = adaptive (raw … level 6, following the bottleneck).
    public var compressionLevel: Int32? = nil
    public var workers = 2
    /// Bytes of last-sent page content kept to send re-dirtied pages as deltas (``DeltaCache``,
    /// capability `pageDelta`); 0 = off, every page goes whole.
    public var deltaCacheBytes: UInt64 = MigrationRequest.defaultDeltaCacheBytes
    public static let defaultDeltaCacheBytes: UInt64 = 64 << 20
    public static let maxDeltaCacheBytes: UInt64 = 16 << 30
    /// Name the receiver's certificate must carry; nil = the host dialled.
    public var serverName: String?
    /// A last step after the proof (the CRIU hand-over: dump, ship, restore on
    /// the receiver); nil = the migration ends with the proof.
    public var afterProof: AfterProof?
    /// How auto-converge may throttle the target (cgroup, signals, or auto).
    public var throttle: ThrottleBackend = .auto
    /// Where to write the migration report (`Protocol/report.md`) at the end,
    /// an absolute path on the sender's host; nil = none.
    public var reportPath: String?
    /// How the frozen final round scans (a bench knob: both are exact).
    public var finalScan: FinalScanMethod = .changed
    /// Which proof ends the migration (``ProofMode``).
    public var proof: ProofMode = .incremental
    #if DEBUG
    public var testHooks = SenderTestHooks()
    #endif

    public init(pid: Int32, host: String, port: UInt16, id: String) {
        self.pid = pid
        self.host = host
        self.port = port
        self.id = id
    }

    public var destination: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// `m-<pid>-<unix seconds>-<6 random hex digits>`: the random part keeps two
    /// migrations of one PID within a second apart (the receiver refuses a
    /// fresh HELLO for an id it already has). At most 31 bytes, well inside
    /// the 64-byte wire limit.
    public static func defaultID(pid: Int32) -> String {
        let random = String(UInt32.random(in: 0..<(1 << 24)), radix: 16)
        return "m-\(pid)-\(Int(Date().timeIntervalSince1970))-\(String(repeating: "0", count: 6 - random.count))\(random)"
    }

    /// The one check of a request, whoever built it (CLI, control interface,
    /// bench): each problem is one line naming the parameter.
    public func validate() throws(MigrationError) {
        func fail(_ m: String) -> MigrationError { .invalidParameter(m) }
        guard pid > 0 else { throw fail("pid must be a positive integer") }
        guard MigrationID.isValid(id.utf8) else { throw fail("migration id \"\(id.prefix(80))\" must be \(MigrationID.rule)") }
        guard port > 0, !host.isEmpty else { throw fail("destination \(destination) is not HOST:PORT") }
        let p = parameters
        guard p.downtimeLimitMs > 0, p.downtimeLimitMs.isFinite else { throw fail("downtime limit must be > 0 ms") }
        guard p.maxRounds >= 0 else { throw fail("max rounds must be >= 0") }
        guard (0...100).contains(p.tighteningRounds) else { throw fail("tightening rounds must be 0…100") }
        guard !p.strict || p.maxRounds > 0 else { throw fail("strict needs pre-copy (max rounds > 0): stop-and-copy has no round to abort to") }
        guard (1...100).contains(p.strictAttempts) else { throw fail("strict attempts must be 1…100") }
        guard p.maxTimeSeconds > 0 else { throw fail("max time must be > 0 s") }
        if let b = p.maxBandwidth { guard b > 0, b.isFinite else { throw fail("max bandwidth must be > 0 bytes/s") } }
        guard p.resumeTimeoutSeconds >= 0, p.resumeTimeoutSeconds.isFinite else { throw fail("resume timeout must be >= 0 s") }
        guard (4096...(1 << 40)).contains(p.commitChunkBytes) else { throw fail("commit chunk must be 4096 bytes…1 TiB") }
        guard (4096...(1 << 40)).contains(p.frozenCommitChunkBytes) else { throw fail("frozen round's commit chunk must be 4096 bytes…1 TiB") }
        if let level = compressionLevel { guard (-5...19).contains(level) else { throw fail("compression level must be auto or -5…19") } }
        if let path = reportPath {
            guard path.hasPrefix("/"), path.utf8.count <= 4096, !path.hasSuffix("/"), !path.utf8.contains(0) else {
                throw fail("report path must be an absolute file path of at most 4096 bytes")
            }
        }
        guard (1...64).contains(workers) else { throw fail("workers must be 1…64") }
        guard deltaCacheBytes <= Self.maxDeltaCacheBytes else { throw fail("delta cache must be at most 16 GiB") }
        for (name, value) in deadlines.all {
            guard value > 0, value <= 86400 else { throw fail("\(name) deadline must be > 0 and at most 86400 s") }
        }
    }

    /// Splits `HOST:PORT` (`[v6]:PORT` for IPv6).
    public static func parseDestination(_ text: String, allowAnyPort: Bool = false) throws -> (host: String, port: UInt16) {
        var host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw MigrationError.invalidParameter("destination \(text) is not [HOST]:PORT")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw MigrationError.invalidParameter("destination \(text) is not HOST:PORT") }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = UInt16(portText), port > 0 || allowAnyPort else {
            throw MigrationError.invalidParameter("destination \(text) is not HOST:PORT")
        }
        host = host.isEmpty ? "localhost" : host
        return (String(host), port)
    }
}

/// A step run after the proof passed, on the migration's connection (before
/// CLOSE), with the source frozen and released by memhaul: SIGSTOPped, no
/// tracer, no userfaultfd. Throwing fails the migration: the source is resumed
/// (SIGCONT) and left untracked, as for any failure while frozen.
public struct AfterProof: Sendable {
    /// Asked for in HELLO; a receiver that does not grant them fails the
    /// migration at the handshake, before anything is sent or frozen.
    public var capabilities: Capabilities
    /// What the receiver must run to grant them (for the error).
    public var requirement: String
    public var run: @Sendable (AfterProofContext) throws -> Void

    public init(capabilities: Capabilities, requirement: String, run: @escaping @Sendable (AfterProofContext) throws -> Void) {
        self.capabilities = capabilities
        self.requirement = requirement
        self.run = run
    }
}

/// What an ``AfterProof`` step gets.
public struct AfterProofContext {
    public let channel: FrameChannel
    public let pid: Int32
    public let migrationID: String
    /// Monotonic seconds when the source was frozen.
    public let frozenSince: Double
    /// Changes the migration's status (the step's own fields).
    public let update: ((inout MigrationStatus) -> Void) -> Void
}

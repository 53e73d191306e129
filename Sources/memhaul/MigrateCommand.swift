import ArgumentParser
import Foundation
import MemhaulControl
import MemhaulCRIU
import MemhaulSession
import MemhaulSender
import MemhaulReceiver
import MemhaulWire

/// Convergence options shared by `migrate` and the bench.
struct ConvergenceOptions: ParsableArguments {
    @Option(name: .customLong("downtime-limit"), help: "Cut over when the expected downtime is at most this, ms.")
    var downtimeLimit: Double = 300
    @Option(name: .customLong("max-rounds"), help: "Forced cutover after N rounds; 0 = stop-and-copy.")
    var maxRounds: Int = 30
    @Option(name: .customLong("tightening-rounds"), help: "Rounds run after the prediction fits --downtime-limit, each while one more is predicted to halve the frozen window, and one to measure a delta's commit if none has been (0 = cut over as soon as it fits, as QEMU does).")
    var tighteningRounds: Int = ConvergenceParameters().tighteningRounds
    @Option(name: .customLong("max-time"), help: "Forced cutover after S seconds.")
    var maxTime: Double = 600
    @Option(name: .customLong("max-bandwidth"), help: "Wire send-rate cap, bytes/s with K/M/G suffixes: 100M (0 = unlimited).")
    var maxBandwidth = ByteCount(0)
    @Flag(name: .customLong("no-auto-converge"), help: "Never throttle the target.")
    var noAutoConverge = false
    @Option(help: "Auto-converge throttle: auto (the target's cgroup CPU quota where it has or can be given a cgroup, else SIGSTOP duty cycling), cgroup or signals.")
    var throttle: ThrottleBackend = .auto
    @Option(name: .customLong("throttle-steps"), help: "Throttle steps: adaptive (start early and step by the measured excess while the dirty rate far exceeds the throughput) or classic (QEMU: 20 %, +10 % per stall).")
    var throttleSteps: ThrottleSteps = .adaptive
    @Flag(help: "Never let the final round overrun --downtime-limit: abort the cutover (thaw, go on pre-copying) when it would; fail, source running, after --strict-attempts aborts. Covers freeze → final commit; the proof comes after.")
    var strict = false
    @Option(name: .customLong("strict-attempts"), help: "Aborted cutovers before a --strict migration fails (the source runs on).")
    var strictAttempts: Int = ConvergenceParameters().strictAttempts
    @Option(name: .customLong("compression-level"), help: "zstd level -5…19, or auto (compress only when the network limits and both sides have CPU to spare, else raw; the status says why).")
    var compressionLevel: String = "auto"
    @Option(name: .customLong("delta-cache"), help: "Bytes of last-sent pages kept to send re-dirtied pages as deltas (K/M/G suffixes; 0 = off; at most 16G). Pays where the link is the limit and pages change little. Adds its size (+ 16 MiB of buffers) to the agent's memory, on top of < 128 MiB with 0 for a 4 GiB target.")
    var deltaCache = ByteCount(MigrationRequest.defaultDeltaCacheBytes)
    @Option(help: "Source after success: stop (left in a SIGSTOP group stop: any SIGCONT resumes it; see README Safety), kill or resume.")
    var after: String = "stop"
    @Option(name: .customLong("resume-timeout"), help: "Seconds a broken connection may take to come back (0 = fail at once).")
    var resumeTimeout: Double = 30
    @Option(help: "The proof: incremental (per-page ledgers, O(regions) at cutover: the image holds what was sent), full (re-read memory and image, O(memory) frozen: image equals the frozen source) or both (the sender re-reads memory against its ledger). See README.")
    var proof: String = ProofMode.incremental.rawValue
    @Option(name: .customLong("commit-chunk"), help: "MiB of pages per receiver commit: a break loses at most what was sent after the last commit.")
    var commitChunkMiB: UInt64 = 64
    @Option(name: .customLong("welcome-timeout"), help: "Seconds to wait for the receiver's WELCOME (each connection).")
    var welcomeTimeout: Double = PeerDeadlines().welcome
    @Option(name: .customLong("ack-timeout"), help: "Seconds to wait for each ROUND_ACK while the source runs.")
    var ackTimeout: Double = PeerDeadlines().roundAck
    @Option(name: .customLong("frozen-ack-timeout"), help: "Seconds to wait for each ROUND_ACK of the final delta (source frozen).")
    var frozenAckTimeout: Double = PeerDeadlines().frozenRoundAck
    @Option(name: .customLong("drain-timeout"), help: "Seconds to wait for the KEEPALIVE reply before the cutover.")
    var drainTimeout: Double = PeerDeadlines().keepaliveDrain
    @Option(name: .customLong("verify-timeout"), help: "Seconds to wait for the receiver's digest (source frozen).")
    var verifyTimeout: Double = PeerDeadlines().verification

    func validate() throws {
        guard downtimeLimit > 0 else { throw ValidationError("--downtime-limit must be > 0") }
        guard maxRounds >= 0 else { throw ValidationError("--max-rounds must be >= 0") }
        guard (0...100).contains(tighteningRounds) else { throw ValidationError("--tightening-rounds must be 0…100") }
        guard !strict || maxRounds > 0 else { throw ValidationError("--strict needs pre-copy (--max-rounds > 0)") }
        guard (1...100).contains(strictAttempts) else { throw ValidationError("--strict-attempts must be 1…100") }
        if compressionLevel != "auto" {
            guard let l = Int32(compressionLevel), (-5...19).contains(l) else { throw ValidationError("--compression-level must be auto or -5…19") }
        }
        guard AfterAction(rawValue: after) != nil else { throw ValidationError("--after must be stop, kill or resume") }
        guard ProofMode(rawValue: proof) != nil else { throw ValidationError("--proof must be incremental, full or both") }
        guard deltaCache.bytes <= MigrationRequest.maxDeltaCacheBytes else { throw ValidationError("--delta-cache must be at most 16G") }
        guard (1...1 << 20).contains(commitChunkMiB) else { throw ValidationError("--commit-chunk must be 1…1048576 MiB") }
        for (flag, v) in [("--welcome-timeout", welcomeTimeout), ("--ack-timeout", ackTimeout), ("--frozen-ack-timeout", frozenAckTimeout),
                          ("--drain-timeout", drainTimeout), ("--verify-timeout", verifyTimeout)] {
            guard v > 0, v <= 86400 else { throw ValidationError("\(flag) must be > 0 and at most 86400 s") }
        }
    }

    func apply(to request: inout MigrationRequest) {
        request.parameters.downtimeLimitMs = downtimeLimit
        request.parameters.maxRounds = maxRounds
        request.parameters.tighteningRounds = tighteningRounds
        request.parameters.maxTimeSeconds = maxTime
        request.parameters.maxBandwidth = maxBandwidth.bytes > 0 ? Double(maxBandwidth.bytes) : nil
        request.parameters.autoConverge = !noAutoConverge
        request.throttle = throttle
        request.parameters.throttleSteps = throttleSteps
        request.parameters.strict = strict
        request.parameters.strictAttempts = strictAttempts
        request.compressionLevel = Int32(compressionLevel)
        request.deltaCacheBytes = deltaCache.bytes
        request.after = AfterAction(rawValue: after) ?? .stop
        request.proof = ProofMode(rawValue: proof) ?? .incremental
        request.parameters.resumeTimeoutSeconds = resumeTimeout
        request.parameters.commitChunkBytes = commitChunkMiB << 20
        request.deadlines.welcome = welcomeTimeout
        request.deadlines.roundAck = ackTimeout
        request.deadlines.frozenRoundAck = frozenAckTimeout
        request.deadlines.keepaliveDrain = drainTimeout
        request.deadlines.verification = verifyTimeout
    }
}

/// `memhaul migrate`: one migration without a sender agent.
struct MigrateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Migrate one process's memory to a receiver, with live progress and a summary.")

    @Option(help: "Target process id.") var pid: Int32
    @Option(help: "Receiver HOST:PORT.") var to: String
    @Option(help: "Migration id ([A-Za-z0-9._-], up to 64).") var id: String?
    @Option(name: .customLong("server-name"), help: "Name the receiver's certificate must carry (default: the host in --to).")
    var serverName: String?
    @Flag(help: "Print the final status as JSON instead of a summary.") var json = false
    @Flag(name: .shortAndLong, help: "Log every round (--log-level info).") var verbose = false
    @OptionGroup var logging: LoggingOptions
    @Option(help: "Write the migration report (JSON, see Protocol/report.md; render it with memhaul report) to this path at the end.")
    var report: String?
    @OptionGroup var convergence: ConvergenceOptions
    @OptionGroup var restore: RestoreOptions
    @OptionGroup var dump: DumpOptions
    @OptionGroup var transport: TransportOptions

    func validate() throws {
        _ = try MigrationRequest.parseDestination(to)
        if restore.enabled && convergence.after == "resume" {
            throw ValidationError("--restore criu moves the process: the source is killed once it runs on the receiver (--after resume would run it twice)")
        }
        if !restore.enabled && !dump.isDefault { throw ValidationError("--criu-route, --shell-job, --tcp-established and --tcp-close need --restore criu") }
        if let id, !MigrationID.isValid(id.utf8) { throw ValidationError("--id must be \(MigrationID.rule)") }
    }

    func run() throws {
        AgentSignals.ignoreBrokenPipes()
        let (host, port) = try MigrationRequest.parseDestination(to)
        var request = MigrationRequest(pid: pid, host: host, port: port, id: id ?? MigrationRequest.defaultID(pid: pid))
        let logger = logging.bootstrap(component: "sender", migration: request.id, defaultLevel: verbose ? .info : .notice)
        let engineLog = logger.textSink(level: .info)
        transport.warnIfInsecure()
        for line in ThrottleLeftovers.restoreAbandoned() { Log.line("migrate: \(line)") }
        request.serverName = serverName
        request.reportPath = report.map(ReportCommand.absolute)
        convergence.apply(to: &request)
        do { try request.validate() } catch { throw ValidationError(error.description) }
        if restore.enabled {
            // criu found and checked before the process is touched.
            let runner = try restore.runner()
            var handOver = CRIUHandOver(runner: runner, options: dump.options(extra: restore.criuArgs), workRoot: dump.criuDir,
                                        log: engineLog)
            handOver.route = dump.criuRoute
            request.afterProof = handOver.step
            request.after = .kill  // only reached once the process runs on the receiver
        }
        // Progress on stderr unless --json; on a terminal with a live line.
        let progress = json ? nil : ProgressView()
        let migration = SenderMigration(request: request, connect: try transport.connector(), log: engineLog,
                                        progress: { progress?.update($0) })
        progress?.start(destination: request.destination, pid: request.pid)
        // SIGINT/SIGTERM/SIGHUP: cancel, let the migration thaw and untrack its
        // target (bounded), then release whatever is still held and exit 128+N.
        ShutdownSignals.onTerminate { [request = migration.request] sig in
            Log.line("memhaul migrate: \(ShutdownSignals.name(sig)): cancelling migration \(request.id) and releasing PID \(request.pid)")
            migration.cancel()
            migration.waitUntilFinished(timeoutSeconds: ShutdownSignals.graceSeconds)
            let ended = migration.status.state.isFinal
            let forced = TargetRelease.shared.releaseAll()
            progress?.stop()
            if !ended || !forced.isEmpty {
                Log.line("memhaul migrate: the migration did not end within \(Int(ShutdownSignals.graceSeconds)) s; released PID \(request.pid) directly (its userfaultfd registration goes when this process exits)")
            }
            let state = migration.status.state
            Log.line("memhaul migrate: stopped by \(ShutdownSignals.name(sig)); migration \(request.id) \(state == .completed ? "had completed" : "cancelled"), PID \(request.pid) \(state == .completed ? "handled as --after \(request.after.rawValue)" : "runs on, untracked")")
            return state == .completed ? 0 : 128 + sig
        }
        migration.run()
        // A shutdown in progress decides the exit (and its message).
        ShutdownSignals.parkIfShuttingDown()
        progress?.stop()
        let status = migration.status
        if json {
            FileHandle.standardOutput.write(ControlJSON.line(ControlJSON.object(status)))
        } else {
            print(Summary.text(status))
        }
        if status.state != .completed { throw ExitCode(1) }
    }
}

enum Summary {
    static func bytes(_ v: Double) -> String { ByteFormat.bytes(v) }

    static func text(_ s: MigrationStatus) -> String {
        var lines = ["migration \(s.id): \(s.state.rawValue)"]
        if let e = s.error { lines.append("  error: \(e)") }
        if s.rounds > 0 { lines.append("  engine rounds: \(s.rounds) (the final delta included; the receiver counts commit chunks of --commit-chunk MiB)") }
        lines.append("  transferred: \(bytes(Double(s.transferredBytes))) on the wire, \(bytes(Double(s.pageBytes))) of pages")
        if s.deltaPages > 0 {
            lines.append("  delta: \(s.deltaPages) re-dirtied pages sent as deltas, \(bytes(Double(s.deltaSavedBytes))) saved (cache hits \(s.deltaCacheHits), misses \(s.deltaCacheMisses))")
        }
        if let d = s.downtimeMs { lines.append(String(format: "  downtime: %.1f ms to the final commit (freeze %.1f ms)", d, s.freezeMs ?? 0)) }
        if let f = s.frozenMs { lines.append(String(format: "  frozen: %.1f ms, freeze to release (limit %g ms)", f, s.downtimeLimitMs)) }
        if let v = s.verifyMs {
            let full = s.fullProofMs.map { String(format: ", %.1f ms of it re-reading the frozen memory", $0) } ?? ""
            lines.append(String(format: "  verify: %.1f ms (proof %@%@), digest %@", v, s.proof ?? "-", full, s.digest ?? "-"))
        }
        if let d = s.criuDumpMs {
            lines.append(String(format: "  criu dump: %.1f ms; images to the receiver: %.1f ms (%d files, %@); restore: %.1f ms",
                                d, s.transferMs ?? 0, s.criuFiles ?? 0, bytes(Double(s.criuBytes ?? 0)), s.restoreMs ?? 0))
        }
        if let w = s.frozenWindowMs {
            lines.append(String(format: "  frozen window: %.1f ms (freeze %.1f + final delta %.1f + verify %.1f + criu dump %.1f + transfer %.1f + restore %.1f)",
                                w, s.freezeMs ?? 0, (s.downtimeMs ?? 0) - (s.freezeMs ?? 0), s.verifyMs ?? 0, s.criuDumpMs ?? 0, s.transferMs ?? 0, s.restoreMs ?? 0))
        }
        if let p = s.restoredPID {
            lines.append(String(format: "  running on the receiver as PID %d (every page in %.1f ms after the hand-over began)", p, s.pagesCompleteMs ?? 0))
        }
        if let t = s.totalTimeMs { lines.append(String(format: "  total: %.2f s", t / 1000)) }
        if let c = s.cutoverReason { lines.append("  cutover: \(c)") }
        if let m = s.throttleMechanism { lines.append("  throttle: by \(m == .cgroup ? "cgroup CPU quota" : "SIGSTOP/SIGCONT duty cycling")") }
        for w in s.warnings { lines.append("  warning: \(w)") }
        return lines.joined(separator: "\n")
    }
}

extension ThrottleBackend: ExpressibleByArgument {}
extension ThrottleSteps: ExpressibleByArgument {}

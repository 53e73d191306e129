import Foundation
import MemhaulSession
import MemhaulSender
import MemhaulReceiver
import MemhaulReport
import MemhaulTLS

/// The sender agent's operations (`Protocol/control.md`): it owns the
/// migrations it started and runs each on its own thread.
public final class SenderControl: @unchecked Sendable {  // `migrations` behind `lock`
    /// What a `migrate` request with `"restore": "criu"` asks for after the proof.
    public struct RestoreRequest: Sendable {
        public var migrationID: String
        /// `lazy`, `rewrite` or `parent`.
        public var route: String
        public var shellJob: Bool
        /// `none`, `established` or `close`.
        public var tcp: String
    }
    /// Builds the after-proof step (the CLI's CRIU hand-over); throws a one-line reason.
    public typealias RestoreStepFactory = @Sendable (RestoreRequest) throws -> AfterProof

    private let connect: SenderMigration.Connector
    private let log: @Sendable (String) -> Void
    private let restoreStep: RestoreStepFactory?
    private let lock = NSLock()
    private var migrations: [SenderMigration] = []
    /// Set by ``shutdown(timeoutSeconds:)``: no migration starts after it.
    private var closed = false

    public init(connect: @escaping SenderMigration.Connector, restoreStep: RestoreStepFactory? = nil, log: @escaping @Sendable (String) -> Void) {
        self.connect = connect
        self.restoreStep = restoreStep
        self.log = log
    }

    /// Every migration's status, oldest first (what the metrics read).
    public var statuses: [MigrationStatus] { lock.withLock { migrations }.map(\.status) }

    public func handle(_ request: ControlRequest) throws(ControlError) -> [String: Any] {
        switch request.op {
        case "migrate": return try migrate(request)
        case "status":
            try request.onlyKeys(["migration", "history"])
            if let id = try request.string("migration") {
                let m = try find(id)
                guard try request.bool("history") == true else { return ["status": ControlJSON.object(m.status)] }
                return ["status": ControlJSON.object(m.status), "history": Self.object(m.history)]
            }
            if try request.bool("history") != nil { throw ControlError(.badRequest, "history needs a migration") }
            return ["migrations": lock.withLock { migrations }.map { ControlJSON.object($0.status) }]
        case "set":
            try request.onlyKeys(["migration", "downtime_limit_ms", "max_bandwidth_bytes_per_second", "auto_converge", "max_rounds", "max_time_s"])
            let m = try find(try request.require(try request.string("migration"), "migration"))
            guard !m.status.state.isFinal else { throw ControlError(.conflict, "migration \(m.request.id) is \(m.status.state.rawValue)") }
            let downtime = try request.number("downtime_limit_ms")
            let bandwidth = try request.number("max_bandwidth_bytes_per_second")
            let auto = try request.bool("auto_converge")
            let rounds = try request.int("max_rounds")
            let time = try request.number("max_time_s")
            if let downtime, downtime <= 0 { throw ControlError(.badRequest, "downtime_limit_ms must be > 0") }
            if let bandwidth, bandwidth < 0 { throw ControlError(.badRequest, "max_bandwidth_bytes_per_second must be >= 0") }
            let status = m.update { p in
                if let downtime { p.downtimeLimitMs = downtime }
                if let bandwidth { p.maxBandwidth = bandwidth == 0 ? nil : bandwidth }
                if let auto { p.autoConverge = auto }
                if let rounds { p.maxRounds = rounds }
                if let time { p.maxTimeSeconds = time }
            }
            return ["status": ControlJSON.object(status)]
        case "cutover":
            try request.onlyKeys(["migration"])
            let m = try find(try request.require(try request.string("migration"), "migration"))
            guard !m.status.state.isFinal else { throw ControlError(.conflict, "migration \(m.request.id) is \(m.status.state.rawValue)") }
            m.requestCutover()
            return ["status": ControlJSON.object(m.status)]
        case "cancel":
            try request.onlyKeys(["migration"])
            let m = try find(try request.require(try request.string("migration"), "migration"))
            guard !m.status.state.isFinal else { throw ControlError(.conflict, "migration \(m.request.id) is \(m.status.state.rawValue)") }
            m.cancel()
            m.waitUntilFinished(timeoutSeconds: 30)
            return ["status": ControlJSON.object(m.status)]
        default:
            throw ControlError(.unknownOp, "unknown operation \"\(request.op)\"")
        }
    }

    /// The agent's shutdown: refuses new migrations, cancels every running one
    /// (each thaws and untracks its target on the way out) and waits for them
    /// together, at most `timeoutSeconds`. Returns the ids cancelled and those
    /// that had not ended by then.
    public func shutdown(timeoutSeconds: Double) -> (cancelled: [String], unfinished: [String]) {
        let running = lock.withLock { () -> [SenderMigration] in
            closed = true
            return migrations.filter { !$0.status.state.isFinal }
        }
        for m in running { m.cancel() }
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        for m in running { m.waitUntilFinished(timeoutSeconds: max(0, deadline.timeIntervalSinceNow)) }
        return (running.map(\.request.id), running.filter { !$0.status.state.isFinal }.map(\.request.id))
    }

    private func find(_ id: String) throws(ControlError) -> SenderMigration {
        guard let m = lock.withLock({ migrations.last { $0.request.id == id } }) else {
            throw ControlError(.notFound, "no migration \(id)")
        }
        return m
    }

    private func migrate(_ r: ControlRequest) throws(ControlError) -> [String: Any] {
        try r.onlyKeys(["pid", "to", "id", "downtime_limit_ms", "max_rounds", "tightening_rounds", "max_time_s", "max_bandwidth_bytes_per_second",
                        "auto_converge", "after", "compression_level", "server_name", "resume_timeout_s", "commit_chunk_bytes",
                        "delta_cache_bytes", "welcome_timeout_s", "round_ack_timeout_s", "frozen_round_ack_timeout_s", "keepalive_drain_timeout_s",
                        "verification_timeout_s", "restore", "criu_route", "shell_job", "tcp", "throttle", "throttle_steps", "report", "strict", "strict_attempts", "proof"])
        var request = try Self.request(from: r)
        try addRestore(r, &request)
        // Lines of several migrations interleave: each names its own.
        let log = self.log, id = request.id
        let migrationLog: @Sendable (String) -> Void = { log($0.hasPrefix("migration ") ? $0 : "migration \(id): \($0)") }
        let migration = SenderMigration(request: request, connect: connect, log: migrationLog, progress: ProgressLog(log: log).record)
        let conflict: ControlError? = lock.withLock {
            if closed { return ControlError(.conflict, "the sender agent is shutting down") }
            if let busy = migrations.first(where: { $0.request.pid == request.pid && !$0.status.state.isFinal }) {
                return ControlError(.conflict, "PID \(request.pid) is already being migrated (\(busy.request.id))")
            }
            if migrations.contains(where: { $0.request.id == request.id }) {
                return ControlError(.conflict, "migration id \(request.id) was already used")
            }
            migrations.append(migration)
            return nil
        }
        if let conflict { throw conflict }
        let thread = Thread { migration.run() }
        thread.name = "memhaul-migration-\(request.id)"
        thread.start()
        return ["migration": request.id, "status": ControlJSON.object(migration.status)]
    }

    /// `restore: "criu"` (with `criu_route`, `shell_job`, `tcp`): the CRIU hand-over after the proof.
    private func addRestore(_ r: ControlRequest, _ request: inout MigrationRequest) throws(ControlError) {
        let restore = try r.string("restore") ?? "none"
        let route = try r.string("criu_route"), shellJob = try r.bool("shell_job"), tcp = try r.string("tcp")
        guard restore == "criu" else {
            guard restore == "none" else { throw ControlError(.badRequest, "restore must be none or criu") }
            if route != nil || shellJob != nil || tcp != nil { throw ControlError(.badRequest, "criu_route, shell_job and tcp need restore: criu") }
            return
        }
        guard let restoreStep else { throw ControlError(.badRequest, "this sender agent does not restore processes (start it with --criu-restore)") }
        guard ["lazy", "rewrite", "parent"].contains(route ?? "parent") else { throw ControlError(.badRequest, "criu_route must be lazy, rewrite or parent") }
        guard ["none", "established", "close"].contains(tcp ?? "none") else { throw ControlError(.badRequest, "tcp must be none, established or close") }
        if r.args["after"] as? String == "resume" { throw ControlError(.badRequest, "restore: criu moves the process; after: resume would run it twice") }
        do {
            request.afterProof = try restoreStep(RestoreRequest(migrationID: request.id, route: route ?? "parent", shellJob: shellJob ?? false, tcp: tcp ?? "none"))
        } catch {
            throw ControlError(.badRequest, "restore: criu: \(error)")
        }
        request.after = .kill  // only reached once the process runs on the receiver
    }

    /// A report as a JSON object of the response (the same keys as `report.json`).
    static func object(_ report: MigrationReport) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(ReportJSON.encode(report)))) as? [String: Any] ?? [:]
    }

    /// Builds a request from control arguments, with the documented defaults.
    static func request(from r: ControlRequest) throws(ControlError) -> MigrationRequest {
        let pid = try r.require(try r.int("pid"), "pid")
        guard pid > 0, pid <= Int(Int32.max) else { throw ControlError(.badRequest, "pid must be a positive integer") }
        let to = try r.require(try r.string("to"), "to")
        let destination: (host: String, port: UInt16)
        do { destination = try MigrationRequest.parseDestination(to) } catch {
            throw ControlError(.badRequest, "\"to\" must be HOST:PORT, got \"\(to)\"")
        }
        let id = try r.string("id") ?? MigrationRequest.defaultID(pid: Int32(pid))
        var request = MigrationRequest(pid: Int32(pid), host: destination.host, port: destination.port, id: id)
        if let v = try r.number("downtime_limit_ms") { request.parameters.downtimeLimitMs = v }
        if let v = try r.int("max_rounds") { request.parameters.maxRounds = v }
        if let v = try r.int("tightening_rounds") { request.parameters.tighteningRounds = v }
        if let v = try r.number("max_time_s") { request.parameters.maxTimeSeconds = v }
        if let v = try r.number("max_bandwidth_bytes_per_second") { request.parameters.maxBandwidth = v > 0 ? v : nil }
        if let v = try r.bool("auto_converge") { request.parameters.autoConverge = v }
        if let v = try r.bool("strict") { request.parameters.strict = v }
        if let v = try r.int("strict_attempts") { request.parameters.strictAttempts = v }
        if let v = try r.string("after") {
            guard let a = AfterAction(rawValue: v) else { throw ControlError(.badRequest, "after must be stop, kill or resume") }
            request.after = a
        }
        if let v = try r.string("proof") {
            guard let p = ProofMode(rawValue: v) else { throw ControlError(.badRequest, "proof must be incremental, full or both") }
            request.proof = p
        }
        if r.args["compression_level"] as? String == "auto" {
            request.compressionLevel = nil
        } else if let v = try r.int("compression_level") {
            request.compressionLevel = Int32(clamping: v)
        }
        if let v = try r.string("server_name") { request.serverName = v }
        if let v = try r.number("resume_timeout_s") { request.parameters.resumeTimeoutSeconds = v }
        if let v = try r.number("commit_chunk_bytes") {
            guard v >= 0, v <= Double(UInt64.max / 2) else { throw ControlError(.badRequest, "commit_chunk_bytes must be 4096…2^40") }
            request.parameters.commitChunkBytes = UInt64(v)
        }
        if let v = try r.number("delta_cache_bytes") {
            guard v >= 0, v <= Double(MigrationRequest.maxDeltaCacheBytes) else { throw ControlError(.badRequest, "delta_cache_bytes must be 0…2^34") }
            request.deltaCacheBytes = UInt64(v)
        }
        if let v = try r.number("welcome_timeout_s") { request.deadlines.welcome = v }
        if let v = try r.number("round_ack_timeout_s") { request.deadlines.roundAck = v }
        if let v = try r.number("frozen_round_ack_timeout_s") { request.deadlines.frozenRoundAck = v }
        if let v = try r.number("keepalive_drain_timeout_s") { request.deadlines.keepaliveDrain = v }
        if let v = try r.number("verification_timeout_s") { request.deadlines.verification = v }
        if let v = try r.string("throttle") {
            guard let b = ThrottleBackend(rawValue: v) else { throw ControlError(.badRequest, "throttle must be auto, cgroup or signals") }
            request.throttle = b
        }
        if let v = try r.string("throttle_steps") {
            guard let t = ThrottleSteps(rawValue: v) else { throw ControlError(.badRequest, "throttle_steps must be adaptive or classic") }
            request.parameters.throttleSteps = t
        }
        if let v = try r.string("report") { request.reportPath = v }
        do { try request.validate() } catch { throw ControlError(.badRequest, error.description) }
        return request
    }
}

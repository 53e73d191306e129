import ArgumentParser
import Foundation
import MemhaulControl

/// `memhaul ctl`: the control-interface client. Prints the agent's JSON response.
struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Talk to a running sender or receiver agent (prints JSON; see Protocol/control.md).",
        discussion: """
            Exit status: 0 the agent answered ok; 1 the agent refused the request \
            (the JSON's error says why); 2 the agent could not be reached, or \
            did not answer (no socket, connection refused or cut).
            """,
        subcommands: [Migrate.self, Status.self, Set.self, Cutover.self, Cancel.self, Raw.self]
    )

    struct Connection: ParsableArguments {
        @Option(name: .long, help: "Control socket of the agent (default: $MEMHAUL_CONTROL, else the sender's).")
        var socket: String = ProcessInfo.processInfo.environment["MEMHAUL_CONTROL"] ?? AgentDefaults.senderControl
    }

    /// The exit statuses (Protocol/control.md, "Exit status of memhaul ctl").
    enum Exit {
        static let refused = ExitCode(1)
        static let unreachable = ExitCode(2)
    }

    /// Sends one request, prints the response line; exits 1 if it was refused,
    /// 2 if the agent could not be reached or did not answer.
    static func run(_ connection: Connection, _ op: String, _ args: [String: Any]) throws {
        let response: [String: Any]
        do {
            let client = try ControlClient(path: connection.socket)
            response = try client.call(op, args)
        } catch {
            throw unreachable(connection, error)
        }
        FileHandle.standardOutput.write(ControlJSON.line(response))
        if response["ok"] as? Bool != true { throw Exit.refused }
    }

    /// Says why on stderr; the error to throw for exit status 2.
    static func unreachable(_ connection: Connection, _ error: Error) -> ExitCode {
        FileHandle.standardError.write(Data("memhaul ctl: cannot reach the agent at \(connection.socket): \(error)\n".utf8))
        return Exit.unreachable
    }

    struct Migrate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a migration; prints its id and status.")
        @OptionGroup var connection: Connection
        @Option(help: "Target process id.") var pid: Int32
        @Option(help: "Receiver HOST:PORT.") var to: String
        @Option(help: "Migration id ([A-Za-z0-9._-], up to 64).") var id: String?
        @Option(name: .customLong("downtime-limit"), help: "Downtime limit, ms.") var downtimeLimit: Double?
        @Option(name: .customLong("max-rounds"), help: "Forced cutover after N rounds; 0 = stop-and-copy.") var maxRounds: Int?
        @Option(name: .customLong("tightening-rounds"), help: "Rounds run after the prediction fits the limit, while each halves it, and one to measure a delta's commit if none has been (0 = QEMU's rule).") var tighteningRounds: Int?
        @Option(name: .customLong("max-time"), help: "Forced cutover after S seconds.") var maxTime: Double?
        @Option(name: .customLong("max-bandwidth"), help: "Wire send-rate cap, bytes/s (K/M/G suffixes: 100M).") var maxBandwidth: ByteCount?
        @Option(help: "Source after success: stop, kill or resume.") var after: String?
        @Option(help: "The proof: incremental, full or both (see memhaul migrate --help).") var proof: String?
        @Option(name: .customLong("compression-level"), help: "zstd level (-5…19) or auto.") var compressionLevel: String?
        @Option(name: .customLong("server-name"), help: "Name the receiver's certificate must carry.") var serverName: String?
        @Option(name: .customLong("delta-cache"), help: "Bytes of last-sent pages kept for delta encoding (K/M/G suffixes; 0 = off).") var deltaCache: ByteCount?
        @Option(name: .customLong("resume-timeout"), help: "Seconds a broken connection may take to come back (0 = fail at once).") var resumeTimeout: Double?
        @Flag(name: .customLong("no-auto-converge"), help: "Never throttle the target.") var noAutoConverge = false
        @Flag(help: "Abort a cutover that would overrun the downtime limit and go on pre-copying (see memhaul migrate --help).") var strict = false
        @Option(name: .customLong("strict-attempts"), help: "Aborted cutovers before a --strict migration fails (source running).") var strictAttempts: Int?
        @Option(help: "After the proof: none, or criu (move the process; the agent needs --criu-restore).") var restore: String?
        @Option(name: .customLong("criu-route"), help: "lazy, rewrite or parent.") var criuRoute: String?
        @Flag(name: .customLong("shell-job"), help: "CRIU --shell-job.") var shellJob = false
        @Option(help: "CRIU TCP mode: none, established or close.") var tcp: String?
        @Option(help: "Write the migration report (JSON, see Protocol/report.md) to this path on the agent's host at the end.")
        var report: String?

        func run() throws {
            var args: [String: Any] = ["pid": Int(pid), "to": to]
            if let restore { args["restore"] = restore }
            if let criuRoute { args["criu_route"] = criuRoute }
            if shellJob { args["shell_job"] = true }
            if let tcp { args["tcp"] = tcp }
            if let report { args["report"] = ReportCommand.absolute(report) }
            if let id { args["id"] = id }
            if let downtimeLimit { args["downtime_limit_ms"] = downtimeLimit }
            if let maxRounds { args["max_rounds"] = maxRounds }
            if let tighteningRounds { args["tightening_rounds"] = tighteningRounds }
            if let maxTime { args["max_time_s"] = maxTime }
            if let maxBandwidth { args["max_bandwidth_bytes_per_second"] = Double(maxBandwidth.bytes) }
            if let after { args["after"] = after }
            if let proof { args["proof"] = proof }
            if let compressionLevel { args["compression_level"] = Int(compressionLevel) as Any? ?? compressionLevel }
            if let serverName { args["server_name"] = serverName }
            if let deltaCache { args["delta_cache_bytes"] = Double(deltaCache.bytes) }
            if let resumeTimeout { args["resume_timeout_s"] = resumeTimeout }
            if noAutoConverge { args["auto_converge"] = false }
            if strict { args["strict"] = true }
            if let strictAttempts { args["strict_attempts"] = strictAttempts }
            try CtlCommand.run(connection, "migrate", args)
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Status of one migration, or of all.")
        @OptionGroup var connection: Connection
        @Option(help: "Migration id.") var migration: String?
        @Flag(help: "With --migration: also the migration's report so far (rounds, phases, resumes; Protocol/report.md).")
        var history = false
        func validate() throws {
            if history && migration == nil { throw ValidationError("--history needs --migration") }
        }
        func run() throws {
            var args: [String: Any] = migration.map { ["migration": $0] } ?? [:]
            if history { args["history"] = true }
            try CtlCommand.run(connection, "status", args)
        }
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change live parameters of a running migration.")
        @OptionGroup var connection: Connection
        @Option(help: "Migration id.") var migration: String
        @Option(name: .customLong("downtime-limit"), help: "Downtime limit, ms.") var downtimeLimit: Double?
        @Option(name: .customLong("max-bandwidth"), help: "Wire send-rate cap, bytes/s (K/M/G suffixes: 100M; 0 = unlimited).") var maxBandwidth: ByteCount?
        @Option(name: .customLong("max-rounds")) var maxRounds: Int?
        @Option(name: .customLong("max-time")) var maxTime: Double?
        @Option(name: .customLong("auto-converge"), help: "true or false.") var autoConverge: Bool?

        func validate() throws {
            if downtimeLimit == nil && maxBandwidth == nil && maxRounds == nil && maxTime == nil && autoConverge == nil {
                throw ValidationError("nothing to set: give at least one parameter")
            }
        }

        func run() throws {
            var args: [String: Any] = ["migration": migration]
            if let downtimeLimit { args["downtime_limit_ms"] = downtimeLimit }
            if let maxBandwidth { args["max_bandwidth_bytes_per_second"] = Double(maxBandwidth.bytes) }
            if let maxRounds { args["max_rounds"] = maxRounds }
            if let maxTime { args["max_time_s"] = maxTime }
            if let autoConverge { args["auto_converge"] = autoConverge }
            try CtlCommand.run(connection, "set", args)
        }
    }

    struct Cutover: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Freeze and send the final delta now.")
        @OptionGroup var connection: Connection
        @Option(help: "Migration id.") var migration: String
        func run() throws { try CtlCommand.run(connection, "cutover", ["migration": migration]) }
    }

    struct Cancel: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a migration; the source resumes untracked.")
        @OptionGroup var connection: Connection
        @Option(help: "Migration id.") var migration: String
        func run() throws { try CtlCommand.run(connection, "cancel", ["migration": migration]) }
    }

    struct Raw: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Send one raw JSON request line.")
        @OptionGroup var connection: Connection
        @Argument(help: "A JSON object, e.g. '{\"op\":\"status\"}'.") var request: String
        func run() throws {
            let answer: [String: Any]?
            do {
                answer = try ControlClient(path: connection.socket).callRaw(Data((request + "\n").utf8))
            } catch {
                throw CtlCommand.unreachable(connection, error)
            }
            guard let response = answer else { throw CtlCommand.unreachable(connection, CLIError("no answer (the connection closed)")) }
            FileHandle.standardOutput.write(ControlJSON.line(response))
            if response["ok"] as? Bool != true { throw Exit.refused }
        }
    }
}

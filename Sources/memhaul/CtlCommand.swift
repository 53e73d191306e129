import ArgumentParser
import Foundation
import MemhaulControl

/// `memhaul ctl`: the control-interface client. Prints the agent's JSON response.
struct CtlCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Talk to a running sender or receiver agent (prints JSON; see Protocol/control.md).",
        subcommands: [Migrate.self, Status.self, Set.self, Cutover.self, Cancel.self, Raw.self]
    )

    struct Connection: ParsableArguments {
        @Option(name: .long, help: "Control socket of the agent (default: $MEMHAUL_CONTROL, else the sender's).")
        var socket: String = ProcessInfo.processInfo.environment["MEMHAUL_CONTROL"] ?? AgentDefaults.senderControl
    }

    /// Sends one request, prints the response line, and exits 1 if it was not ok.
    static func run(_ connection: Connection, _ op: String, _ args: [String: Any]) throws {
        let client: ControlClient
        do {
            client = try ControlClient(path: connection.socket)
        } catch {
            throw CLIError("cannot reach the agent at \(connection.socket): \(error)")
        }
        let response = try client.call(op, args)
        FileHandle.standardOutput.write(ControlJSON.line(response))
        if response["ok"] as? Bool != true { throw ExitCode(1) }
    }

    struct Migrate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Start a migration; prints its id and status.")
        @OptionGroup var connection: Connection
        @Option(help: "Target process id.") var pid: Int32
        @Option(help: "Receiver HOST:PORT.") var to: String
        @Option(help: "Migration id ([A-Za-z0-9._-], up to 64).") var id: String?
        @Option(name: .customLong("downtime-limit"), help: "Downtime limit, ms.") var downtimeLimit: Double?
        @Option(name: .customLong("max-rounds"), help: "Forced cutover after N rounds; 0 = stop-and-copy.") var maxRounds: Int?
        @Option(name: .customLong("max-time"), help: "Forced cutover after S seconds.") var maxTime: Double?
        @Option(name: .customLong("max-bandwidth"), help: "Wire send-rate cap, bytes/s.") var maxBandwidth: Double?
        @Option(help: "Source after success: stop, kill or resume.") var after: String?
        @Option(name: .customLong("compression-level"), help: "zstd level (-5…19) or auto.") var compressionLevel: String?
        @Option(name: .customLong("server-name"), help: "Name the receiver's certificate must carry.") var serverName: String?
        @Option(name: .customLong("resume-timeout"), help: "Seconds a broken connection may take to come back (0 = fail at once).") var resumeTimeout: Double?
        @Flag(name: .customLong("no-auto-converge"), help: "Never throttle the target.") var noAutoConverge = false
        @Option(help: "After the proof: none, or criu (move the process; the agent needs --criu-restore).") var restore: String?
        @Option(name: .customLong("criu-route"), help: "lazy or rewrite.") var criuRoute: String?
        @Flag(name: .customLong("shell-job"), help: "CRIU --shell-job.") var shellJob = false
        @Option(help: "CRIU TCP mode: none, established or close.") var tcp: String?

        func run() throws {
            var args: [String: Any] = ["pid": Int(pid), "to": to]
            if let restore { args["restore"] = restore }
            if let criuRoute { args["criu_route"] = criuRoute }
            if shellJob { args["shell_job"] = true }
            if let tcp { args["tcp"] = tcp }
            if let id { args["id"] = id }
            if let downtimeLimit { args["downtime_limit_ms"] = downtimeLimit }
            if let maxRounds { args["max_rounds"] = maxRounds }
            if let maxTime { args["max_time_s"] = maxTime }
            if let maxBandwidth { args["max_bandwidth_bytes_per_second"] = maxBandwidth }
            if let after { args["after"] = after }
            if let compressionLevel { args["compression_level"] = Int(compressionLevel) as Any? ?? compressionLevel }
            if let serverName { args["server_name"] = serverName }
            if let resumeTimeout { args["resume_timeout_s"] = resumeTimeout }
            if noAutoConverge { args["auto_converge"] = false }
            try CtlCommand.run(connection, "migrate", args)
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Status of one migration, or of all.")
        @OptionGroup var connection: Connection
        @Option(help: "Migration id.") var migration: String?
        func run() throws {
            try CtlCommand.run(connection, "status", migration.map { ["migration": $0] } ?? [:])
        }
    }

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change live parameters of a running migration.")
        @OptionGroup var connection: Connection
        @Option(help: "Migration id.") var migration: String
        @Option(name: .customLong("downtime-limit"), help: "Downtime limit, ms.") var downtimeLimit: Double?
        @Option(name: .customLong("max-bandwidth"), help: "Wire send-rate cap, bytes/s (0 = unlimited).") var maxBandwidth: Double?
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
            if let maxBandwidth { args["max_bandwidth_bytes_per_second"] = maxBandwidth }
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
            let client = try ControlClient(path: connection.socket)
            guard let response = try client.callRaw(Data((request + "\n").utf8)) else { throw ExitCode(1) }
            FileHandle.standardOutput.write(ControlJSON.line(response))
            if response["ok"] as? Bool != true { throw ExitCode(1) }
        }
    }
}

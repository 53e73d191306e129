import ArgumentParser
import Foundation
import MemhaulCRIU
import MemhaulReceiver
import MemhaulSender
import MemhaulWire

/// `--restore criu` and its CRIU options, shared by `migrate` (A: the dump) and
/// `receive` (B: the restore).
struct RestoreOptions: ParsableArguments {
    @Option(help: ArgumentHelp("After the proof: none (memory only), or criu (dump the frozen source with CRIU, ship the dump, restore and run the process on the receiver's host; the source is killed once it runs there).", valueName: "none|criu"))
    var restore: String = "none"
    @Option(name: .customLong("criu"), help: "The criu binary (CRIU ≥ 4.1); default $MEMHAUL_CRIU, then criu on PATH.")
    var criuPath: String?
    @Option(name: .customLong("criu-arg"), help: "An extra argument for this host's criu (dump on the sender, restore on the receiver); repeatable.")
    var criuArgs: [String] = []

    var enabled: Bool { restore == "criu" }

    func validate() throws {
        guard restore == "none" || restore == "criu" else { throw ValidationError("--restore must be none or criu") }
        if !enabled && (criuPath != nil || !criuArgs.isEmpty) { throw ValidationError("--criu and --criu-arg need --restore criu") }
    }

    /// Finds and checks criu now, before anything is migrated.
    func runner() throws -> CRIURunner { try Self.openRunner(criuPath) }

    static func openRunner(_ path: String?) throws -> CRIURunner {
        do {
            return try CRIURunner.open(explicit: path)
        } catch {
            throw CLIError("--restore criu: \(error)")
        }
    }
}

/// The sender's side only (`migrate`): what the dump is taken with.
struct DumpOptions: ParsableArguments {
    @Option(name: .customLong("criu-route"), help: ArgumentHelp("How B gets the memory: lazy (CRIU's lazy-pages daemon pulls it from the image), rewrite (the dump is filled from the image, then a plain restore) or parent (a plain restore reads the image's region files through a chain of CRIU parent levels; the default).", valueName: "lazy|rewrite|parent"))
    var route: String?
    @Flag(name: .customLong("shell-job"), help: "CRIU --shell-job: the process's session or terminal lies outside the dump.")
    var shellJob = false
    @Flag(name: .customLong("tcp-established"), help: "CRIU --tcp-established: established TCP connections move (B must take over A's address).")
    var tcpEstablished = false
    @Flag(name: .customLong("tcp-close"), help: "CRIU --tcp-close: established TCP connections are restored closed.")
    var tcpClose = false
    @Option(name: .customLong("criu-dir"), help: "Where the dump is written on this host (<dir>/<migration id>/; removed after success).")
    var criuDir: String = NSTemporaryDirectory() + "memhaul-criu"

    func validate() throws {
        guard route.map({ CRIURoute(rawValue: $0) != nil }) ?? true else { throw ValidationError("--criu-route must be lazy, rewrite or parent") }
        if tcpEstablished && tcpClose { throw ValidationError("--tcp-established and --tcp-close exclude each other") }
    }

    var criuRoute: CRIURoute { route.map { CRIURoute(rawValue: $0)! } ?? .defaultRoute }  // validate() checked it

    var isDefault: Bool { route == nil && !shellJob && !tcpEstablished && !tcpClose }

    func options(extra: [String]) -> CRIUOptions {
        var o = CRIUOptions()
        o.shellJob = shellJob
        o.tcp = tcpEstablished ? .established : tcpClose ? .close : .none
        o.extraArguments = extra
        return o
    }
}

extension RestoreService {
    /// The receiver's CRIU restore (`memhaul receive --restore criu`).
    static func criu(runner: CRIURunner, extraArguments: [String], log: @escaping @Sendable (String) -> Void) -> RestoreService {
        RestoreService { job in
            var options = CRIUOptions()
            options.shellJob = job.options.contains(.shellJob)
            options.tcp = job.options.contains(.tcpEstablished) ? .established : job.options.contains(.tcpClose) ? .close : .none
            options.extraArguments = extraArguments
            let outcome = try CRIURestore.run(runner: runner, imageDirectory: job.imageDirectory, criuDirectory: job.criuDirectory,
                                              route: CRIURoute(job.options), options: options, log: log)
            return Outcome(pid: outcome.pid, restoreSeconds: outcome.restoreSeconds, completeSeconds: outcome.completeSeconds)
        }
    }
}

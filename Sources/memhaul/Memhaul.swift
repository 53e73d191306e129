import ArgumentParser
import CMemhaulSignals
import Foundation

/// The entry: the commands that hold targets (and the receiver) take
/// SIGINT/SIGTERM/SIGHUP on a signal thread (``ShutdownSignals``); the others
/// get the default actions back. A synchronous main on purpose: an async one
/// parks the main thread in dispatch_main's sigsuspend with an empty mask,
/// where SIGTERM would take its default action.
@main
enum MemhaulMain {
    static func main() {
        let graceful: Set<String> = ["migrate", "sender", "receive"]
        if let verb = CommandLine.arguments.dropFirst().first, graceful.contains(verb), cms_blocked_early() != 0 {
            ShutdownSignals.start()
        } else {
            ShutdownSignals.restoreDefault()
        }
        // Log lines still queued for stderr go out before any exit (bounded: StderrWriter).
        atexit { StderrWriter.shared.flush() }
        do {
            var command = try Memhaul.parseAsRoot()
            try command.run()
        } catch {
            // Queued log lines first: ArgumentParser writes the error to stderr
            // itself, and the two writers would interleave mid-line.
            StderrWriter.shared.flush()
            Memhaul.exit(withError: error)
        }
    }
}

/// `memhaul`: the one command; each verb is a subcommand in its own file.
struct Memhaul: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memhaul",
        abstract: "Live-migrate the memory of a running Linux process (uffd-async + PAGEMAP_SCAN pre-copy).",
        version: MemhaulVersion.string,
        subcommands: [
            // Each layer registers its subcommands here, one line each.
            CtlCommand.self,
            MigrateCommand.self,
            SenderCommand.self,
            ReceiveCommand.self,
            ImageCommand.self,
            CertsCommand.self,
            BenchCommand.self,
            ProbeCommand.self,
            TrackCommand.self,
            ReportCommand.self,
        ]
    )
}

enum MemhaulVersion {
    static let string = "0.1.0"
}

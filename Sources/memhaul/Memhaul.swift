import ArgumentParser

/// `memhaul`: the one command; each verb is a subcommand in its own file.
@main
struct Memhaul: AsyncParsableCommand {
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
        ]
    )
}

enum MemhaulVersion {
    static let string = "0.1.0"
}

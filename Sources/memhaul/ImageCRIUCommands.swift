import ArgumentParser
import Foundation
import MemhaulCRIU
import MemhaulImage
import MemhaulSender
import MemhaulSystem
import MemhaulTLS

extension ImageCommand {
    /// `memhaul image export --criu DUMPDIR IMAGE [--route rewrite|parent]`
    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give a CRIU dump taken with --lazy-pages the image's pages, for a plain criu restore.",
            discussion: """
                rewrite: the dump's PE_LAZY entries (private anonymous memory CRIU left out) become \
                PE_PRESENT and pages-N.img is rebuilt in pagemap order from CRIU's own pages and the image's \
                (copies all of memory). parent: the PE_LAZY entries become PE_PARENT and DUMPDIR/parent links \
                a chain of CRIU parent levels whose pages files are symlinks to the image's region files \
                (copies nothing; the image must not change or move until criu restore has run). Nothing is \
                changed unless every lazy range lies inside the image's layout and every pages file is as \
                long as its entries (CRIU's restorer would loop on a shorter one).
                """)

        enum Route: String, ExpressibleByArgument, CaseIterable { case rewrite, parent }

        @Option(name: .customLong("criu"), help: "The CRIU dump directory (criu dump --lazy-pages -D DIR).")
        var dump: String

        @Argument(help: "The memhaul image directory (<images>/<migration-id>).")
        var image: String

        @Option(help: "rewrite (copy the image's pages into the dump) or parent (link the image's region files as CRIU parent levels).")
        var route: Route = .rewrite

        @Flag(help: "Use an image whose migration did not complete.")
        var allowIncomplete = false

        func run() throws {
            let source = try ImagePageSource(directory: image, allowIncomplete: allowIncomplete)
            let start = MonotonicClock.seconds()
            switch route {
            case .rewrite:
                let result = try CRIUExport.rewrite(dumpDirectory: dump, source: source)
                let ms = Int((MonotonicClock.seconds() - start) * 1000)
                print("exported \(result.imagePages) pages from \(image) into \(result.pagemaps) pagemap(s) of \(dump) (\(result.criuPages) pages kept from CRIU) in \(ms) ms")
            case .parent:
                let result = try CRIUParentChain.build(dumpDirectory: dump, source: source)
                let ms = Int((MonotonicClock.seconds() - start) * 1000)
                print("linked \(result.imagePages) pages of \(image) into \(dump) as \(result.levels) CRIU parent level(s) (\(result.criuPages) pages kept from CRIU) in \(ms) ms")
            }
        }
    }

    /// `memhaul image serve-criu IMAGE --listen HOST:PORT`
    struct ServeCRIU: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "serve-criu",
            abstract: "Serve the image to one `criu lazy-pages --page-server` client, then exit.",
            discussion: """
                Answers PS_IOV_GET requests with the image's pages, only inside its layout. A second client \
                is refused, and a malformed or out-of-layout request ends the session, each with a log line. \
                Exits 0 when the client sends PS_IOV_CLOSE.
                """)

        @Argument(help: "The memhaul image directory.")
        var image: String

        @Option(help: "Address to listen on, HOST:PORT (CRIU's page-server protocol is plain TCP: keep it on loopback or a private link).")
        var listen: String

        @Option(help: "Serve only requests for this process id (the dump's PID; default: any).")
        var pid: UInt64?

        @Option(name: .customLong("accept-timeout"), help: "Seconds to wait for the client.")
        var acceptTimeout: Double = 300

        @Flag(help: "Use an image whose migration did not complete.")
        var allowIncomplete = false

        func validate() throws {
            _ = try MigrationRequest.parseDestination(listen, allowAnyPort: true)
            guard acceptTimeout > 0 else { throw ValidationError("--accept-timeout must be > 0") }
        }

        func run() throws {
            let source = try ImagePageSource(directory: image, allowIncomplete: allowIncomplete)
            let (host, port) = try MigrationRequest.parseDestination(listen, allowAnyPort: true)
            let listener = try TCPListener(host: host, port: port)
            Log.line("serve-criu: \(image) on \(listener.localDescription)")
            let server = CRIUPageServer(source: source, listener: listener, pid: pid, log: Log.line)
            do {
                _ = try server.serveOneClient(acceptTimeout: .milliseconds(Int64(acceptTimeout * 1000)))
            } catch {
                throw CLIError("serve-criu: \(error)")
            }
        }
    }
}

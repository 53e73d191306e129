import ArgumentParser
import Foundation
import MemhaulCRIU
import MemhaulImage
import MemhaulSender
import MemhaulSystem
import MemhaulTLS

extension ImageCommand {
    /// `memhaul image export --criu DUMPDIR IMAGE`
    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fill a CRIU dump taken with --lazy-pages with the image's pages, for a plain criu restore.",
            discussion: """
                The dump's PE_LAZY entries (private anonymous memory CRIU left out) become PE_PRESENT and \
                pages-N.img is rebuilt in pagemap order from CRIU's own pages and the image's. Nothing is \
                changed unless every lazy range lies inside the image's layout; a pages file is never left \
                shorter than its entries (CRIU's restorer would loop on it). This copies all of memory: \
                the lazy route (memhaul image serve-criu) copies nothing while the process is frozen.
                """)

        @Option(name: .customLong("criu"), help: "The CRIU dump directory (criu dump --lazy-pages -D DIR).")
        var dump: String

        @Argument(help: "The memhaul image directory (<images>/<migration-id>).")
        var image: String

        @Flag(help: "Use an image whose migration did not complete.")
        var allowIncomplete = false

        func run() throws {
            let source = try ImagePageSource(directory: image, allowIncomplete: allowIncomplete)
            let start = MonotonicClock.seconds()
            let result = try CRIUExport.rewrite(dumpDirectory: dump, source: source)
            let ms = Int((MonotonicClock.seconds() - start) * 1000)
            print("exported \(result.imagePages) pages from \(image) into \(result.pagemaps) pagemap(s) of \(dump) (\(result.criuPages) pages kept from CRIU) in \(ms) ms")
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

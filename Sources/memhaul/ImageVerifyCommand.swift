import ArgumentParser
import Foundation
import MemhaulControl
import MemhaulSystem
import MemhaulSession
import MemhaulSender
import MemhaulReceiver
import MemhaulImage

extension ImageCommand {
    /// `memhaul image verify DIR --pid P`: byte-for-byte check against a stopped process.
    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check an image byte for byte against a stopped process (e.g. the frozen source).")

        @Argument(help: "Image directory.") var directory: String
        @Option(help: "The process to compare with; it must be stopped.") var pid: Int32
        @Flag(help: "Print the result as JSON.") var json = false

        func run() throws {
            guard let state = ProcFS.state(pid: pid) else { throw CLIError("no process \(pid)") }
            guard state == "T" || state == "t" else {
                throw CLIError("process \(pid) is running (state \(state)); stop it first (kill -STOP \(pid)) or compare the frozen source")
            }
            // Read-only: a shared lock (refused while a receiver writes it), no recovery.
            let image = try ImageReader.open(directory: directory, requireLock: true)
            defer { image.close() }
            let report = try ImageVerifier.verify(image, pid: pid)
            if json {
                let obj: [String: Any] = [
                    "ok": report.ok, "regions": report.regions, "pages_compared": report.pagesCompared,
                    "bytes_compared": report.bytesCompared, "mismatches": report.mismatches.map { String(describing: $0) },
                    "not_migrated": report.notMigrated,
                ]
                print(String(decoding: ControlJSON.text(obj), as: UTF8.self))
            } else if report.ok {
                print("image \(directory) matches process \(pid): \(report.regions) regions, \(report.pagesCompared) pages with content compared")
                if !report.notMigrated.isEmpty { print("  not migrated by design (shared, kernel-provided, device, hugetlb): \(report.notMigrated.count) mappings") }
            } else {
                print("image \(directory) DIFFERS from process \(pid):")
                for m in report.mismatches { print("  \(m)") }
            }
            if !report.ok { throw ExitCode(1) }
        }
    }
}

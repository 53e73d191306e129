import ArgumentParser
import Foundation
import MemhaulReport
import MemhaulSystem

/// `memhaul report`: a migration report (either side's) as a self-contained HTML page.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Render a migration report (report.json of the sender or the receiver) as an HTML page with plots.")

    @Argument(help: "The report: `migrate --report PATH`, or report.json in a receiver's image directory.")
    var file: String
    @Option(name: .shortAndLong, help: "Write the page here (default: standard output).")
    var output: String?

    func run() throws {
        let report: MigrationReport
        do { report = try ReportJSON.read(file) } catch { throw CLIError(error.description) }
        let html = Array(ReportPage.html(report, source: file).utf8)
        guard let output else {
            FileHandle.standardOutput.write(Data(html))
            return
        }
        do { try SmallFile.writeAtomically(output, html, mode: 0o644) } catch { throw CLIError("cannot write \(output): \(error)") }
    }

    /// `path` against the working directory (the agent that writes it has another one).
    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }
}

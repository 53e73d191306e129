import Foundation
import MemhaulControl
import MemhaulSender

/// `migrate --report PATH`: the report as one JSON object (Protocol/control.md, "Report").
enum MigrationReportFile {
    static func write(_ report: MigrationReport, to path: String) throws {
        do {
            try ControlJSON.line(ControlJSON.object(report)).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw CLIError("--report \(path): \(error.localizedDescription)")
        }
    }
}

import ArgumentParser
import Foundation
import MemhaulControl
import MemhaulSession
import MemhaulSender
import MemhaulReceiver
import MemhaulKernel
import MemhaulSystem

/// `memhaul track`: attach to a process and report, round by round, which of
/// its pages were written, without sending anything.
struct TrackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "track",
        abstract: "Write-track a running process with uffd async-WP + PAGEMAP_SCAN and print each round's dirty set.")

    @Option(help: "Target process id.") var pid: Int32
    @Option(help: "Rounds after round 0.") var rounds: Int = 10
    @Option(help: "Milliseconds between rounds.") var interval: Int = 1000
    @Flag(help: "One JSON object per line.") var json = false
    @Flag(name: .customLong("show-mappings"), help: "List every tracked and skipped mapping first.") var showMappings = false

    func validate() throws {
        guard pid > 0 else { throw ValidationError("--pid must be positive") }
        guard rounds >= 0 else { throw ValidationError("--rounds must be >= 0") }
        guard interval > 0 else { throw ValidationError("--interval must be > 0") }
    }

    func run() throws {
        let process = try AttachedProcess.attach(pid: pid)
        defer { try? process.detach() }
        let tracker = DirtyTracker(scanner: PagemapScanner(pagemap: process.pagemap))
        func ranges() -> [AddressRange] { process.registeredRanges }
        let tracked = ranges()
        let trackedBytes = tracked.reduce(0) { $0 + $1.byteCount }
        if json {
            emit(["event": "attached", "pid": Int(pid), "tracked_mappings": process.registered.count,
                  "tracked_bytes": trackedBytes, "skipped": process.skipped.map { ["range": "\($0.entry.range)", "path": $0.entry.path, "reason": "\($0.reason)"] }])
        } else {
            print("tracking PID \(pid): \(process.registered.count) mappings, \(Summary.bytes(Double(trackedBytes))); \(process.skipped.count) skipped")
            if showMappings {
                for e in process.registered {
                    let note = process.fileBacking(of: e).cleanPagesAreContent ? "  (file cannot be reopened: its pages are migrated)" : ""
                    print("  tracked  \(e.range) \(e.permissions) \(e.path)\(note)")
                }
                for s in process.skipped { print("  skipped  \(s.entry.range) \(s.entry.permissions) \(s.entry.path): \(s.reason)") }
            } else {
                var reasons: [String: Int] = [:]
                for s in process.skipped { reasons["\(s.reason)", default: 0] += 1 }
                for (r, n) in reasons.sorted(by: { $0.key < $1.key }) { print("  skipped \(n)× \(r)") }
            }
            print(Self.columns(["round", "dirty pages", "discarded", "scan ms", "dirty rate", "regions"]))
        }
        var last = MonotonicClock.seconds()
        var scan = try tracker.initialRound(ranges: tracked, fileContent: process.fileContentRanges)
        report(scan, window: 0)
        for _ in 0..<rounds {
            usleep(useconds_t(interval * 1000))
            let delta = try process.refreshLayout()
            let now = MonotonicClock.seconds()
            scan = try tracker.nextRound(ranges: ranges(), removed: delta.removed, fileContent: delta.fileContent)
            report(scan, window: now - last)
            last = now
        }
    }

    private func report(_ scan: RoundScan, window: Double) {
        let bytes = Double(scan.stats.dirtyPages) * 4096
        let rate = window > 0 ? bytes / window : 0
        let ms = Double(scan.stats.nanoseconds) / 1e6
        if json {
            emit(["event": "round", "round": scan.round, "dirty_pages": scan.stats.dirtyPages, "discarded_pages": scan.stats.discardedPages,
                  "scan_ms": ms, "dirty_rate_bytes_per_second": rate, "pages_scanned": scan.stats.pagesScanned, "ioctls": scan.stats.ioctls])
        } else {
            print(Self.columns(["\(scan.round)", "\(scan.stats.dirtyPages)", "\(scan.stats.discardedPages)", String(format: "%.2f", ms),
                                window > 0 ? Summary.bytes(rate) + "/s" : "-", "\(scan.stats.regions)"]))
        }
    }

    /// The header and the rows share these widths, right-aligned (String(format:)'s
    /// `%12@` does not pad on Linux, which is how the header once slipped).
    static let widths = [6, 12, 12, 10, 14, 10]
    static func columns(_ cells: [String]) -> String {
        zip(cells, widths).map { cell, width in String(repeating: " ", count: max(0, width - cell.count)) + cell }.joined(separator: " ")
    }

    private func emit(_ object: [String: Any]) {
        FileHandle.standardOutput.write(ControlJSON.line(object))
    }
}

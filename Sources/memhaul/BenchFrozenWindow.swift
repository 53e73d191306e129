import Foundation
import MemhaulReport
import MemhaulSender
import MemhaulSystem

/// One benchmark migration and its frozen window (freeze → source released,
/// the proof included), split into its parts on memhaul's clock and measured
/// again on the target's own (`memhaul-workload --heartbeat`). Stop-and-copy
/// has no final scan (0): its final delta is the whole memory.
struct BenchFrozenWindow {
    var status: MigrationStatus
    /// memhaul's `frozen_ms`.
    var frozenMs: Double
    var freezeMs: Double
    var finalScanMs: Double
    /// Sending the final delta's frames (the frozen round's `stream_ms`).
    var finalDeltaMs: Double
    /// The receiver's commit of it: ROUND_END sent → its ROUND_ACK (`commit_wait_ms`).
    var commitMs: Double
    var verifyMs: Double
    /// What the parts above leave: the steps between them (the drain before the proof) and the thaw.
    var restMs: Double { frozenMs - freezeMs - finalScanMs - finalDeltaMs - commitMs - verifyMs }
    /// The target's longest stall around the freeze (its heartbeat), ms; nan without a heartbeat.
    var livedMs: Double

    /// Runs `request` with its report written to the scratch directory; the
    /// report places the frozen window on the wall clock, and the target's
    /// stall containing its midpoint is the window as the target lived it.
    /// `keepReportIn`: a directory to leave the report in (`memhaul report` reads it), else it is deleted.
    static func migrate(_ request: MigrationRequest, env: BenchSupport.Environment, heartbeat: String?,
                        keepReportIn: String? = nil) throws -> BenchFrozenWindow {
        var r = request
        let reportPath = (keepReportIn ?? env.scratch) + "/report-\(r.id).json"
        r.reportPath = reportPath
        defer { if keepReportIn == nil { unlink(reportPath) } }
        let m = SenderMigration(request: r, connect: try env.connector())
        m.run()
        let s = m.status
        let report = try? ReportJSON.read(reportPath)
        let finalRounds = (report?.rounds ?? []).filter(\.frozen)
        var midpoint: UInt64 = 0
        if let report, let origin = ReportClock.parse(report.startedAt), let start = report.downtime?.frozenStartMs, let end = report.downtime?.frozenEndMs {
            midpoint = origin + UInt64((start + end) / 2 * 1e6)
        }
        return BenchFrozenWindow(
            status: s, frozenMs: s.frozenMs ?? .nan, freezeMs: s.freezeMs ?? .nan, finalScanMs: s.finalScanMs ?? 0,
            finalDeltaMs: finalRounds.isEmpty ? .nan : finalRounds.reduce(0) { $0 + $1.streamMs },
            commitMs: finalRounds.isEmpty ? .nan : finalRounds.reduce(0) { $0 + $1.commitWaitMs },
            verifyMs: s.verifyMs ?? .nan,
            livedMs: heartbeat.map { stallMs($0, covering: midpoint) } ?? .nan)
    }

    /// The heartbeat's stall (`END_REALTIME_NS GAP_NS` lines) that contains `instant`, ms (nan if none was logged).
    /// The heartbeat rewrites its file every 50 ms: wait for a version written after the stall ended.
    static func stallMs(_ path: String, covering instant: UInt64) -> Double {
        guard instant > 0 else { return .nan }
        for _ in 0..<40 {
            let lines = ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n")
            let last = lines.first.flatMap { $0.split(separator: " ").last.flatMap { UInt64($0) } } ?? 0
            for line in lines.dropFirst() {
                let f = line.split(separator: " ")
                guard f.count == 2, let end = UInt64(f[0]), let gap = UInt64(f[1]) else { continue }
                if end >= instant && end - gap <= instant { return Double(gap) / 1e6 }
            }
            if last > instant { return .nan }  // a tick after the instant, and no stall around it
            usleep(25_000)
        }
        return .nan
    }

    /// The frozen window step by step (`frozen_steps`): "step +Δ" per step, Δ the ms since the previous one.
    var steps: String {
        var previous = 0.0
        return (status.frozenSteps ?? []).map { s in
            defer { previous = s.atMs }
            return String(format: "%@ +%.2f", s.step, s.atMs - previous)
        }.joined(separator: ", ")
    }

    /// "frozen F ms = freeze … + final scan … + final delta … + commit … + verify … + rest …; target saw L ms".
    var parts: String {
        String(format: "frozen %8.1f ms = freeze %5.1f + final scan %6.1f + final delta %7.1f + commit %6.1f + verify %6.1f + rest %5.1f; target saw %8.1f ms",
               frozenMs, freezeMs, finalScanMs, finalDeltaMs, commitMs, verifyMs, restMs, livedMs)
    }
}

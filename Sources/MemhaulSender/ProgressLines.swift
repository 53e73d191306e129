import Foundation
import Synchronization

/// The permanent progress lines of a migration, from two successive statuses:
/// what `memhaul migrate` prints (a line per round and per stage change) and
/// what the sender agent logs (each stage change once).
public enum ProgressLines {
    /// The permanent lines the step from `old` to `new` earns: a finished
    /// round, a new throttle, a new stage.
    public static func changes(from old: MigrationStatus?, to new: MigrationStatus) -> [String] {
        let old = old ?? { var o = new; o.stage = .setup; o.throttlePercent = 0; return o }()
        var lines: [String] = []
        let roundEnded = old.stage == .precopy && (new.round != old.round || new.stage != .precopy)
            || old.stage == .finalDelta && new.stage != .finalDelta
        if roundEnded { lines.append(roundLine(old)) }
        if new.throttlePercent > 0 && new.throttlePercent != old.throttlePercent {
            lines.append("throttled: the target runs \(100 - new.throttlePercent)% of the time (throttle \(new.throttlePercent)%\(new.throttleMechanism.map { ", \($0.rawValue)" } ?? ""))")
        }
        if new.stage != old.stage {
            switch new.stage {
            case .setup, .precopy: break
            case .frozen:
                lines.append("frozen: source stopped" + (new.freezeMs.map { String(format: " in %.1f ms", $0) } ?? "")
                             + (new.cutoverReason.map { "; cutover: \($0)" } ?? ""))
            case .finalDelta: lines.append("final delta: \(ByteFormat.bytes(Double(new.roundTotalBytes))) to send, source frozen")
            case .verifying: lines.append("verifying: both sides digest the memory" + (new.downtimeMs.map { String(format: " (final commit %.1f ms after the freeze)", $0) } ?? ""))
            case .restoring: lines.append("restoring on the receiver: CRIU dump, transfer and restore")
            case .done: lines.append("done: " + (new.digest.map { "digest \($0.prefix(16)), " } ?? "") + (new.frozenMs.map { String(format: "frozen %.1f ms", $0) } ?? ""))
            case .failed: lines.append("failed: \(new.error ?? "?")")
            case .cancelled: lines.append("cancelled")
            }
        }
        if new.stage == .precopy && (old.stage != .precopy || new.round != old.round) {
            lines.append("round \(new.round): \(ByteFormat.bytes(Double(new.roundTotalBytes))) to send")
        }
        return lines
    }

    /// A finished round, from the last status of that round.
    public static func roundLine(_ s: MigrationStatus) -> String {
        var parts = ["\(s.stage == .finalDelta ? "final delta (round \(s.round))" : "round \(s.round)") sent: \(ByteFormat.bytes(Double(s.roundSentBytes))) of \(ByteFormat.bytes(Double(s.roundTotalBytes)))",
                     "pages \(ByteFormat.rate(s.throughputBps))", "wire \(ByteFormat.rate(s.wireBps))"]
        if s.stage == .precopy {
            parts.append("dirty \(ByteFormat.rate(s.dirtyRateBps))")
            parts.append("expected downtime \(s.expectedDowntimeMs.map { "\(Int($0.rounded())) ms" } ?? "-")")
        }
        parts.append("total \(ByteFormat.bytes(Double(s.transferredBytes))) on the wire")
        return parts.joined(separator: ", ")
    }

}

/// Byte counts and rates for people (binary units).
public enum ByteFormat {
    public static func bytes(_ v: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = v, i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return String(format: i == 0 ? "%.0f %@" : "%.1f %@", v, units[i])
    }
    public static func rate(_ bytesPerSecond: Double) -> String { bytes(bytesPerSecond) + "/s" }
}

/// Logs each stage change (and finished round) of one migration once: the
/// sender agent's `progress` observer.
public final class ProgressLog: Sendable {
    private let last = Mutex<MigrationStatus?>(nil)
    private let log: @Sendable (String) -> Void
    public init(log: @escaping @Sendable (String) -> Void) { self.log = log }
    public func record(_ status: MigrationStatus) {
        let previous = last.withLock { p -> MigrationStatus? in defer { p = status }; return p }
        for line in ProgressLines.changes(from: previous, to: status) { log("migration \(status.id): \(line)") }
    }
}

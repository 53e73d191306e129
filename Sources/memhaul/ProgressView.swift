import Foundation
import MemhaulSender
import MemhaulSystem
import Synchronization

/// What `memhaul migrate` shows while it runs, fed by the migration's
/// progress events (``SenderMigration``'s `progress`, per commit chunk and
/// per stage change), in the manner of rsync `--info=progress2`, pv and
/// QEMU's `info migrate`:
/// - one permanent line per finished round and per stage change (setup, the
///   rounds, throttled, frozen, final delta, verifying, restoring on the
///   receiver, done), on a terminal and in a pipe alike;
/// - on a terminal, a live line under them: the stage, a bar and the bytes
///   of the round sent of its total, the named rates, the round's ETA,
///   the elapsed time, the expected downtime and the throttle.
/// `update` only formats and queues (``StderrWriter``): it runs on the
/// migration's thread and never waits for stderr.
final class ProgressView: @unchecked Sendable {  // `timer` is set up before the migration starts
    private let writer: StderrWriter
    private let start = MonotonicClock.seconds()
    private let last = Mutex<MigrationStatus?>(nil)
    /// When the stage first said the source is frozen (the live line counts it).
    private let frozenAt = Mutex<Double?>(nil)
    private let timer = DispatchSource.makeTimerSource(queue: .global())

    init(writer: StderrWriter = .shared) { self.writer = writer }

    func start(destination: String, pid: Int32) {
        writer.line(Self.stamp(0) + "setup: PID \(pid) to \(destination)")
        guard writer.isTerminal else { return }
        // Between events (a long commit, the proof) the elapsed time still moves.
        timer.schedule(deadline: .now() + .milliseconds(500), repeating: .milliseconds(500))
        timer.setEventHandler { [self] in
            if let s = last.withLock({ $0 }) { writer.live(liveLine(s)) }
        }
        timer.resume()
    }

    func stop() {
        timer.cancel()
        writer.live(nil)
        writer.flush()
    }

    func update(_ s: MigrationStatus) {
        let elapsed = MonotonicClock.seconds() - start
        let previous = last.withLock { p -> MigrationStatus? in defer { p = s }; return p }
        if [.frozen, .finalDelta].contains(s.stage) { frozenAt.withLock { $0 = $0 ?? MonotonicClock.seconds() } }
        for line in ProgressLines.changes(from: previous, to: s) { writer.line(Self.stamp(elapsed) + line) }
        if writer.isTerminal && !s.state.isFinal { writer.live(liveLine(s)) }
    }

    /// The live line, fitted to the terminal's width (the bar takes what is left).
    func liveLine(_ s: MigrationStatus) -> String {
        let now = MonotonicClock.seconds()
        return Self.liveLine(s, elapsed: now - start, frozenFor: frozenAt.withLock { $0 }.map { now - $0 }, columns: writer.columns)
    }

    static func liveLine(_ s: MigrationStatus, elapsed: Double, frozenFor: Double?, columns: Int) -> String {
        let stage: String = switch s.stage {
        case .precopy: s.throttlePercent > 0 ? "round \(s.round) throttled \(s.throttlePercent)%\(s.throttleMechanism.map { " (\($0.rawValue))" } ?? "")" : "round \(s.round)"
        case .finalDelta: "final delta"
        case .restoring: "restoring on B"
        default: s.stage.rawValue
        }
        let inRound = s.stage == .precopy || s.stage == .finalDelta
        // A round with nothing to send is complete.
        let fraction = s.roundTotalBytes > 0 ? min(1, Double(s.roundSentBytes) / Double(s.roundTotalBytes)) : 1
        // Most important first: what does not fit is dropped from the end.
        var tail: [String] = []
        if inRound {
            tail.append(String(format: "%3.0f%%", fraction * 100))
            tail.append("\(ByteFormat.bytes(Double(s.roundSentBytes)))/\(ByteFormat.bytes(Double(s.roundTotalBytes)))")
            tail.append("pages \(rate(s.throughputBps))")
            let left = Double(s.roundTotalBytes - min(s.roundTotalBytes, s.roundSentBytes))
            tail.append("ETA " + (s.throughputBps > 0 ? clock(left / s.throughputBps) : "-"))
        }
        tail.append("elapsed \(clock(elapsed))")
        if let frozenFor { tail.append(String(format: "source frozen %.1f s", frozenFor)) }
        if inRound { tail.append("wire \(rate(s.wireBps))") }
        if s.stage == .precopy {
            tail.append("dirty \(rate(s.dirtyRateBps))")
            tail.append("expected downtime \(s.expectedDowntimeMs.map { "\(Int($0.rounded())) ms" } ?? "-")")
        }
        let width = max(20, columns - 1)
        let barWidth = inRound && columns >= 80 ? 20 : 0
        let bar = barWidth == 0 ? "" : " [" + String(repeating: "#", count: Int(fraction * Double(barWidth))) + String(repeating: "-", count: barWidth - Int(fraction * Double(barWidth))) + "]"
        while !tail.isEmpty, (stage + bar + "  " + tail.joined(separator: "  ")).count > width { tail.removeLast() }
        return tail.isEmpty ? stage + bar : stage + bar + "  " + tail.joined(separator: "  ")
    }

    static func rate(_ v: Double) -> String { ByteFormat.rate(v) }

    /// `m:ss`, or `h:mm:ss`.
    static func clock(_ seconds: Double) -> String {
        let t = Int(seconds.rounded(.down))
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60) : String(format: "%d:%02d", t / 60, t % 60)
    }

    /// The elapsed time before each permanent line.
    static func stamp(_ elapsed: Double) -> String { String(format: "[%@] ", String(format: "%5.1fs", elapsed)) }
}

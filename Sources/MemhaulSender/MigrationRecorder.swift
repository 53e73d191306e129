import Foundation
import MemhaulReport
import MemhaulSession
import MemhaulSystem

/// Builds the sender's ``MigrationReport`` (`--report PATH`, control
/// `migrate` `report`) from the points where ``SenderMigration`` already
/// measures: each round, each decision, each phase change and resume, and
/// the release. The migration's thread records; `snapshot` (`status`
/// `history`) may come from any thread.
final class MigrationRecorder: @unchecked Sendable {  // state behind `lock`
    let clock = ReportClock()
    private let lock = NSLock()
    private var report: MigrationReport
    private var openPhase: (name: String, start: Double)?
    /// The policy's prediction after the last round, for the next round's `predicted_ms`.
    private var lastExpectedMs: Double?
    private var frozenAt: Double?
    private var frozenSeconds: Double?

    init(request: MigrationRequest) {
        report = MigrationReport(side: .sender, migration: request.id, state: MigrationState.setup.rawValue, startedAt: clock.startedAt)
        report.pid = request.pid
        report.destination = request.destination
        throttle = request.throttle.rawValue
        openPhase = ("setup", clock.monotonicOrigin)
    }

    /// Ends the open phase and starts `name` at `at` (monotonic seconds).
    func phase(_ name: String, at: Double = MonotonicClock.seconds()) {
        lock.withLock { startPhase(name, at: at) }
    }

    private func startPhase(_ name: String, at: Double) {
        if let open = openPhase, at > open.start {
            let p = MigrationReport.Phase(name: open.name, startedAt: clock.stamp(open.start), startMs: clock.offsetMs(open.start), endMs: clock.offsetMs(at))
            var r = report  // a local copy: two inout accesses to one class property conflict
            ReportLimits.append(p, to: &r.phases, limit: 64, name: "phases", omitted: &r.omittedEntries)
            report = r
        }
        openPhase = (name, at)
    }

    /// The target froze at `start`: the freeze phase, then the final delta.
    func froze(start: Double) {
        lock.withLock {
            startPhase("freeze", at: start)
            startPhase("final_delta", at: MonotonicClock.seconds())
        }
    }

    func round(_ number: Int, chunks: ClosedRange<UInt64>, start: Double, end: Double, sent: SenderMigration.SentRound,
               compressionLevel: Int32?, compression: String, throttlePercent: Int, frozen: Bool) {
        var r = MigrationReport.Round(round: number)
        r.firstChunk = chunks.lowerBound
        r.lastChunk = chunks.upperBound
        r.startedAt = clock.stamp(start)
        r.endedAt = clock.stamp(end)
        r.startMs = clock.offsetMs(start)
        r.endMs = clock.offsetMs(end)
        r.durationMs = ReportClock.round3((end - start) * 1000)
        r.streamMs = ReportClock.round3(sent.streamSeconds * 1000)
        r.commitWaitMs = ReportClock.round3(sent.ackSeconds * 1000)
        r.pages = sent.pages
        r.zeroPages = sent.zeroPages
        r.discardedPages = sent.discardedPages
        r.pageBytes = sent.pageBytes
        r.wireBytes = sent.wireBytes
        r.throughputBytesPerSecond = end > start ? (Double(sent.pageBytes) / (end - start)).rounded() : 0
        r.wireBytesPerSecond = end > start ? (Double(sent.wireBytes) / (end - start)).rounded() : 0
        r.compression = compression
        r.compressionLevel = compressionLevel.map(Int.init)
        r.throttlePercent = throttlePercent
        r.predictedMs = lock.withLock { lastExpectedMs }.map(ReportClock.round3)
        r.frozen = frozen
        if frozen { r.decision = "final" }
        lock.withLock {
            var copy = report
            ReportLimits.append(r, to: &copy.rounds, limit: ReportLimits.maxRounds, name: "rounds", omitted: &copy.omittedEntries)
            report = copy
        }
    }

    /// What the policy made of the last round.
    func decided(_ decision: ConvergenceDecision, pendingBytes: UInt64, dirtyRate: Double, expectedDowntimeMs: Double?) {
        lock.withLock { decide(decision, pendingBytes: pendingBytes, dirtyRate: dirtyRate, expectedDowntimeMs: expectedDowntimeMs) }
    }

    private func decide(_ decision: ConvergenceDecision, pendingBytes: UInt64, dirtyRate: Double, expectedDowntimeMs: Double?) {
        lastExpectedMs = expectedDowntimeMs
        guard !report.rounds.isEmpty, report.omittedEntries?["rounds"] == nil else { return }
        let i = report.rounds.count - 1
        report.rounds[i].pendingBytes = pendingBytes
        report.rounds[i].dirtyRateBytesPerSecond = dirtyRate.isFinite ? dirtyRate.rounded() : 0
        report.rounds[i].expectedDowntimeMs = expectedDowntimeMs.map(ReportClock.round3)
        switch decision {
        case .nextRound, .tighten, .measureCommit:
            report.rounds[i].decision = "next_round"
            report.rounds[i].decisionReason = decision.tighteningReason
        case .throttle(let percent):
            report.rounds[i].decision = "throttle"
            report.rounds[i].decisionReason = "rounds stalled: throttle the target to \(percent)%"
        case .cutover(let reason):
            report.rounds[i].decision = "cutover"
            report.rounds[i].decisionReason = reason.description
        }
    }

    /// A broken connection came back (`started`: when the break was noticed).
    func resumed(started: Double, committedChunk: UInt64, resentBytes: UInt64, reason: Error) {
        let now = MonotonicClock.seconds()
        var r = MigrationReport.Resume(at: clock.stamp(started), atMs: clock.offsetMs(started))
        r.committedChunk = committedChunk
        r.resentBytes = resentBytes
        r.reconnectMs = ReportClock.round3((now - started) * 1000)
        r.reason = ReportLimits.text(String(describing: reason))
        lock.withLock {
            var copy = report
            ReportLimits.append(r, to: &copy.resumes, limit: ReportLimits.maxResumes, name: "resumes", omitted: &copy.omittedEntries)
            report = copy
        }
    }

    /// The target was let go: the frozen window (if it froze) is known.
    func released(frozenAt: Double?, frozenSeconds: Double?) {
        lock.withLock {
            self.frozenAt = frozenAt
            self.frozenSeconds = frozenSeconds
        }
    }

    /// The report at the end; closes the open phase.
    /// The throttle backend the request asked for (`auto`, `cgroup`, `signals`).
    var throttle: String?

    func finish(_ s: MigrationStatus, _ p: ConvergenceParameters, compressionLevel: Int32?, failure: Error?) -> MigrationReport {
        lock.withLock {
            let now = MonotonicClock.seconds()
            startPhase("", at: now)
            return build(s, p, compressionLevel: compressionLevel, failure: failure, now: now)
        }
    }

    /// The report so far, the open phase up to now (a running migration's `status` `history`).
    func snapshot(_ s: MigrationStatus, _ p: ConvergenceParameters, compressionLevel: Int32?) -> MigrationReport {
        lock.withLock {
            let saved = (report, openPhase)
            defer { (report, openPhase) = saved }
            let now = MonotonicClock.seconds()
            if let open = openPhase { startPhase(open.name, at: now) }
            var r = build(s, p, compressionLevel: compressionLevel, failure: nil, now: now)
            r.endedAt = nil
            return r
        }
    }

    private func build(_ s: MigrationStatus, _ p: ConvergenceParameters, compressionLevel: Int32?, failure: Error?, now: Double) -> MigrationReport {
        var r = report
        r.state = s.state.rawValue
        if let failure, s.state != .completed {
            r.error = .init(code: Self.code(failure, s.state), message: ReportLimits.text(s.error ?? String(describing: failure)))
        }
        r.endedAt = clock.stamp(now)
        r.totalMs = clock.offsetMs(now)
        r.parameters = .init(downtimeLimitMs: p.downtimeLimitMs, maxRounds: p.maxRounds, maxTimeS: p.maxTimeSeconds,
                             maxBandwidthBytesPerSecond: p.maxBandwidth, autoConverge: p.autoConverge,
                             commitChunkBytes: p.commitChunkBytes, compression: compressionLevel.map { "zstd \($0)" } ?? "auto")
        r.parameters?.throttle = throttle
        r.parameters?.throttleSteps = p.throttleSteps.rawValue
        r.throttleMechanism = s.throttleMechanism?.rawValue
        var d = MigrationReport.Downtime(limitMs: s.downtimeLimitMs)
        d.expectedMs = r.rounds.last(where: { $0.frozen })?.predictedMs
        d.downtimeMs = s.downtimeMs.map(ReportClock.round3)
        d.frozenMs = s.frozenMs.map(ReportClock.round3)
        d.frozenWindowMs = s.frozenWindowMs.map(ReportClock.round3)
        if let frozenAt {
            d.frozenStartMs = clock.offsetMs(frozenAt)
            d.frozenEndMs = clock.offsetMs(frozenAt + (frozenSeconds ?? 0))
        }
        d.exceeded = (s.frozenWindowMs ?? s.frozenMs).map { $0 > s.downtimeLimitMs } ?? false
        d.cutoverReason = s.cutoverReason
        r.downtime = d
        r.totals.pages = r.rounds.reduce(0) { $0 + $1.pages }
        r.totals.zeroPages = r.rounds.reduce(0) { $0 + $1.zeroPages }
        r.totals.discardedPages = r.rounds.reduce(0) { $0 + $1.discardedPages }
        r.totals.pageBytes = s.pageBytes
        r.totals.wireBytes = s.transferredBytes
        r.totals.rounds = r.rounds.count
        r.totals.chunks = Int(r.rounds.last.map { $0.lastChunk } ?? 0)
        r.totals.resentBytesAfterResume = s.resentBytesAfterResume
        r.digest = s.digest
        r.warnings = s.warnings.prefix(ReportLimits.maxWarnings).map(ReportLimits.text)
        if s.criuDumpMs != nil || s.restoredPID != nil {
            var restore = MigrationReport.Restore()
            restore.criuDumpMs = s.criuDumpMs.map(ReportClock.round3)
            restore.transferMs = s.transferMs.map(ReportClock.round3)
            restore.restoreMs = s.restoreMs.map(ReportClock.round3)
            restore.pagesCompleteMs = s.pagesCompleteMs.map(ReportClock.round3)
            restore.criuFiles = s.criuFiles
            restore.criuBytes = s.criuBytes
            restore.restoredPid = s.restoredPID
            r.restore = restore
        }
        return r
    }

    /// A short machine-readable name of what failed: the status's code (``StatusError``).
    static func code(_ error: Error, _ state: MigrationState) -> String {
        state == .cancelled ? "cancelled" : StatusError(describing: error).code
    }
}

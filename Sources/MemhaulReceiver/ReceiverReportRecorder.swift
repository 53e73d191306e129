import MemhaulImage
import MemhaulReport
import MemhaulSystem
import MemhaulWire

/// Builds the receiver's ``MigrationReport``, `report.json` in the image
/// directory (`Protocol/report.md`): each connection, each committed chunk
/// with its commit and fsync latency, resumes, the final digest. A resumed
/// connection continues the report its predecessor wrote. Informational:
/// not part of the image and never read by the image store. Used by the
/// session's own thread only.
final class ReceiverReportRecorder {
    static let fileName = "report.json"

    private var report: MigrationReport?
    private var clock = ReportClock()
    /// Bytes received up to the end of the last committed chunk.
    private var mark: UInt64 = 0
    private var failure: MigrationReport.ReportError?

    /// The handshake gave the session its image: a resume continues the report found there.
    func opened(migration: String, directory: String, peer: String, resumeFrom: UInt64?, committedChunk: UInt32?, bytesReceived: UInt64) {
        let now = MonotonicClock.seconds()
        mark = bytesReceived
        if resumeFrom != nil, let old = try? ReportJSON.read(directory + "/" + Self.fileName),
           old.side == .receiver, old.migration == migration, let continued = ReportClock(continuing: old.startedAt) {
            report = old
            clock = continued
        } else {
            clock = ReportClock(monotonicOrigin: now)
            var fresh = MigrationReport(side: .receiver, migration: migration, state: "receiving", startedAt: clock.startedAt)
            fresh.imageDirectory = directory
            report = fresh
        }
        guard var r = report else { return }
        r.state = "receiving"
        r.error = nil
        var connection = MigrationReport.Connection(peer: ReportLimits.text(peer), startedAt: clock.stamp(now), startMs: clock.offsetMs(now))
        connection.resumeFromChunk = resumeFrom
        ReportLimits.append(connection, to: &r.connections, limit: ReportLimits.maxConnections, name: "connections", omitted: &r.omittedEntries)
        if resumeFrom != nil {
            var resume = MigrationReport.Resume(at: clock.stamp(now), atMs: clock.offsetMs(now))
            resume.committedChunk = committedChunk.map(UInt64.init)
            ReportLimits.append(resume, to: &r.resumes, limit: ReportLimits.maxResumes, name: "resumes", omitted: &r.omittedEntries)
        }
        report = r
    }

    /// A chunk (wire round) is committed; `final` for the verification round.
    func committed(chunk: UInt64, counts: RoundStats, commit: CommitInfo, bytesReceived: UInt64, final: Bool, digest: String? = nil) {
        guard var r = report else { return }
        let now = MonotonicClock.seconds()
        let pageBytes = counts.pages &* UInt64(WireLimits.default.pageSize)
        let wire = bytesReceived &- mark
        mark = bytesReceived
        let entry = MigrationReport.Chunk(
            chunk: chunk, committedAt: clock.stamp(now), atMs: clock.offsetMs(now), pages: counts.pages, zeroPages: counts.zeroPages,
            discardedPages: counts.discardedPages, pageBytes: pageBytes, wireBytes: wire,
            commitMs: ReportClock.round3(Double(commit.totalNanoseconds) / 1e6), fsyncMs: ReportClock.round3(Double(commit.syncNanoseconds) / 1e6),
            final: final)
        ReportLimits.append(entry, to: &r.chunks, limit: ReportLimits.maxChunks, name: "chunks", omitted: &r.omittedEntries)
        r.totals.chunks += 1
        r.totals.pages &+= counts.pages
        r.totals.zeroPages &+= counts.zeroPages
        r.totals.discardedPages &+= counts.discardedPages
        r.totals.pageBytes &+= pageBytes
        r.totals.wireBytes &+= wire
        if let digest { r.digest = digest }
        report = r
    }

    /// The session failed with the wire error `code`.
    func failed(code: ErrorCode, message: String) {
        failure = .init(code: code.description.replacingOccurrences(of: "-", with: "_"), message: ReportLimits.text(message))
    }

    /// The connection ends: the report is written into `directory`. Returns a
    /// problem to log (the report is informational: a failure changes nothing else).
    func finish(directory: String, state: String, bytesReceived: UInt64, restoredPID: Int32?) -> String? {
        guard var r = report else { return nil }
        let now = MonotonicClock.seconds()
        r.state = state
        r.error = failure
        r.endedAt = clock.stamp(now)
        r.totalMs = clock.offsetMs(now)
        r.totals.wireBytes &+= bytesReceived &- mark  // what came after the last commit
        mark = bytesReceived
        if let last = r.connections.indices.last, r.connections[last].endMs == nil {
            r.connections[last].endMs = clock.offsetMs(now)
            r.connections[last].endState = state
            r.connections[last].error = failure?.message
        }
        if let restoredPID {
            var restore = r.restore ?? MigrationReport.Restore()
            restore.restoredPid = restoredPID
            r.restore = restore
        }
        report = r
        do {
            try ReportJSON.write(r, to: directory + "/" + Self.fileName)
            return nil
        } catch {
            return "\(error)"
        }
    }
}

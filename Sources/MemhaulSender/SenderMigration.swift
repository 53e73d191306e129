#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulSession
import MemhaulDigest
import MemhaulKernel
import MemhaulReport
import MemhaulSystem
import MemhaulTLS
import MemhaulWire
import Synchronization

/// One live migration, sender side: attach, pre-copy rounds, freeze, final
/// delta, digest proof, then the `after` action. `run()` blocks; the control
/// calls (`status`, `set`, `requestCutover`, `cancel`) may come from any thread.
///
/// The target is held by one ``TargetHold``, released in `run()`'s `defer`:
/// whatever ends the migration (an error of any phase, a missed peer
/// deadline, `cancel()`), the target is running and untracked when `run()`
/// returns, unless it completed with `--after stop|kill`. Every wait for the
/// receiver has a deadline (``PeerDeadlines``).
public final class SenderMigration: @unchecked Sendable {  // shared state behind `shared`
    public typealias Connector = @Sendable (_ request: MigrationRequest) throws -> ByteStream

    public let request: MigrationRequest
    private let connect: Connector
    private struct Shared {
        var status: MigrationStatus
        var parameters: ConvergenceParameters
        var cutoverRequested = false
        var cancelRequested = false
        /// The connection in use, for `cancel()` to cut.
        var stream: ByteStream?
        /// After a cancel: the connection that tells the receiver (not cut).
        var farewell = false
    }
    private let shared: Mutex<Shared>
    private let finished = DispatchSemaphore(value: 0)
    /// Signalled by `cancel()`: wakes the sleeps (resume backoff, pacing).
    private let cancelSignal = DispatchSemaphore(value: 0)
    private let log: @Sendable (String) -> Void
    private let progress: @Sendable (MigrationStatus) -> Void
    /// The report (`request.reportPath`); the migration's thread only.
    private let recorder: MigrationRecorder
    /// The last freeze's steps (`frozen_steps`); the migration's thread only.
    private var timeline = FrozenTimeline()
    /// What the rounds built (tracker, ledger, delta cache, round sender), kept
    /// until the target is released: freed as `migrate` returned, it took
    /// 16–65 ms of an idle 4 GiB frozen window (BENCHMARKS.md, "rest").
    private var keptUntilReleased: [AnyObject] = []
    #if DEBUG
    /// Tests: runs on the migration's thread right before the cutover freezes the target.
    var testBeforeFreeze: (() -> Void)?
    /// Tests: runs on the migration's thread right after a strict cutover was aborted (the target thawed).
    var testAfterCutoverAbort: (() -> Void)?
    /// Tests: adjusts the guard of a strict final round (to steer where it aborts).
    var testStrictCutover: ((inout StrictCutover) -> Void)?
    #endif

    /// `progress` sees the status after every change (per commit chunk during
    /// a round, and at each stage change), on the migration's thread: it must
    /// not block (hand the status to another thread).
    public init(request: MigrationRequest, connect: @escaping Connector, log: @escaping @Sendable (String) -> Void = { _ in },
                progress: @escaping @Sendable (MigrationStatus) -> Void = { _ in }) {
        self.request = request
        self.connect = connect
        self.log = log
        self.progress = progress
        recorder = MigrationRecorder(request: request)
        var status = MigrationStatus(id: request.id, pid: request.pid, destination: request.destination)
        status.downtimeLimitMs = request.parameters.downtimeLimitMs
        status.maxBandwidth = request.parameters.maxBandwidth
        shared = Mutex(Shared(status: status, parameters: request.parameters))
    }

    public var status: MigrationStatus { shared.withLock { $0.status } }

    /// The migration's report so far (`Protocol/report.md`), from any thread: `status` with `history`.
    public var history: MigrationReport { recorder.snapshot(status, parameters, compressionLevel: request.compressionLevel) }

    /// Live parameter change; applies from the next frame (bandwidth) or round.
    public func update(_ change: (inout ConvergenceParameters) -> Void) -> MigrationStatus {
        shared.withLock {
            change(&$0.parameters)
            $0.status.downtimeLimitMs = $0.parameters.downtimeLimitMs
            $0.status.maxBandwidth = $0.parameters.maxBandwidth
            return $0.status
        }
    }

    /// Waits until `run()` has returned (or the timeout passes); true if it has.
    @discardableResult
    public func waitUntilFinished(timeoutSeconds: Double) -> Bool {
        guard finished.wait(timeout: .now() + timeoutSeconds) == .success else { return false }
        finished.signal()
        return true
    }

    public func requestCutover() { shared.withLock { $0.cutoverRequested = true } }

    /// Ends the migration as soon as possible, from any thread (control
    /// `cancel`, a signal handler's thread): sets the flag and cuts the
    /// connection (`ByteStream.abort()`), so a send or receive blocked on the
    /// receiver fails at once. `run()` then releases the target like any
    /// failure — thawed, untracked — and returns with state `cancelled`.
    /// Returns at once; `waitUntilFinished` waits for the release. A
    /// migration that has already completed stays completed.
    public func cancel() {
        shared.withLock {
            $0.cancelRequested = true
            $0.stream?.abort()
        }
        cancelSignal.signal()
    }

    private var parameters: ConvergenceParameters { shared.withLock { $0.parameters } }
    private var isCancelled: Bool { shared.withLock { $0.cancelRequested } }

    /// Makes `stream` the one `cancel()` cuts (at once if already cancelled).
    private func adopt(_ stream: ByteStream) {
        shared.withLock {
            $0.stream = stream
            if $0.cancelRequested && !$0.farewell { stream.abort() }
        }
    }

    /// Closes a channel; forgotten by `cancel()` first, so a late abort cannot
    /// reach a descriptor number the system has handed out again.
    private func retire(_ channel: FrameChannel?) {
        guard let channel else { return }
        shared.withLock { if $0.stream === channel.stream { $0.stream = nil } }
        channel.close()
    }

    /// Sleeps, waking early on `cancel()`.
    private func sleep(seconds: Double) {
        if cancelSignal.wait(timeout: .now() + seconds) == .success { cancelSignal.signal() }
    }
    private func updateStatus(_ body: (inout MigrationStatus) -> Void) {
        progress(shared.withLock { body(&$0.status); return $0.status })
    }

    /// Runs the migration to its end; the final state is in `status`.
    public func run() {
        let start = MonotonicClock.seconds()
        let hold = TargetHold(pid: request.pid, throttle: request.throttle)
        var box: ChannelBox?
        var failure: Error?
        // The one way out: the target is released before anything else
        // (before the receiver is told, before the status says the end).
        defer {
            end(hold, box, failure, start: start)
            finished.signal()
        }
        do {
            let first = try openChannel(resumeFrom: nil)
            box = ChannelBox(first.channel, capabilities: first.accepted)
            if !first.accepted.contains(.zstd) && request.compressionLevel != nil {
                updateStatus { $0.warnings.append("the receiver does not accept zstd: pages are sent raw") }
            }
            let attached = try hold.attach()
            try migrate(attached, box!, hold, start: start)
        } catch {
            failure = error
        }
    }

    /// Releases the target, then tells the receiver about a failure, closes
    /// the connection and sets the final status.
    private func end(_ hold: TargetHold, _ box: ChannelBox?, _ failure: Error?, start: Double) {
        let cancelled = failure != nil && (isCancelled || (failure as? MigrationError) == .cancelled)
        let outcome: TargetHold.Outcome = failure == nil ? .completed(request.after) : cancelled ? .cancelled : .failed
        timeline.mark(.releaseStart)
        recorder.phase("release")
        let release = hold.release(outcome)
        if let endedAt = release.endedAt { timeline.mark(.released, at: endedAt) }
        keptUntilReleased = []
        recorder.released(frozenAt: hold.frozenAt, frozenSeconds: release.frozenSeconds)
        var error = failure
        if let failure, let channel = box?.channel {
            // Bounded: the target runs already, but run() must still return.
            try? channel.stream.setTimeouts(read: .seconds(2), write: .seconds(1))
            // A send that failed because the receiver gave up: report its reason.
            if !cancelled, MigrationError.isConnectionLoss(failure), let e = channel.peerErrorAfterFailure() {
                error = MigrationError.peerError(code: e.code.rawValue, message: e.message)
            }
            let code: ErrorCode = cancelled ? .cancelled : .internalError
            try? channel.send(.error(ErrorMessage(code: code, message: String(describing: error!).prefix(1000).description)))
        }
        retire(box?.channel)
        if cancelled, let box { farewell(lastAcked: box.lastAcked) }
        let state: MigrationState = failure == nil ? .completed : cancelled ? .cancelled : .failed
        updateStatus {
            $0.stage = failure == nil ? .done : cancelled ? .cancelled : .failed
            $0.failure = failure == nil || cancelled ? nil : StatusError(describing: error!)
            $0.throttlePercent = 0
            $0.totalTimeMs = (MonotonicClock.seconds() - start) * 1000
            $0.frozenSteps = timeline.steps
            if let frozen = release.frozenSeconds {
                $0.frozenMs = frozen * 1000
                if let warning = Self.downtimeWarning(frozenMs: frozen * 1000, status: $0) { $0.warnings.append(warning) }
            }
            $0.warnings += release.problems.map { "source PID \(request.pid): \($0)" }
        }
        // The report is on disk before the status says the end, so whoever sees the end can read it.
        if let path = request.reportPath { writeReport(to: path, state: state, failure: failure) }
        updateStatus { $0.state = state }
        for problem in release.problems { log("migration \(request.id): source PID \(request.pid): \(problem)") }
        if failure == nil {
            log("migration \(request.id) completed; source \(release.action)")
        } else {
            log("migration \(request.id): \(cancelled ? "cancelled" : "failed: \(error!)"); source \(release.action), untracked")
        }
    }

    /// Writes the report; a failure is a warning (the report is informational).
    private func writeReport(to path: String, state: MigrationState, failure: Error?) {
        var final = status
        final.state = state
        let report = recorder.finish(final, parameters, compressionLevel: request.compressionLevel, failure: failure)
        do {
            try ReportJSON.write(report, to: path)
        } catch {
            updateStatus { $0.warnings.append("\(error)") }
            log("migration \(request.id): \(error)")
        }
    }

    /// Cancel cut the connection, so the ERROR could not go out on it: tell
    /// the receiver on a new one (a resume HELLO, then ERROR `cancelled`), so
    /// that it marks the image failed instead of keeping it for a resume that
    /// will not come. Best effort, bounded by the WELCOME deadline; the
    /// target is already released. A second `cancel()` cuts this one too.
    private func farewell(lastAcked: UInt64) {
        shared.withLock { $0.farewell = true }
        guard let (channel, _, _) = try? openChannel(resumeFrom: lastAcked) else { return }
        try? channel.stream.setTimeouts(read: .seconds(2), write: .seconds(1))
        try? channel.send(.error(ErrorMessage(code: .cancelled, message: "migration cancelled")))
        retire(channel)
    }

    /// The status warning when the frozen window overran the limit. The
    /// figure is the whole window (freeze → release), the proof included.
    static func downtimeWarning(frozenMs: Double, status s: MigrationStatus) -> String? {
        guard s.downtimeLimitMs > 0, frozenMs > s.downtimeLimitMs else { return nil }
        var parts: [String] = []
        if let p = s.expectedDowntimeMs { parts.append("predicted \(Int(p.rounded())) ms") }
        if let v = s.verifyMs { parts.append("verification \(Int(v.rounded())) ms of it") }
        let detail = parts.isEmpty ? "" : " (\(parts.joined(separator: ", ")))"
        let limit = s.downtimeLimitMs == s.downtimeLimitMs.rounded() ? String(Int(s.downtimeLimitMs)) : String(s.downtimeLimitMs)
        return "downtime \(Int(frozenMs.rounded())) ms exceeded the limit of \(limit) ms\(detail)"
    }

    /// What the sender offers in HELLO; it then uses only what WELCOME accepts.
    static let offeredCapabilities: Capabilities = [.zstd, .keepalive, .resume, .digestV2, .receiverLoad, .finalDeltaDigest]

    /// Connects and shakes hands; with `resumeFrom`, asks the receiver to
    /// reopen the image and returns the round it has committed. The WELCOME
    /// is checked: same major, accepted capabilities a subset of the offer,
    /// no committed round for a fresh start, resume accepted for a resume.
    private func openChannel(resumeFrom: UInt64?) throws -> (channel: FrameChannel, committed: UInt64, accepted: Capabilities) {
        let stream = try connect(request)
        adopt(stream)
        let channel = FrameChannel(stream: stream)
        var welcomed = false
        defer { if !welcomed { retire(channel) } }
        try channel.sendPreamble()
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count)
        let host = String(cString: name)
        let offered = Self.offeredCapabilities.union(request.afterProof?.capabilities ?? [])
            .union(request.proof.offersLedger ? .ledgerDigest : [])
            .union(request.deltaCacheBytes >= PageSize.bytes ? .pageDelta : [])
        try channel.send(.hello(Hello(capabilities: offered, migrationID: request.id,
                                      senderName: String(host.utf8.prefix(255))!, resumeFromRound: resumeFrom)))
        switch try channel.receive(by: PeerDeadline("WELCOME", seconds: request.deadlines.welcome)) {
        case .welcome(let w):
            try Self.check(w, resumeFrom: resumeFrom, offered: offered)
            if let step = request.afterProof, !w.capabilities.isSuperset(of: step.capabilities) {
                throw MigrationError.invalidParameter("the receiver at \(request.destination) cannot do the step after the proof: \(step.requirement)")
            }
            welcomed = true
            return (channel, w.lastCommittedRound ?? 0, w.capabilities)
        case .error(let e):
            throw MigrationError.peerError(code: e.code.rawValue, message: e.message)
        default:
            throw MigrationError.protocolViolation("expected WELCOME")
        }
    }

    /// A WELCOME a receiver could lie in (wire.md, WELCOME): refused as a protocol violation.
    static func check(_ w: Welcome, resumeFrom: UInt64?, offered: Capabilities = offeredCapabilities) throws {
        guard w.version.major == WireVersion.current.major else {
            throw MigrationError.protocolViolation("WELCOME version \(w.version) is not major \(WireVersion.current.major)")
        }
        guard w.capabilities.isSubset(of: offered) else {
            throw MigrationError.protocolViolation(
                "WELCOME accepts capabilities 0x\(String(w.capabilities.rawValue, radix: 16)) beyond the HELLO's 0x\(String(offered.rawValue, radix: 16))")
        }
        if resumeFrom == nil, let round = w.lastCommittedRound {
            throw MigrationError.protocolViolation("WELCOME of a new migration claims committed round \(round)")
        }
        if resumeFrom != nil, !w.capabilities.contains(.resume) {
            throw MigrationError.protocolViolation("WELCOME answers a resume without accepting the resume capability")
        }
    }

    // MARK: - Rounds

    private func migrate(_ process: AttachedProcess, _ box: ChannelBox, _ hold: TargetHold, start: Double) throws {
        let tracker = DirtyTracker(scanner: PagemapScanner(pagemap: process.pagemap))
        // The incremental proof's record of what was sent (capability `ledgerDigest`).
        let ledger = box.capabilities.contains(.ledgerDigest) ? PageLedger() : nil
        let deltaCache = box.capabilities.contains(.pageDelta) ? DeltaCache(capacityBytes: request.deltaCacheBytes) : nil
        let sender = RoundSender(pid: request.pid, configuration: .init(
            workers: request.workers, compressionLevel: request.compressionLevel, zstd: box.capabilities.contains(.zstd),
            hashPages: ledger != nil), deltaCache: deltaCache)
        keptUntilReleased = [tracker, sender] + [ledger as AnyObject?, deltaCache as AnyObject?].compactMap { $0 }
        var policy = ConvergencePolicy(parameters: parameters)
        var layout = Self.regions(of: process)
        updateStatus {
            $0.state = .active
            $0.totalBytes = layout.reduce(0) { $0 + ($1.end - $1.start) }
            $0.remainingBytes = $0.totalBytes  // until the first scan says what is populated
            $0.warnings += process.skipped.isEmpty ? [] : ["\(process.skipped.count) mappings not tracked (see memhaul track --pid for reasons)"]
        }
        recorder.phase("pre_copy")
        var freezeStart = 0.0
        if parameters.maxRounds == 0 {
            freezeStart = MonotonicClock.seconds()
            let ns = try freeze(hold)
            recorder.froze(start: freezeStart)
            updateStatus { $0.freezeMs = Double(ns) / 1e6; $0.state = .cutover; $0.stage = .frozen; $0.cutoverReason = CutoverReason.stopAndCopy.description }
        }
        var scan = try scanFirstRound(process, tracker, &layout, frozen: hold.isFrozen)
        var lastScanAt = MonotonicClock.seconds()
        /// The digest the final delta's last ROUND_END carried (capability `finalDeltaDigest`).
        var deltaProof: (digest: MemoryDigest, wire: WireDigest)?
        /// The receiver's digest in that ROUND_END's ROUND_ACK.
        var deltaProofAck: WireDigest?
        var round = 0
        while true {
            if isCancelled { throw MigrationError.cancelled }
            let roundStart = MonotonicClock.seconds()
            let strict = strictCutover(hold, scan: scan, policy: policy)
            if let strict, let abort = strict.check(.beforeSend, now: roundStart) {
                // Nothing of the final delta is out: thaw, and the next round sends it while the target runs.
                policy.recordAbortedCutover(predictedMs: policy.expectedDowntimeMs, abortMs: abort.predictedMs)
                try abortCutover(abort, hold: hold)
                tracker.requeue(scan)
                scan = try scanNextRound(process, tracker, &layout)
                continue
            }
            let roundBytes = scan.dirty.reduce(0) { $0 + $1.byteCount }
            updateStatus {
                $0.round = round
                $0.stage = hold.isFrozen ? .finalDelta : .precopy
                $0.roundTotalBytes = roundBytes
                $0.roundSentBytes = 0
                $0.remainingBytes = roundBytes
            }
            let sent: SentRound
            let firstChunk = UInt64(round + 1) &+ box.offset
            // The incremental proof rides on the final delta when the receiver can take it (not
            // under `--strict`: a thaw after the ROUND_END is out would leave an image complete).
            let provesOnDelta = hold.isFrozen && strict == nil && !request.proof.rereadsMemory && ledger != nil
                && box.capabilities.contains(.finalDeltaDigest)
            deltaProof = nil
            do {
                sent = try sendRound(firstChunk, layout: layout, scan: scan, box: box, sender: sender,
                                     ledger: ledger, firstRound: round == 0, frozen: hold.isFrozen, strict: strict, abort: { try self.abortCutover($0, hold: hold, check: false) },
                                     finalDigest: provesOnDelta ? { deltaProof = Self.ledgerDigest(ledger!, layout); self.timeline.mark(.digest); return deltaProof!.wire } : nil)
            } catch let broken as BrokenRound where isResumable(broken.error, box) {
                // Chunks the receiver committed are in the image; the others go
                // back to the tracker and the next scan sends them again.
                let committed = try resume(box, after: broken.error, lastAcked: box.lastAcked, nextRound: round)
                for chunk in broken.chunks where chunk.wireRound > committed {
                    tracker.requeue(chunk.scan)
                    // The receiver dropped what it had of these chunks: no delta may be based on them.
                    for range in chunk.scan.dirty { deltaCache?.drop(range.start..<range.end) }
                }
                scan = try scanNextRound(process, tracker, &layout, frozen: hold.isFrozen)
                continue
            } catch let broken as BrokenRound {
                throw broken.error
            }
            let roundEnd = MonotonicClock.seconds()
            updateStatus {
                $0.transferredBytes = box.sentBefore + box.channel.bytesSent
                $0.throughputBps = roundEnd > roundStart ? Double(sent.pageBytes) / (roundEnd - roundStart) : 0
                $0.wireBps = roundEnd > roundStart ? Double(sent.wireBytes) / (roundEnd - roundStart) : 0
            }
            updateStatus { $0.compression = sender.governor.description; $0.governed(sender.governor.snapshot) }
            updateStatus { $0.zeroBytes += sent.zeroPages * PageSize.bytes; $0.discardedBytes += sent.discardedPages * PageSize.bytes; $0.rounds = round + 1 }
            recorder.round(round, chunks: firstChunk...(UInt64(round + 1) &+ box.offset), start: roundStart, end: roundEnd, sent: sent,
                           compressionLevel: sender.governor.level, compression: sender.governor.description,
                           throttlePercent: hold.throttlePercent, frozen: hold.isFrozen)
            log("round \(round) [\(sender.governor.description)]: \(sent.pages) pages (\(sent.zeroPages) zero, \(sent.discardedPages) discarded) in \(Int((roundEnd - roundStart) * 1000)) ms (stream \(Int(sent.streamSeconds * 1000)) ms, commit \(Int(sent.ackSeconds * 1000)) ms)")
            if hold.isFrozen {
                deltaProofAck = sent.imageDigest
                timeline.mark(.finalRoundRecorded)
                break
            }
            if sent.aborted {
                // What the receiver committed of it is a pre-copy round now; all of it is examined again.
                if let abort = status.cutoverAborts.last {
                    policy.recordAbortedCutover(predictedMs: policy.expectedDowntimeMs, abortMs: abort.predictedMs)
                }
                tracker.requeue(scan)
                try checkStrictAttempts()
            }

            // Scan for the next round: the pending set the policy judges.
            let scanStart = MonotonicClock.seconds()
            let next = try scanNextRound(process, tracker, &layout)
            let now = MonotonicClock.seconds()
            let pending = Double(next.dirty.reduce(0) { $0 + $1.byteCount })
            let m = RoundMeasurement(
                round: round, pageBytesSent: Double(sent.pageBytes), seconds: sent.streamSeconds,
                pendingBytes: pending, dirtyWindowSeconds: now - lastScanAt,
                fixedSeconds: (now - scanStart) + (status.freezeMs ?? 0) / 1000, commitSeconds: sent.ackSeconds)
            lastScanAt = now
            policy.parameters = parameters
            var decision = policy.decide(after: m, elapsed: now - start)
            if shared.withLock({ $0.cutoverRequested }) { decision = .cutover(reason: .requested) }
            updateStatus {
                $0.remainingBytes = UInt64(pending)
                $0.dirtyRateBps = policy.dirtyRate
                $0.expectedDowntimeMs = policy.expectedDowntimeMs.isFinite ? policy.expectedDowntimeMs : nil
                $0.commitEstimateMs = policy.commitEstimateSeconds * 1000
                $0.throttlePercent = hold.throttlePercent
            }
            recorder.decided(decision, pendingBytes: UInt64(pending), dirtyRate: policy.dirtyRate,
                             expectedDowntimeMs: policy.expectedDowntimeMs.isFinite ? policy.expectedDowntimeMs : nil)
            round += 1
            switch decision {
            case .nextRound, .tighten, .measureCommit:
                if let reason = decision.tighteningReason { log(reason) }
                scan = next
            case .throttle(let percent):
                let first = hold.throttleMechanism == nil
                try hold.setThrottle(percent: percent)
                updateStatus {
                    $0.throttlePercent = percent
                    $0.throttleMechanism = hold.throttleMechanism
                    if first, let why = hold.throttleFallback { $0.warnings.append("throttling by SIGSTOP/SIGCONT: no cgroup to use (\(why))") }
                }
                log("auto-converge: throttling the target to \(percent)% (\(hold.throttleMechanism?.rawValue ?? "?"))")
                scan = next
            case .cutover(let reason):
                tracker.requeue(next)
                hold.stopThrottle()
                // The receiver applies the last round after acknowledging it;
                // let it finish before the clock of the downtime starts.
                do {
                    // Without keepalive there is no way to ask; the freeze just starts sooner.
                    if box.capabilities.contains(.keepalive) { try drain(box.channel) }
                } catch where isResumable(error, box) {
                    try resume(box, after: error, lastAcked: box.lastAcked, nextRound: round)
                }
                #if DEBUG
                testBeforeFreeze?()
                #endif
                freezeStart = MonotonicClock.seconds()
                let ns = try freeze(hold)
                recorder.froze(start: freezeStart)
                let finalScanStart = MonotonicClock.seconds()
                let timed = try timedScanNextRound(process, tracker, &layout, frozen: true)
                scan = timed.scan
                let finalScanMs = (MonotonicClock.seconds() - finalScanStart) * 1000
                timeline.mark(.finalScan)
                #if DEBUG
                if request.testHooks.dropFirstFinalDirtyPage { scan = scan.droppingFirstDirtyPage() }
                #endif
                updateStatus {
                    $0.state = .cutover
                    $0.stage = .frozen
                    $0.freezeMs = Double(ns) / 1e6
                    $0.finalScanMs = finalScanMs
                    $0.finalScanLayoutMs = timed.layoutSeconds * 1000
                    $0.finalScanWalkMs = Double(scan.stats.nanoseconds) / 1e6
                    $0.finalScanIoctls = scan.stats.ioctls
                    $0.cutoverReason = reason.description
                    $0.throttlePercent = 0
                    if reason.isForced { $0.warnings.append("forced cutover: \(reason)") }
                }
                log("cutover: \(reason)")
            }
        }
        // From the moment the hold froze the target, as the frozen window is.
        let downtime = (MonotonicClock.seconds() - (hold.frozenAt ?? freezeStart)) * 1000
        updateStatus { $0.downtimeMs = downtime; $0.rounds = round + 1; $0.remainingBytes = 0; $0.stage = .verifying }

        // The proof (ProofMode): the ledgers' sums, and/or the frozen memory re-read.
        let verifyStart = MonotonicClock.seconds()
        recorder.phase("verify", at: verifyStart)
        let (digest, wire, image): (MemoryDigest, WireDigest, WireDigest?)
        if let proof = deltaProof {
            // Proved with the final delta's commit: its last ROUND_ACK carried the image's digest.
            (digest, wire, image) = (proof.digest, proof.wire, deltaProofAck)
            updateStatus { $0.proof = request.proof.description }
        } else {
            (digest, wire, image) = try verificationRound(process, tracker, ledger, layout, box, round: round, verifyStart: verifyStart)
        }
        guard let image else { throw MigrationError.protocolViolation("final ROUND_ACK without a digest") }
        guard image == wire else { throw MigrationError.digestMismatch(sender: wire.hex, receiver: image.hex) }
        updateStatus {
            $0.digest = digest.hex
            $0.verifyMs = (MonotonicClock.seconds() - verifyStart) * 1000
            $0.transferredBytes = box.sentBefore + box.channel.bytesSent
        }
        timeline.mark(.proved)
        if let w = UnresidentFilePages.warning(
            pid: request.pid, mappings: process.registered, fileContent: process.fileContentRanges, scanner: tracker.scanner)
        {
            updateStatus { $0.warnings.append(w) }
            log(w)
        }
        timeline.mark(.unresidentChecked)
        if let step = request.afterProof {
            // The step's tools (CRIU) seize the source themselves (a task has one
            // tracer): memhaul lets go first, leaving it in a SIGSTOP group stop.
            try hold.handOver()
            updateStatus { $0.stage = .restoring }
            recorder.phase("restore")
            try step.run(AfterProofContext(channel: box.channel, pid: request.pid, migrationID: request.id,
                                           frozenSince: hold.frozenAt ?? freezeStart, update: { self.updateStatus($0) }))
            timeline.mark(.afterProof)
        }
        try? box.channel.send(.close(Close(reason: .complete)))
        timeline.mark(.closeSent)
    }

    /// The proof in its own round after the final delta (``ProofMode``): the ledgers' sums and/or
    /// the frozen memory re-read, then the verification round (LAYOUT, ROUND_END with the
    /// sender's digest, no pages); returns the digests and the receiver's.
    private func verificationRound(_ process: AttachedProcess, _ tracker: DirtyTracker, _ ledger: PageLedger?, _ layout: [RegionDescriptor],
                                   _ box: ChannelBox, round: Int, verifyStart: Double) throws -> (MemoryDigest, WireDigest, WireDigest?) {
        let digest: MemoryDigest
        if let ledger {
            digest = Self.ledgerDigest(ledger, layout).digest
            if request.proof.rereadsMemory {
                let memory = try ProcessDigest.compute(
                    pid: request.pid, regions: layout, scanner: tracker.scanner, fileContent: process.fileContentRanges, version: .v3)
                updateStatus { $0.fullProofMs = (MonotonicClock.seconds() - verifyStart) * 1000; $0.fullProofInFrozenWindow = true }
                try LedgerCheck.check(memory: memory, ledger: digest)
            }
            updateStatus { $0.proof = request.proof.description }
        } else {
            // Both sides re-read: the form the receiver accepted.
            digest = try ProcessDigest.compute(
                pid: request.pid, regions: layout, scanner: tracker.scanner, fileContent: process.fileContentRanges,
                version: box.capabilities.contains(.digestV2) ? .v2 : .v1)
            updateStatus {
                $0.proof = ProofMode.full.description
                $0.fullProofMs = (MonotonicClock.seconds() - verifyStart) * 1000
                $0.fullProofInFrozenWindow = true
                if request.proof != .full { $0.warnings.append("the receiver does not accept ledger-digest: the proof re-read memory and image (full)") }
            }
        }
        let wire = WireDigest(high: digest.high, low: digest.low)
        timeline.mark(.digest)
        var ack: RoundAck
        while true {
            let verifyRound = UInt64(round + 2) &+ box.offset
            do {
                try sendLayout(verifyRound, layout, box.channel)
                try box.channel.send(.roundEnd(RoundEnd(round: verifyRound, stats: RoundStats(), finalDigest: wire)))
                timeline.mark(.verifySent)
                ack = try awaitAck(verifyRound, box.channel, PeerDeadline(
                    "verification ROUND_ACK (digest) for round \(verifyRound), source frozen", seconds: request.deadlines.verification))
                break
            } catch where isResumable(error, box) {
                try resume(box, after: error, lastAcked: box.lastAcked, nextRound: round + 1)
            }
        }
        timeline.mark(.verifyAcked)
        return (digest, wire, ack.imageDigest)
    }

    /// The current connection, replaced when a migration resumes.
    final class ChannelBox {
        var channel: FrameChannel
        /// wire round = engine round + 1 + offset (the receiver's numbering survives a resume).
        var offset: UInt64 = 0
        /// Wire bytes of connections before this one.
        var sentBefore: UInt64 = 0
        /// Bytes of this connection up to the end of the last chunk the receiver
        /// acknowledged: what a break cannot take away.
        var committedMark: UInt64 = 0
        /// Wire round → bytes of this connection at its ROUND_END, for rounds not yet acknowledged.
        var chunkEnds: [UInt64: UInt64] = [:]
        /// Wire bytes sent after the last commit on connections that broke:
        /// what the receiver dropped, so what breaks cost.
        var lostBytes: UInt64 = 0
        /// The last wire round the receiver acknowledged (0: none).
        var lastAcked: UInt64 = 0
        /// What the receiver accepted in its first WELCOME; a resumed
        /// connection must accept the same.
        let capabilities: Capabilities
        init(_ channel: FrameChannel, capabilities: Capabilities) {
            self.channel = channel
            self.capabilities = capabilities
        }
    }

    /// A round whose connection broke: which chunks it had (some may be committed).
    struct BrokenRound: Error {
        var error: Error
        var chunks: [(wireRound: UInt64, scan: RoundScan)]
    }

    /// A broken connection, as opposed to a refusal by the receiver, with a
    /// receiver that accepted the resume capability.
    private func isResumable(_ error: Error, _ box: ChannelBox) -> Bool {
        if isCancelled || parameters.resumeTimeoutSeconds <= 0 || !box.capabilities.contains(.resume) { return false }
        return MigrationError.isConnectionLoss(error)
    }

    /// Reconnects with backoff until the receiver welcomes the migration again
    /// (it reopens the image at its last committed round) or
    /// `resumeTimeoutSeconds` pass. Sets the offset so that the next round is
    /// the one after the receiver's committed one, which it returns.
    @discardableResult
    private func resume(_ box: ChannelBox, after error: Error, lastAcked: UInt64, nextRound: Int) throws -> UInt64 {
        // An ERROR the receiver sent before the break means it refused: no resume.
        if let e = box.channel.peerErrorAfterFailure(seconds: 0.5) {
            throw MigrationError.peerError(code: e.code.rawValue, message: e.message)
        }
        let resumeStart = MonotonicClock.seconds()
        let lostBefore = box.lostBytes
        let brokenSent = box.channel.bytesSent
        let brokenEnds = box.chunkEnds
        box.sentBefore += brokenSent
        retire(box.channel)
        log("connection to \(request.destination) lost (\(error)); resuming from round \(lastAcked)")
        updateStatus { $0.resumes += 1 }
        let deadline = MonotonicClock.seconds() + parameters.resumeTimeoutSeconds
        var delay = 0.05
        var last: Error = error
        while MonotonicClock.seconds() < deadline {
            if isCancelled { throw MigrationError.cancelled }
            do {
                let (channel, committed, accepted) = try openChannel(resumeFrom: lastAcked)
                guard committed >= lastAcked else {
                    channel.close()
                    throw MigrationError.protocolViolation("receiver committed round \(committed) < acknowledged \(lastAcked)")
                }
                guard accepted == box.capabilities else {
                    channel.close()
                    throw MigrationError.protocolViolation(
                        "resumed WELCOME accepts capabilities 0x\(String(accepted.rawValue, radix: 16)), the first one 0x\(String(box.capabilities.rawValue, radix: 16))")
                }
                // Lost: what went out after the receiver's last commit (its
                // acknowledgement may not have reached us before the break).
                let mark = brokenEnds.filter { $0.key <= committed }.values.max() ?? 0
                box.lostBytes += brokenSent - min(max(mark, box.committedMark), brokenSent)
                updateStatus { $0.resentBytesAfterResume = box.lostBytes }
                box.channel = channel
                box.committedMark = 0
                box.chunkEnds = [:]
                box.offset = committed &- UInt64(nextRound)
                box.lastAcked = committed
                log("resumed: receiver at round \(committed)")
                recorder.resumed(started: resumeStart, committedChunk: committed, resentBytes: box.lostBytes - lostBefore, reason: error)
                return committed
            } catch MigrationError.peerError(let code, let message) where code != ErrorCode.migrationBusy.rawValue {
                throw MigrationError.peerError(code: code, message: message)
            } catch MigrationError.protocolViolation(let message) {
                // A receiver that answers wrongly does not get better by asking again.
                throw MigrationError.protocolViolation(message)
            } catch {
                last = error
            }
            sleep(seconds: delay)
            delay = min(delay * 2, 1)
        }
        throw MigrationError.resumeTimedOut(String(describing: last))
    }

    /// Round 0, retried on a fresh layout if a mapping changed under the scan.
    private func scanFirstRound(_ process: AttachedProcess, _ tracker: DirtyTracker, _ layout: inout [RegionDescriptor], frozen: Bool) throws -> RoundScan {
        for attempt in 1... {
            do {
                return try tracker.initialRound(ranges: Self.ranges(layout), fileContent: process.fileContentRanges, frozen: frozen)
            } catch PagemapScanError.notRegisteredForAsyncWP(let range, _) where attempt < 8 {
                log("layout changed under the first scan at \(range); rescanning")
                _ = try process.refreshLayout()
                layout = Self.regions(of: process)
            }
        }
        fatalError("unreachable")
    }

    /// Re-reads the layout (registering new mappings) and scans the next round.
    ///
    /// A mapping can change between the layout refresh and the scan (mremap
    /// moves drop the uffd registration, munmap+mmap reuse addresses); the scan
    /// then fails with EPERM on the unregistered range. The tracker has put
    /// everything that scan may have re-protected back into pending, so the
    /// round is simply retried on a fresh layout.
    private func scanNextRound(_ process: AttachedProcess, _ tracker: DirtyTracker, _ layout: inout [RegionDescriptor], frozen: Bool = false) throws -> RoundScan {
        try timedScanNextRound(process, tracker, &layout, frozen: frozen).scan
    }

    /// ``scanNextRound(_:_:_:frozen:)``, with the seconds its layout re-reads took (every attempt).
    private func timedScanNextRound(_ process: AttachedProcess, _ tracker: DirtyTracker, _ layout: inout [RegionDescriptor], frozen: Bool)
        throws -> (scan: RoundScan, layoutSeconds: Double)
    {
        var removed: [AddressRange] = []
        var layoutSeconds = 0.0
        for attempt in 1... {
            let layoutStart = MonotonicClock.seconds()
            let delta = try process.refreshLayout()
            layout = Self.regions(of: process)
            layoutSeconds += MonotonicClock.seconds() - layoutStart
            removed += delta.removed
            do {
                let scan = try request.finalScan.scan(
                    tracker, frozen: frozen, ranges: Self.ranges(layout), removed: removed, process: process)
                return (scan, layoutSeconds)
            } catch PagemapScanError.notRegisteredForAsyncWP(let range, _) where attempt < 8 {
                log("layout changed under the scan at \(range); rescanning")
            }
        }
        fatalError("unreachable")
    }

    struct SentRound {
        var pages: UInt64
        var zeroPages: UInt64
        var discardedPages: UInt64
        var pageBytes: UInt64
        var wireBytes: UInt64
        /// Sending the round's frames.
        var streamSeconds: Double
        /// ROUND_END sent → ROUND_ACK received (the receiver's commit).
        var ackSeconds: Double
        /// `--strict` aborted the cutover during this (final) round: the target runs again.
        var aborted = false
        /// The receiver's digest in the last chunk's ROUND_ACK, when its ROUND_END carried the proof.
        var imageDigest: WireDigest?
    }

    /// The guard of a strict final round, nil when the round is not one.
    private func strictCutover(_ hold: TargetHold, scan: RoundScan, policy: ConvergencePolicy) -> StrictCutover? {
        let p = parameters
        guard p.strict, p.maxRounds > 0, let frozenAt = hold.frozenAt else { return nil }
        var strict = StrictCutover(limitMs: p.downtimeLimitMs, frozenAt: frozenAt, deltaBytes: Double(scan.dirty.pageCount) * Double(PageSize.bytes),
                                   throughput: policy.throughput,
                                   commitSeconds: policy.commitLatency.estimateSeconds(forBytes: Double(scan.dirty.pageCount) * Double(PageSize.bytes)))
        #if DEBUG
        testStrictCutover?(&strict)
        #endif
        return strict
    }

    /// Freezes the target and starts the frozen window's timeline; returns the nanoseconds the freeze took.
    private func freeze(_ hold: TargetHold) throws -> UInt64 {
        do {
            let ns = try hold.freeze()
            timeline.start(frozenAt: hold.frozenAt!)
            timeline.mark(.frozen)
            return ns
        } catch {
            // Half-frozen: the release still ends the window.
            if let frozenAt = hold.frozenAt { timeline.start(frozenAt: frozenAt) }
            throw error
        }
    }

    /// Thaws the target (still tracked) and records the abort; pre-copy goes on.
    /// With `check`, fails the migration once the attempts are used up.
    private func abortCutover(_ abort: CutoverAbort, hold: TargetHold, check: Bool = true) throws {
        try hold.thaw()
        updateStatus {
            $0.state = .active
            $0.abortedCutovers += 1
            $0.cutoverAborts.append(abort)
            $0.warnings.append(abort.description)
        }
        log("migration \(request.id): \(abort.description)")
        #if DEBUG
        testAfterCutoverAbort?()
        #endif
        if check { try checkStrictAttempts() }
    }

    private func checkStrictAttempts() throws {
        let s = status
        guard s.abortedCutovers >= parameters.strictAttempts else { return }
        let detail = s.cutoverAborts.map { "\(Int($0.predictedMs.rounded())) ms" }.joined(separator: ", ")
        throw MigrationError.downtimeLimitUnmet(attempts: s.abortedCutovers, limitMs: parameters.downtimeLimitMs, detail: "predicted \(detail)")
    }

    /// One engine round: its pages in commit chunks (wire rounds `first`,
    /// `first+1`, …; discards go with the first), each LAYOUT, DISCARD/ZERO/
    /// PAGE_BATCH frames and ROUND_END, sent back to back; then the acks, in
    /// order. Advances `box.offset` by the extra chunks. A broken connection
    /// is thrown as ``BrokenRound`` with the chunks, so the caller requeues
    /// only what the receiver did not commit.
    private func sendRound(
        _ first: UInt64, layout: [RegionDescriptor], scan: RoundScan, box: ChannelBox, sender: RoundSender,
        ledger: PageLedger?, firstRound: Bool = false, frozen: Bool,
        strict: StrictCutover? = nil, abort: (CutoverAbort) throws -> Void = { _ in },
        finalDigest: (() -> WireDigest)? = nil
    ) throws -> SentRound {
        // `auto` sends raw until an ack brings the receiver's load: the migration's first chunk is small so one comes early.
        let firstChunk = firstRound && sender.governor.adaptive ? CompressionGovernor.firstCommitChunkBytes : nil
        let chunkBytes = frozen ? max(parameters.commitChunkBytes, parameters.frozenCommitChunkBytes) : parameters.commitChunkBytes
        let chunks = scan.commitChunks(maxBytes: chunkBytes, firstMaxBytes: firstChunk).enumerated()
            .map { (wireRound: first + UInt64($0.offset), scan: $0.element) }
        let channel = box.channel
        let before = channel.bytesSent
        var total = SentRound(pages: 0, zeroPages: 0, discardedPages: 0, pageBytes: 0, wireBytes: 0, streamSeconds: 0, ackSeconds: 0)
        let streamStart = MonotonicClock.seconds()
        var acked = 0
        var sent = 0  // chunks whose ROUND_END is out
        var aborted = false
        var abortError: Error?
        var ackError: Error?
        func fire(_ a: CutoverAbort) {
            aborted = true
            do { try abort(a) } catch { abortError = error }
        }
        func ackNext() throws {
            let round = chunks[acked].wireRound
            if let strict, !aborted {
                // The commit may take longer than the limit allows: thaw at the limit, then keep waiting.
                let wait = strict.commitDeadline - MonotonicClock.seconds()
                if try wait <= 0 || !(channel.stream.waitReadable(timeout: .milliseconds(Int64((wait * 1000).rounded(.up))))) {
                    fire(CutoverAbort(phase: .commit, frozenMs: (MonotonicClock.seconds() - strict.frozenAt) * 1000,
                                      predictedMs: max(strict.limitMs, (MonotonicClock.seconds() - strict.frozenAt) * 1000) + strict.commitSeconds * 1000,
                                      limitMs: strict.limitMs, remainingBytes: 0))
                    if let abortError { throw abortError }
                }
            }
            // From when the wait starts: chunks still streaming out do not use up the limit.
            let deadline = frozen && !aborted
                ? PeerDeadline("ROUND_ACK for round \(round) (final delta, source frozen)", seconds: request.deadlines.frozenRoundAck)
                : PeerDeadline("ROUND_ACK for round \(round)", seconds: request.deadlines.roundAck)
            let ack = try awaitAck(round, channel, deadline)
            if round == chunks.last!.wireRound { total.imageDigest = ack.imageDigest }
            if let load = ack.load {
                guard box.capabilities.contains(.receiverLoad) else {
                    throw MigrationError.protocolViolation("ROUND_ACK \(round) carries a load without the receiver-load capability")
                }
                sender.governor.recordReceiver(load)
            }
            box.lastAcked = chunks[acked].wireRound
            box.committedMark = box.chunkEnds.removeValue(forKey: chunks[acked].wireRound) ?? box.committedMark
            acked += 1
        }
        do {
            var paceStart = streamStart
            var paced = 0
            for chunk in chunks {
                if aborted { break }  // the rest goes in the next round, the target running
                let chunkStart = channel.bytesSent
                try sendLayout(chunk.wireRound, layout, channel)
                // What the receiver drops at this round's commit (a no-op while the layout stays).
                ledger?.restrict(to: Self.ranges(layout).map { $0.start..<$0.end })
                sender.deltaCache?.restrict(to: Self.ranges(layout).map { $0.start..<$0.end })
                let totals = try sender.send(
                    round: chunk.wireRound, dirty: chunk.scan.dirty, discarded: chunk.scan.discarded, channel: channel, ledger: ledger,
                    firstRound: firstRound, lastRound: frozen && strict == nil,
                    pace: { bytes in
                        // Acks of earlier chunks that are in, now rather than after this
                        // chunk: their receiver load reaches the governor a chunk sooner.
                        // (`--strict` keeps collecting them between chunks: its commit deadline.)
                        if strict == nil, ackError == nil, acked < sent {
                            do { while acked < sent, try channel.stream.waitReadable(timeout: .zero) { try ackNext() } } catch { ackError = error }
                        }
                        guard let cap = self.parameters.maxBandwidth, cap > 0 else { return }
                        paced += bytes
                        let due = Double(paced) / cap
                        let elapsed = MonotonicClock.seconds() - paceStart
                        if due > elapsed { self.sleep(seconds: min(1.0, due - elapsed)) }
                        if paced > 64 << 20 { paceStart = MonotonicClock.seconds(); paced = 0 }
                    },
                    cancelled: { self.isCancelled },
                    stop: {
                        if aborted { return true }
                        guard let strict else { return false }
                        let now = MonotonicClock.seconds()
                        guard let a = strict.check(.streaming, now: now, wireSent: Double(channel.bytesSent - before),
                                                   streamSeconds: now - streamStart) else { return false }
                        fire(a)
                        return true
                    })
                if let abortError { throw abortError }
                if let ackError { throw ackError }
                let stats = RoundStats(
                    pages: totals.pages, zeroPages: totals.zeroPages, discardedPages: totals.discardedPages,
                    batches: totals.batches, wireBytes: channel.bytesSent - chunkStart)
                // The last chunk's ROUND_END may carry the proof: its pages are in the ledger now.
                let digest = chunk.wireRound == chunks.last!.wireRound ? finalDigest?() : nil
                try channel.send(.roundEnd(RoundEnd(round: chunk.wireRound, stats: stats, finalDigest: digest)))
                box.chunkEnds[chunk.wireRound] = channel.bytesSent
                sent += 1
                // Per chunk, so the counters move within a round (several GiB take a while).
                let chunkBytes = chunk.scan.dirty.reduce(0) { $0 + $1.byteCount }
                let seconds = MonotonicClock.seconds() - streamStart
                updateStatus {
                    $0.pageBytes += totals.pageBytes
                    $0.deltaPages += totals.delta.pages
                    $0.deltaSavedBytes += totals.delta.savedBytes
                    $0.deltaCacheHits += totals.delta.hits
                    $0.deltaCacheMisses += totals.delta.misses
                    $0.roundSentBytes += chunkBytes
                    $0.remainingBytes = $0.roundTotalBytes - min($0.roundTotalBytes, $0.roundSentBytes)
                    $0.transferredBytes = box.sentBefore + channel.bytesSent
                    $0.compression = sender.governor.description
                    $0.governed(sender.governor.snapshot)
                    if seconds > 0 {
                        $0.throughputBps = Double(total.pageBytes + totals.pageBytes) / seconds
                        $0.wireBps = Double(channel.bytesSent - before) / seconds
                    }
                }
                total.pages += totals.pages
                total.zeroPages += totals.zeroPages
                total.discardedPages += totals.discardedPages
                total.pageBytes += totals.pageBytes
                // Collect acks that have arrived already, so none pile up.
                while acked < sent, try channel.stream.waitReadable(timeout: .zero) { try ackNext() }
            }
            let ackStart = MonotonicClock.seconds()
            if frozen { timeline.mark(.finalDeltaSent, at: ackStart) }
            while acked < sent { try ackNext() }
            total.streamSeconds = ackStart - streamStart
            total.ackSeconds = MonotonicClock.seconds() - ackStart
            if frozen { timeline.mark(.finalDeltaAcked, at: ackStart + total.ackSeconds) }
        } catch {
            throw BrokenRound(error: error, chunks: chunks)
        }
        total.wireBytes = channel.bytesSent - before
        total.aborted = aborted
        box.offset &+= UInt64(max(sent, 1) - 1)  // wire rounds of chunks never sent are not used
        return total
    }

    private func sendLayout(_ round: UInt64, _ layout: [RegionDescriptor], _ channel: FrameChannel) throws {
        let chunks = layout.chunks(of: 1024)
        if chunks.isEmpty { try channel.send(.layout(Layout(round: round, regions: []))) }
        for (i, chunk) in chunks.enumerated() {
            try channel.send(.layout(Layout(round: round, continued: i < chunks.count - 1, regions: Array(chunk))))
        }
    }

    /// KEEPALIVE round trip: the receiver answers between frames, so the reply
    /// means it has finished with everything sent before (including applying).
    private func drain(_ channel: FrameChannel) throws {
        let nonce = UInt64.random(in: 1...UInt64.max)
        try channel.send(.keepalive(Keepalive(nonce: nonce)))
        let deadline = PeerDeadline("KEEPALIVE reply before the cutover", seconds: request.deadlines.keepaliveDrain)
        while true {
            switch try channel.receive(by: deadline) {
            case .keepalive(let k) where k.isReply && k.nonce == nonce:
                return
            case .keepalive(let k) where !k.isReply:
                try channel.send(.keepalive(Keepalive(nonce: k.nonce, isReply: true)))
            case .error(let e):
                throw MigrationError.peerError(code: e.code.rawValue, message: e.message)
            case let other:
                throw MigrationError.protocolViolation("expected KEEPALIVE reply, got \(other.frameType)")
            }
        }
    }

    /// Waits for the ROUND_ACK of `round`, answering the receiver's
    /// keepalives meanwhile; they do not extend `deadline`.
    private func awaitAck(_ round: UInt64, _ channel: FrameChannel, _ deadline: PeerDeadline) throws -> RoundAck {
        while true {
            switch try channel.receive(by: deadline) {
            case .roundAck(let ack) where ack.round == round:
                return ack
            case .keepalive(let k) where !k.isReply:
                try channel.send(.keepalive(Keepalive(nonce: k.nonce, isReply: true)))
            case .keepalive:
                continue
            case .error(let e):
                throw MigrationError.peerError(code: e.code.rawValue, message: e.message)
            case let other:
                throw MigrationError.protocolViolation("expected ROUND_ACK \(round), got \(other.frameType)")
            }
        }
    }

    /// The ledger's digest over `layout` (what the receiver drops at the commit dropped here too).
    static func ledgerDigest(_ ledger: PageLedger, _ layout: [RegionDescriptor]) -> (digest: MemoryDigest, wire: WireDigest) {
        let ranges = Self.ranges(layout).map { $0.start..<$0.end }
        ledger.restrict(to: ranges)
        let digest = ledger.digest(layout: ranges)
        return (digest, WireDigest(high: digest.high, low: digest.low))
    }

    static func ranges(_ layout: [RegionDescriptor]) -> [AddressRange] {
        layout.map { AddressRange(start: $0.start, end: $0.end) }
    }

    /// The tracked mappings as wire regions, ascending.
    static func regions(of process: AttachedProcess) -> [RegionDescriptor] {
        process.registered.sorted { $0.start < $1.start }.map(RegionDescriptor.init)
    }
}

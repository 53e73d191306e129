#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulSession
import MemhaulCompression
import MemhaulDigest
import MemhaulImage
import MemhaulSystem
import MemhaulTLS
import MemhaulWire

/// One incoming migration on the receiver: `Protocol/wire.md` in, image store out.
///
/// Nothing from the peer is trusted: frames are decoded by the bounded codec,
/// payloads are decompressed into a fixed 4 MiB buffer against the declared
/// size, checksums are verified (on the ``StorageStage`` thread, which also
/// stores pages), and the image store refuses addresses outside
/// the round's declared layout. Any error aborts the open round (the last
/// committed round stays intact), is sent to the peer as ERROR, and is logged.
public final class ReceiverSession: @unchecked Sendable {  // one thread runs it; `info` is behind a lock
    public struct Info: Sendable {
        public var migration: String?
        public var peer: String
        public var state: String = "handshake"
        public var round: UInt64 = 0
        public var committedRound: UInt32?
        public var pages: UInt64 = 0
        public var bytes: UInt64 = 0
        public var image: String?
        public var error: String?
        /// The error's code: the wire ERROR code sent (snake_case), or `connection_lost`.
        public var errorCode: String?
        /// The sender's verified certificate (nil with `--insecure`).
        public var sender: ImageOwner?
        /// What the image store's last commit did (pages, journal bytes, step
        /// times); with a deferred apply, `ImageStore.lastCommit` completes it.
        public var lastCommit: CommitInfo?
        /// With `--restore criu`: the restored process's PID once it runs on this host.
        public var restoredPID: Int32?
    }

    /// Calls from the agent, so two connections cannot write one image.
    public struct Registry: Sendable {
        public var claim: @Sendable (String) -> Bool
        public var release: @Sendable (String) -> Void
        /// Ends the connection of the session holding `id` (a resuming sender
        /// replaces a connection the receiver has not seen break yet), only if
        /// that session's sender has the fingerprint given (nil: unauthenticated):
        /// a sender never cuts another sender's connection.
        public var preempt: @Sendable (_ id: String, _ senderFingerprint: String?) -> Void
        public init(claim: @escaping @Sendable (String) -> Bool, release: @escaping @Sendable (String) -> Void,
                    preempt: @escaping @Sendable (_ id: String, _ senderFingerprint: String?) -> Void = { _, _ in }) {
            self.claim = claim
            self.release = release
            self.preempt = preempt
        }
    }

    /// Calls to the agent's connection watchdog: whether the session is
    /// waiting for the peer (a deadline runs) or working (none), and when the
    /// connection is about to close.
    public struct Watch: Sendable {
        public var awaitingFrame: @Sendable () -> Void
        public var working: @Sendable () -> Void
        public var ended: @Sendable () -> Void
        /// Whether the connection is over (peer hung up, or cut): long work stops.
        public var peerGone: @Sendable () -> Bool
        public init(awaitingFrame: @escaping @Sendable () -> Void = {}, working: @escaping @Sendable () -> Void = {},
                    ended: @escaping @Sendable () -> Void = {}, peerGone: @escaping @Sendable () -> Bool = { false }) {
            self.awaitingFrame = awaitingFrame
            self.working = working
            self.ended = ended
            self.peerGone = peerGone
        }
    }

    private let channel: FrameChannel
    private let imagesRoot: String
    private let registry: Registry
    private let watch: Watch
    /// Who is sending: the verified peer certificate (nil with `--insecure`).
    public let sender: ImageOwner?
    /// Which sender may write which migration ids; nil = any sender may start
    /// a migration (each image stays bound to the sender that created it).
    private let authorization: ReceiverAuthorization?
    private let log: @Sendable (String) -> Void
    /// Restores processes from complete images (capability criu-restore); nil: not offered.
    private let restore: RestoreService?
    /// HELLO and WELCOME agreed on criu-restore.
    private var restoreAgreed = false
    private var restoreFiles: RestoreFileWriter?
    /// The complete image's region files going into the page cache for the restore.
    private var readahead: ImageReadahead?
    private let infoLock = NSLock()
    private var _info: Info
    /// `report.json` in the image directory.
    private let recorder = ReceiverReportRecorder()
    /// What this connection may make the receiver hold.
    private let limits: ReceiverLimits
    /// The digest form of the verification round: v2 when the sender asked for it (capability `digestV2`).
    private var digestVersion: DigestVersion = .v1
    /// HELLO and WELCOME agreed on page-delta: PAGE_BATCH encoding 2 is allowed.
    private var deltaAgreed = false
    /// The incremental proof's ledger, when the sender asked for it (capability `ledgerDigest`).
    private var ledger: ReceiverLedger?
    /// Non-final ROUND_ACKs carry this side's load (capability `receiverLoad`).
    private var reportsLoad = false
    /// The final round may carry the last pages (capabilities `finalDeltaDigest` and `ledgerDigest`).
    private var finalDeltaProved = false
    /// Set by ``abortConnection()``: long work stops at its next check.
    private let cancelLock = NSLock()
    private var _cancelled = false
    /// The socket under the stream, to cut it from another thread (preemption).

    public var info: Info { infoLock.withLock { _info } }
    /// The agent's counters this session adds to.
    private let counters: ReceiverCounters
    private let testHooks: ReceiverTestHooks
    private func setInfo(_ body: (inout Info) -> Void) { infoLock.withLock { body(&_info) } }

    /// The sender's identity comes from the stream: a ``TLSStream``'s verified
    /// peer certificate; a plain stream (`--insecure`) has none.
    public init(stream: ByteStream, imagesRoot: String, registry: Registry, watch: Watch = Watch(),
                authorization: ReceiverAuthorization? = nil, limits: ReceiverLimits = ReceiverLimits(),
                restore: RestoreService? = nil, counters: ReceiverCounters = ReceiverCounters(),
                testHooks: ReceiverTestHooks = ReceiverTestHooks(), log: @escaping @Sendable (String) -> Void) {
        self.counters = counters
        self.testHooks = testHooks
        self.limits = limits
        self.restore = restore
        channel = FrameChannel(stream: stream)
        self.imagesRoot = imagesRoot
        self.registry = registry
        self.watch = watch
        self.authorization = authorization
        self.log = log
        sender = stream.peerIdentity.map(ImageOwner.init(peer:))
        _info = Info(peer: stream.peerDescription, sender: sender)
    }

    /// Cuts the connection (`shutdown(2)` on the socket, safe from any thread):
    /// the session's next read fails, it aborts its open round and releases the image.
    public func abortConnection() {
        cancelLock.withLock { _cancelled = true }
        channel.stream.abort()
    }

    /// Whether long work (the digest) should stop: the connection was cut or
    /// the peer hung up. Asked between chunks.
    private func connectionGone() -> Bool {
        cancelLock.withLock { _cancelled } || watch.peerGone()
    }

    /// A failure to report to the peer with a wire error code.
    struct Refusal: Error, CustomStringConvertible {
        var code: ErrorCode
        var description: String
        /// A broken connection, not a refusal: the image stays open for a resume.
        var connectionLost = false
        /// What the log says instead of `description`, when the peer must not
        /// learn it (another sender's identity).
        var logDetail: String? = nil
        /// The peer went away while the receiver worked; the work was stopped.
        var aborted = false
    }

    /// Serves the connection until CLOSE, an error or end of stream.
    public func run() {
        var store: ImageStore?
        var claimed: String?
        defer {
            // Before the claim goes: a resuming connection continues this report.
            if let store, let problem = recorder.finish(directory: store.directory, state: info.state, bytesReceived: channel.bytesReceived,
                                                         restoredPID: info.restoredPID) {
                log("receiver: migration \(info.migration ?? "?"): \(problem)")
            }
            if let claimed { registry.release(claimed) }
            store?.close()
            watch.ended()
            channel.close()
        }
        do {
            try channel.sendPreamble()
            store = try handshake(&claimed)
            try serve(store!)
            setInfo { $0.state = $0.state == "complete" || $0.state == "running" ? $0.state : "closed" }
        } catch {
            let refusal = Self.refusal(for: error)
            recorder.failed(code: refusal.code, message: refusal.description)
            store?.abortRound()
            watch.working()  // the linger below has its own bound
            if !refusal.connectionLost && (refusal.code != .cancelled || store == nil) {
                try? channel.send(.error(ErrorMessage(code: refusal.code, message: String(refusal.description.utf8.prefix(1000))!)))
                channel.lingerAfterError()
            }
            // A complete image stays complete: what the peer does after the final
            // acknowledgement (an ERROR, say) cannot undo a verified migration.
            if let store, store.state == .inProgress, !refusal.connectionLost,
               refusal.code == .cancelled || refusal.code == .digestMismatch {
                try? store.markFailed(reason: refusal.description)
            }
            if !refusal.connectionLost { counters.refused(RefusalReason(code: refusal.code)) }
            setInfo {
                $0.state = refusal.aborted ? "aborted" : refusal.connectionLost ? "disconnected" : "failed"
                $0.error = refusal.description
                $0.errorCode = refusal.connectionLost ? "connection_lost" : refusal.code.description.replacingOccurrences(of: "-", with: "_")
                $0.committedRound = store?.committedRound
            }
            log("receiver: migration \(info.migration ?? "?") from \(info.peer): \(refusal.logDetail ?? refusal.description)")
        }
    }

    /// What this receiver supports, and accepts when a HELLO offers it:
    /// resume included (a sender uses only what WELCOME accepts).
    static let capabilities: Capabilities = [.zstd, .keepalive, .resume, .digestV2, .ledgerDigest, .pageDelta, .receiverLoad, .finalDeltaDigest]

    private func handshake(_ claimed: inout String?) throws -> ImageStore {
        guard case .hello(let hello) = try channel.receive() else {
            throw Refusal(code: .unexpectedMessage, description: "expected HELLO")
        }
        watch.working()
        let id = hello.migrationID
        setInfo { $0.migration = id }
        let directory = try ImageStore.directory(root: imagesRoot, migrationID: id)
        // Authorisation first, before anything touches the image or another
        // connection: the policy, then the owner of an existing image.
        try checkPolicy(id)
        try checkOwner(id, directory)
        // The preamble's major was checked on arrival; HELLO must repeat it.
        guard hello.version.major == WireVersion.current.major else {
            throw Refusal(code: .badHello, description: "HELLO version \(hello.version) differs from the preamble's major \(WireVersion.current.major)")
        }
        guard hello.pageSize == WireLimits.default.pageSize else {
            throw Refusal(code: .pageSizeMismatch, description: "page size \(hello.pageSize) is not \(WireLimits.default.pageSize)")
        }
        var claimedNow = registry.claim(id)
        if !claimedNow && hello.resumeFromRound != nil {
            // A resuming sender: the old connection is dead even if we have not
            // noticed yet. Cut it (only if it is this sender's) and wait for its
            // session to let the image go.
            registry.preempt(id, sender?.fingerprint)
            for _ in 0..<200 where !claimedNow {
                usleep(25_000)
                claimedNow = registry.claim(id)
            }
        }
        guard claimedNow else {
            throw Refusal(code: .migrationBusy, description: "migration \(id) is already being received")
        }
        claimed = id
        // Again under the claim: nobody can be creating the image now, so an
        // existing image has its owner record.
        try checkOwner(id, directory)
        let store: ImageStore
        if FileManager.default.fileExists(atPath: directory) {
            guard hello.resumeFromRound != nil else {
                throw Refusal(code: .badHello, description: "an image for migration \(id) already exists; use a new migration id")
            }
            store = try ImageStore.open(directory: directory)
            guard store.state != .complete && store.state != .failed else {
                let state = store.state
                store.close()
                throw Refusal(code: .resumeRejected, description: "image for migration \(id) is \(state); it cannot resume")
            }
            log("receiver: migration \(id) resumes at committed round \(store.committedRound.map(String.init) ?? "none") (sender saw \(hello.resumeFromRound ?? 0))")
        } else {
            // Nothing to resume: creating a fresh image would let the sender
            // carry on from a round the receiver never had (wire.md, resume-rejected).
            guard hello.resumeFromRound == nil else {
                throw Refusal(code: .resumeRejected, description: "no image for migration \(id) to resume; nothing was created")
            }
            store = try createImage(directory: directory, id: id)
        }
        store.gapFillBytes = limits.maxFilledGapBytes
        setInfo { $0.image = directory; $0.committedRound = store.committedRound; $0.state = "receiving" }
        recorder.opened(migration: id, directory: directory, peer: info.peer, resumeFrom: hello.resumeFromRound,
                        committedChunk: store.committedRound, bytesReceived: channel.bytesReceived)
        let offered = restore == nil ? Self.capabilities : Self.capabilities.union(RestoreService.capabilities)
        let agreed = hello.capabilities.intersection(offered.subtracting(testHooks.withheldCapabilities))
        restoreAgreed = agreed.contains(.criuRestore)
        digestVersion = agreed.contains(.digestV2) ? .v2 : .v1
        deltaAgreed = agreed.contains(.pageDelta)
        reportsLoad = agreed.contains(.receiverLoad)
        finalDeltaProved = agreed.isSuperset(of: [.finalDeltaDigest, .ledgerDigest])
        try channel.send(.welcome(Welcome(capabilities: agreed, lastCommittedRound: store.committedRound.map(UInt64.init))))
        log("receiver: migration \(id) from \(info.peer) (\(hello.senderName), \(sender.map { "\($0)" } ?? "unauthenticated")) → \(directory)")
        if agreed.contains(.ledgerDigest) {
            let l = ReceiverLedger(limits: limits)
            // A reopened image: its ledger from its content (O(image), before any round).
            if store.committedRound != nil { try l.rebuild(from: store, isCancelled: connectionGone) }
            ledger = l
        }
        return store
    }

    /// A new image, within the sender's image quota (`--max-images-per-sender`).
    private func createImage(directory: String, id: String) throws -> ImageStore {
        try ReceiverBudget.creation.withLock {
            try ReceiverBudget.checkImageCount(root: imagesRoot, sender: sender, limit: limits.maxImagesPerSender)
            return try ImageStore.create(directory: directory, migrationID: id, owner: sender)
        }
    }

    /// With a policy, the sender must have a rule allowing `id`.
    private func checkPolicy(_ id: String) throws {
        guard let authorization else { return }
        let policy = authorization.current
        guard let sender else {
            throw Refusal(code: .unauthorized, description: "migration \(id) refused: the receiver authorises senders by certificate and this connection has none")
        }
        guard policy.allows(sender, migrationID: id) else {
            throw Refusal(
                code: .unauthorized, description: "sender \(sender) is not authorised for migration \(id)",
                logDetail: "unauthorized: no rule of \(policy.source) allows sender \(sender) to write migration \(id); nothing created")
        }
    }

    /// An existing image accepts only the sender that created it (its owner
    /// record). The image is only read here, never opened or changed.
    private func checkOwner(_ id: String, _ directory: String) throws {
        guard FileManager.default.fileExists(atPath: directory) else { return }
        let owner: ImageOwner?
        do {
            owner = try ImageStore.owner(directory: directory, migrationID: id)
        } catch {
            throw Refusal(code: .storageFailure, description: "owner record of migration \(id) unreadable: \(error)")
        }
        switch (owner, sender) {
        case (nil, nil):
            return  // made and continued without TLS: nothing to bind to
        case (let owner?, let sender?) where owner.sameSender(as: sender):
            return
        case (let owner?, let sender?):
            throw Refusal(
                code: .unauthorized, description: "migration \(id) belongs to another sender; \(sender) may not write it",
                logDetail: "unauthorized: sender \(sender) is not the owner \(owner) of migration \(id); image left untouched")
        case (let owner?, nil):
            throw Refusal(
                code: .unauthorized, description: "migration \(id) belongs to an authenticated sender; an unauthenticated one may not write it",
                logDetail: "unauthorized: an unauthenticated sender may not write migration \(id) of \(owner); image left untouched")
        case (nil, let sender?):
            throw Refusal(
                code: .unauthorized, description: "migration \(id) has no owner record (made without TLS); \(sender) may not write it",
                logDetail: "unauthorized: migration \(id) has no owner record (made without TLS, or by an older memhaul); refused \(sender); image left untouched")
        }
    }

    private func serve(_ store: ImageStore) throws {
        // Decompress, checksum and storage run on the stage's thread; this one reads and decrypts.
        let stage = StorageStage(store: store, ledger: ledger, beforeStoringBatch: testHooks.beforeStoringBatch)
        defer {
            stage.stop()
            endReadahead()
            // Where the stage's time went (the receiver's usual bottleneck on a disk).
            let p = stage.phaseNanoseconds
            log("receiver: migration \(info.migration ?? "?"): storage stage busy \(stage.busyNanoseconds / 1_000_000) ms: checksum \(p.checksum / 1_000_000) ms, "
                + "writes \(p.write / 1_000_000) ms, ledger \(p.ledger / 1_000_000) ms; \(store.writebackDecision)")
        }
        do {
            try serveFrames(store, stage)
        } catch {
            // The stage's work came from earlier frames: its error comes first,
            // as it would if this thread had stored the pages itself.
            try stage.drain()
            throw error
        }
    }

    private func serveFrames(_ store: ImageStore, _ stage: StorageStage) throws {
        var pendingLayout: [ImageRegion] = []
        var layoutRound: UInt64?
        var openRound: UInt64?
        var counts = RoundStats()
        var budget = ReceiverBudget(limits: limits)
        var loadMeter = ReceiverLoadMeter()
        while true {
            // Never wait for the peer with work in flight: a peer that waits for
            // our answer (an ERROR for a bad batch) would wait forever.
            if stage.needsDrain, try !channel.frameReadyWithoutWaiting() { try stage.drain() }
            watch.awaitingFrame()
            // Page bytes go from the stream straight into a slot of the stage (no copy).
            var slot: StorageStage.Slot?
            let received: FrameChannel.Received
            do {
                received = try channel.receive(pageBytesInto: { _ in
                    slot = try stage.reserveSlot()
                    return slot!.buffer
                })
            } catch {
                if let slot { stage.release(slot) }
                throw error
            }
            watch.working()
            let message: Message
            switch received {
            case .message(let m):
                message = m
            case .pageBatch(let header):
                let reserve: AddressRange?
                do {
                    try expect(openRound, header.round)
                    if header.encoding == .delta, !deltaAgreed {
                        throw Refusal(code: .unexpectedMessage, description: "delta page batch without the page-delta capability")
                    }
                    // A dense batch with gaps is reserved over its span where the budget has room for it.
                    let span = store.reservesInPlace ? StorageStage.reservation(of: header) : nil
                    let reserved = try budget.addPages(Int(header.pageCount), round: header.round, pageSize: UInt64(WireLimits.default.pageSize), reserving: span)
                    reserve = reserved ? span : nil
                } catch {
                    stage.release(slot!)
                    throw error
                }
                try stage.submit(header, in: slot!, reserving: reserve)
                counts.pages += UInt64(header.pageCount)
                counts.batches += 1
                setInfo { $0.pages += UInt64(header.pageCount); $0.bytes = channel.bytesReceived }
                continue
            }
            switch message {
            case .layout(let layout):
                guard openRound == nil else { throw Refusal(code: .unexpectedMessage, description: "LAYOUT inside round \(openRound!)") }
                if let r = layoutRound, r != layout.round { throw Refusal(code: .roundMismatch, description: "LAYOUT for round \(layout.round) while round \(r) is being declared") }
                layoutRound = layout.round
                try budget.addLayout(layout)
                pendingLayout += layout.regions.map(ImageRegion.init)
                if !layout.continued {
                    guard let round32 = UInt32(exactly: layout.round) else { throw Refusal(code: .roundMismatch, description: "round \(layout.round) out of range") }
                    try store.beginRound(round32, layout: pendingLayout)
                    ledger?.beginRound(layout: pendingLayout)
                    budget.beginRound(store)
                    loadMeter.begin(stage)
                    openRound = layout.round
                    counts = RoundStats()
                    pendingLayout = []
                    layoutRound = nil
                    setInfo { $0.round = layout.round }
                }
            case .pageBatch:
                preconditionFailure("receive(pageBytesInto:) returns page batches as .pageBatch")
            case .zeroRanges(let list):
                try expect(openRound, list.round)
                try budget.addRanges(list.runs.count, round: list.round)
                try stage.submit(.zero(list.runs))
                counts.zeroPages += Self.pageCount(list.runs)
            case .discardRanges(let list):
                try expect(openRound, list.round)
                try budget.addRanges(list.runs.count, round: list.round)
                try stage.submit(.discard(list.runs))
                counts.discardedPages += Self.pageCount(list.runs)
            case .roundEnd(let end):
                let roundEndAt = MonotonicClock.seconds()
                try expect(openRound, end.round)
                try stage.drain()  // the store is this thread's again until the next page frame
                let load = loadMeter.end(stage)
                guard end.stats.pages == counts.pages, end.stats.zeroPages == counts.zeroPages,
                      end.stats.discardedPages == counts.discardedPages, end.stats.batches == counts.batches else {
                    throw Refusal(code: .roundMismatch, description: "round \(end.round) counts differ: sender \(end.stats), received \(counts)")
                }
                if let senderDigest = end.finalDigest {
                    // A verification round carries no pages: the image is already what the
                    // frozen source holds, or the migration fails. With `finalDeltaDigest` the
                    // final delta's last chunk is the final round: the ledger's digest then
                    // covers its staged pages, all of it committed below in one durable commit.
                    guard finalDeltaProved || (counts.pages == 0 && counts.zeroPages == 0 && counts.discardedPages == 0) else {
                        throw Refusal(code: .unexpectedMessage, description: "the final (verification) round must carry no pages")
                    }
                    // Stops at once when the peer goes (it polls the socket between chunks).
                    let digest = try ledger?.finalDigest() ?? store.computeDigest(version: digestVersion, isCancelled: connectionGone)
                    let wire = WireDigest(high: digest.high, low: digest.low)
                    guard wire == senderDigest else {
                        throw Refusal(code: .digestMismatch, description: "image digest \(wire.hex) differs from the source's \(senderDigest.hex)")
                    }
                    // Durable at the commit point; the checkpoint waits until after the
                    // acknowledgement, outside the source's frozen window.
                    let commit = try store.commitRound(final: true, digest: digest, deferApply: true)
                    recorder.committed(chunk: end.round, counts: counts, commit: commit, bytesReceived: channel.bytesReceived, final: true, digest: wire.hex)
                    counted(commit, since: roundEndAt, pageBytes: counts.pages * PageSize.bytes)
                    counters.completed()
                    try channel.send(.roundAck(RoundAck(round: end.round, imageDigest: wire)))
                    setInfo { $0.state = "complete"; $0.committedRound = store.committedRound; $0.lastCommit = commit }
                    log("receiver: migration \(info.migration ?? "?") complete, digest \(wire.hex)")
                    try store.checkpoint()
                    if restoreAgreed, let restore { startReadahead(store, restore) }
                } else {
                    // Acknowledge at the commit point (durable), then apply the
                    // journal while the sender scans for the next round.
                    let commit = try store.commitRound(final: false, deferApply: true)
                    try ledger?.commitRound()
                    recorder.committed(chunk: end.round, counts: counts, commit: commit, bytesReceived: channel.bytesReceived, final: false)
                    counted(commit, since: roundEndAt, pageBytes: counts.pages * PageSize.bytes)
                    try channel.send(.roundAck(RoundAck(round: end.round, load: reportsLoad ? load : nil)))
                    setInfo { $0.committedRound = store.committedRound; $0.lastCommit = commit }
                    try store.finishApply()
                }
                openRound = nil
            case .keepalive(let k):
                // Between rounds it is the sender's drain before the freeze: checkpoint
                // now, while the target runs, so the frozen round's writes and commit
                // meet a quiet disk, not the writeback of earlier applies (a 31 MB
                // commit took 227-298 ms beside it, 18-26 ms after: BENCHMARKS.md).
                if !k.isReply {
                    if openRound == nil { try store.checkpoint() }
                    try channel.send(.keepalive(Keepalive(nonce: k.nonce, isReply: true)))
                }
            case .error(let e):
                throw Refusal(code: .cancelled, description: "sender reported error \(e.code): \(e.message)")
            case .restoreFile(let chunk):
                try checkRestore(store, openRound, chunk.name)
                if restoreFiles == nil {
                    restoreFiles = try RestoreFileWriter(directory: store.directory + "/criu", maxFiles: restore!.maxFiles, maxTotalBytes: restore!.maxTotalBytes)
                    setInfo { $0.state = "receiving criu files" }
                }
                try restoreFiles!.write(chunk)
            case .restoreBegin(let begin):
                try checkRestore(store, openRound, nil)
                guard let files = restoreFiles else { throw Refusal(code: .restoreFailed, description: "RESTORE_BEGIN without files") }
                try files.finish(begin)
                restoreFiles = nil
                try runRestore(store, files, begin)
                return  // the sender's CLOSE was the commit
            case .close:
                stage.stop()
                if openRound != nil { store.abortRound() }
                return
            case .hello, .welcome, .roundAck, .restoreDone:
                throw Refusal(code: .unexpectedMessage, description: "unexpected \(message.frameType)")
            }
        }
    }

    /// The hand-over comes after the proof, only when agreed, once.
    private func checkRestore(_ store: ImageStore, _ openRound: UInt64?, _ name: String?) throws {
        guard restoreAgreed, restore != nil else {
            throw Refusal(code: .unexpectedMessage, description: "restore frames without the criu-restore capability")
        }
        guard openRound == nil, store.state == .complete else {
            throw Refusal(code: .unexpectedMessage, description: "restore frames before the image is complete (the proof comes first)")
        }
        guard info.restoredPID == nil else { throw Refusal(code: .unexpectedMessage, description: "the process was restored already") }
    }

    private func runRestore(_ store: ImageStore, _ files: RestoreFileWriter, _ begin: RestoreBegin) throws {
        let id = info.migration ?? "?"
        setInfo { $0.state = "restoring" }
        log("receiver: migration \(id): restoring from \(files.sizes.count) CRIU files (\(files.totalBytes) bytes) and the image")
        let job = RestoreService.Job(migrationID: id, imageDirectory: store.directory, criuDirectory: files.directory, options: begin.options)
        let outcome: RestoreService.Outcome
        do {
            defer { endReadahead() }  // the restore read the image: no more to gain
            outcome = try restore!.restore(job)
        } catch let r as Refusal {
            throw r
        } catch {
            throw Refusal(code: .restoreFailed, description: "restore: \(error)")
        }
        do {
            try channel.send(.restoreDone(RestoreDone(pid: UInt32(outcome.pid), restoreMicros: UInt64(outcome.restoreSeconds * 1e6),
                                                      completeMicros: UInt64(outcome.completeSeconds * 1e6))))
        } catch {
            // The sender cannot learn that the process runs here, so it resumes its
            // source: never leave two copies running.
            kill(outcome.pid, SIGKILL)
            log("receiver: migration \(id): RESTORE_DONE could not be sent (\(error)); killed the restored PID \(outcome.pid), the sender resumes its source")
            throw error
        }
        do {
            try awaitCommit()
        } catch {
            kill(outcome.pid, SIGKILL)
            log("receiver: migration \(id): no CLOSE from the sender after RESTORE_DONE (\(error)); killed the restored PID \(outcome.pid): "
                + "the sender resumes its source unless it saw RESTORE_DONE; the image and \(files.directory) are kept")
            throw error
        }
        setInfo { $0.state = "running"; $0.restoredPID = outcome.pid }
        log("receiver: migration \(id): process running on this host as PID \(outcome.pid) (restore \(Int(outcome.restoreSeconds * 1000)) ms, all pages in \(Int(outcome.completeSeconds * 1000)) ms)")
    }

    /// A restore will read the image the final commit made: read it ahead while
    /// the sender dumps and ships its CRIU files (``ImageReadahead``).
    private func startReadahead(_ store: ImageStore, _ restore: RestoreService) {
        dropForColdBench(store)
        guard restore.readsAhead else { return }
        readahead = ImageReadahead.start(directory: store.directory, log: log)
    }

    /// `--bench-cold-image`: the checkpointed image's region files leave the page
    /// cache (flushed first: this session thread waits for it, so a bench reports
    /// the time; a drop after every commit flushed each 64 MiB chunk and stalled
    /// the pre-copy).
    private func dropForColdBench(_ store: ImageStore) {
        guard testHooks.coldImage, restoreAgreed, restore != nil else { return }
        let t0 = MonotonicClock.seconds()
        do {
            try ImageReadahead.dropFromCache(directory: store.directory)
            log("receiver: bench cold image: dropped \(store.directory) from the page cache in \(Int((MonotonicClock.seconds() - t0) * 1000)) ms")
        } catch {
            log("receiver: bench cold image: \(error)")
        }
    }

    /// Stops the readahead (if any) and counts what it did.
    private func endReadahead() {
        guard let r = readahead else { return }
        readahead = nil
        let outcome = r.stop()
        counters.readAhead(bytes: outcome.bytes, seconds: outcome.seconds)
    }

    /// The sender kills its source on RESTORE_DONE and then says CLOSE
    /// (complete): that CLOSE commits the move. A broken connection or a
    /// silent sender before it means the sender may have resumed its source,
    /// so the restored copy must not run on (wire.md, "Restore on the receiver").
    private func awaitCommit() throws {
        let deadline = PeerDeadline("CLOSE after RESTORE_DONE", seconds: Double(limits.frameTimeout.components.seconds))
        while true {
            watch.awaitingFrame()
            let message = try channel.receive(by: deadline)
            watch.working()
            switch message {
            case .close(let c) where c.reason == .complete: return
            case .keepalive(let k):
                if !k.isReply { try channel.send(.keepalive(Keepalive(nonce: k.nonce, isReply: true))) }
            case .error(let e):
                throw Refusal(code: .cancelled, description: "sender reported error \(e.code) after RESTORE_DONE: \(e.message)")
            case let other:
                throw Refusal(code: .unexpectedMessage, description: "expected CLOSE (complete) after RESTORE_DONE, got \(other.frameType)")
            }
        }
    }

    private func expect(_ open: UInt64?, _ round: UInt64) throws {
        guard let open else { throw Refusal(code: .unexpectedMessage, description: "pages for round \(round) before its LAYOUT") }
        guard open == round else { throw Refusal(code: .roundMismatch, description: "frame for round \(round) inside round \(open)") }
    }

    /// Pages of runs (their counts are checked by the codec: no overflow).
    static func pageCount(_ runs: [PageRun]) -> UInt64 { runs.reduce(0) { $0 + UInt64($1.pageCount) } }

    /// Runs of pages (ZERO_RANGES, DISCARD_RANGES) as ranges to `op`; returns the pages.
    static func apply(_ runs: [PageRun], _ op: (AddressRange) throws(ImageError) -> Void) throws(ImageError) -> UInt64 {
        var pages: UInt64 = 0
        for run in runs {
            try op(AddressRange(start: run.start, end: run.start + UInt64(run.pageCount) * UInt64(WireLimits.default.pageSize)))
            pages += UInt64(run.pageCount)
        }
        return pages
    }

    private func counted(_ commit: CommitInfo, since roundEnd: Double, pageBytes: UInt64) {
        counters.committed(seconds: MonotonicClock.seconds() - roundEnd, fsyncSeconds: Double(commit.syncNanoseconds) / 1e9, pageBytes: pageBytes,
                           fillBytes: commit.filledBytes)
    }

    static func refusal(for error: Error) -> Refusal {
        switch error {
        case let r as Refusal: return r
        case let e as WireError: return Refusal(code: .malformedFrame, description: "malformed frame: \(e)")
        case let e as CompressionError: return Refusal(code: .decompressionFailed, description: "bad page batch payload: \(e)")
        case let e as ImageError:
            switch e {
            case .outsideLayout, .unaligned: return Refusal(code: .outsideLayout, description: String(describing: e))
            case .invalidLayout, .staleRound, .noOpenRound, .roundAlreadyOpen: return Refusal(code: .roundMismatch, description: String(describing: e))
            case .locked: return Refusal(code: .migrationBusy, description: String(describing: e))
            case .cancelled(let what):
                return Refusal(code: .cancelled, description: "the peer went away while the receiver worked; \(what) (the image waits for a resume)",
                               connectionLost: true, aborted: true)
            default: return Refusal(code: .storageFailure, description: "image store: \(e)")
            }
        case MigrationError.connectionClosed:
            return Refusal(code: .cancelled, description: "connection lost mid-migration (the image waits for a resume)", connectionLost: true)
        case _ where MigrationError.isConnectionLoss(error):
            return Refusal(code: .internalError, description: "connection lost: \(error) (the image waits for a resume)", connectionLost: true)
        default: return Refusal(code: .internalError, description: String(describing: error))
        }
    }
}

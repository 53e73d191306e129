#if canImport(Glibc)
import Glibc
#endif
import CXXHash
import Dispatch
import MemhaulDigest
import MemhaulSystem
import MemhaulWire

/// The receiver's on-disk image of one migration (Protocol/image.md): sparse
/// region files holding pages at their addresses, committed round by round
/// through a redo journal so that after a crash at any point the image opens at
/// its last committed round.
///
/// This is the writer's facade (the receiver's): create/open, rounds, commit,
/// the deferred apply and checkpoints. The pieces live beside it: names in
/// ImageNaming, the lock in ImageLock, the layout → files plan in
/// LayoutPlanner, the round's write-ahead log in JournalWriter (the open
/// round's state in OpenRound), journal replay in JournalApplier, what open
/// does after a crash in ImageRecovery, and committed reads and the digest in
/// ImageReader (which also serves read-only tools without a store).
///
/// Thread safety: one writer per image. The store does no locking of its own;
/// its owner serialises calls (e.g. one receiver session task). Separate images
/// (separate directories) are fully independent. Across processes,
/// `migration.lock` (flock) keeps a second store from opening the same image.
public final class ImageStore: @unchecked Sendable {
    /// Start writeback of in-place writes every this many bytes.
    static let writebackKickBytes: UInt64 = 4 << 20
  // unchecked: one owner serialises calls (documented above)
    /// The image directory (`<images>/<migration-id>`).
    public let directory: String
    /// What `open` found and did.
    public private(set) var recovery: ImageRecovery = .clean

    let paths: ImagePaths
    private let lock: ImageLock
    private var manifest: Manifest
    private let imageID: UInt64
    private var files: [UInt32: ImageFile] = [:]
    private var open: OpenRound?
    /// Set when a step after the commit point failed: the store refuses work until reopened.
    private var poisoned: String?
    /// A committed round whose journal is not applied yet (``commitRound(final:digest:deferApply:)``).
    private var pendingApply: (round: UInt32, layoutPass: Bool, punches: FileRanges)?
    /// Region files changed by applies since the last checkpoint (page cache only, not fsynced).
    private var dirtyFiles: Set<UInt32> = []
    /// Journals the last `open` replayed, ascending.
    public private(set) var replayedJournals: [UInt32] = []
    /// A checkpoint is taken once the pending journals reach this many bytes
    /// (nil: max(1 GiB, twice the layout size)). 0 checkpoints after every round
    /// (the 1.x behaviour: every apply fsynced).
    public var checkpointThreshold: UInt64?
    /// Duration of the last checkpoint, nanoseconds.
    public private(set) var lastCheckpointNanoseconds: UInt64 = 0
    /// What the last `commitRound` did (as it returned it), completed once a
    /// deferred apply is joined (its `applyNanoseconds`) and by a checkpoint
    /// `finishApply` takes for it (`checkpointNanoseconds`).
    public private(set) var lastCommit: CommitInfo?
    /// The open round's journal buffer (lent to its ``JournalWriter``).
    private let scratch: UnsafeMutableRawBufferPointer
    /// Read buffer for digests and info (a round's journal may be buffered in `scratch` meanwhile).
    private lazy var readBuffer: UnsafeMutableRawBufferPointer = BufferPool.take(Self.scratchSize)
    private var readBufferAllocated = false
    private let zeros: UnsafeMutableRawBufferPointer
    /// ``writeRuns(_:_:)``'s `pwritev` vector (`IOV_MAX` entries).
    private let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: iovMax)
    /// Applies journals (inline, or on a background thread: ``finishApply()``).
    private let applier: JournalApplier
    /// An apply running in the background, joined before anything touches the
    /// files it writes (``join()``).
    private var running: ApplyJob?
    private let hashState: OpaquePointer
    /// Starts the open round's in-place writeback off the writer's thread.
    let writeback: WritebackQueue

#if DEBUG
    /// Test hooks (ImageStoreTestHooks.swift); not in release builds.
    var hooks = TestHooks()

    func poisonForTest(_ reason: String) { poisoned = reason }

    /// The open round's journal stays on disk, as a crash before the commit leaves it.
    func dropOpenRoundForTest() {
        guard let r = open else { return }
        try? r.journal.flush()
        open = nil
    }
#endif

    static let scratchSize = 8 << 20
    /// Runs background applies (one per store at a time).
    static let applyQueue = DispatchQueue(label: "memhaul.image.apply", qos: .userInitiated, attributes: .concurrent)
    /// Closes unlinked journals in the background.
    static let reaper = DispatchQueue(label: "memhaul.image.reaper", qos: .utility)

    // MARK: paths

    var manifestPath: String { paths.manifest }
    func journalPath(_ round: UInt32) -> String { paths.journal(round) }
    func filePath(_ id: UInt32) -> String { paths.regionFile(id) }

    // MARK: create / open

    private init(directory: String, lock: ImageLock, manifest: Manifest) {
        self.directory = directory
        self.paths = ImagePaths(directory)
        self.lock = lock
        self.manifest = manifest
        self.imageID = MemhaulImage.imageID(of: manifest.migrationID)
        scratch = BufferPool.take(Self.scratchSize)
        zeros = BufferPool.takeZeroed(1 << 20)
        applier = JournalApplier(directory: directory, imageID: MemhaulImage.imageID(of: manifest.migrationID))
        hashState = XXH3_createState()
        writeback = WritebackQueue(directory: directory)  // one statfs: decided before any thread shares the store
    }

    deinit {
        try? join()  // the lock must outlive any write to the image
        abortRound()
        if poisoned == nil { try? checkpoint() }  // or the next open replays the journals
        lock.release()
        BufferPool.give(scratch)
        if readBufferAllocated { BufferPool.give(readBuffer) }
        BufferPool.giveZeroed(zeros)
        iovecs.deallocate()
        XXH3_freeState(hashState)
    }

    /// Creates a new, empty image in `directory` (mode 0700; missing parents are
    /// created 0700 too) and locks it. No round is committed yet. With `owner`,
    /// the owner record is made durable before the first manifest.
    public static func create(directory: String, migrationID: String, owner: ImageOwner? = nil) throws(ImageError) -> ImageStore {
        try validate(migrationID: migrationID)
        let dir = ImagePaths.normalised(directory)
        try makeParents(of: dir)
        do {
            _ = try Syscall.run("mkdir(\(dir))") { mkdir(dir, 0o700) }
        } catch {
            if error.errno == .EEXIST { throw .alreadyExists(directory: dir) }
            throw .io(file: dir, call: "mkdir", errno: error.errno)
        }
        _ = try onFile("chmod", dir) { chmod(dir, 0o700) }  // whatever the umask
        let lock = try ImageLock.exclusive(ImagePaths(dir))
        let now = WallClock.nanoseconds()
        if var owner {
            if owner.recordedAt == 0 { owner.recordedAt = now }
            try writeOwner(owner, migrationID: migrationID, directory: dir)
        }
        let store = ImageStore(
            directory: dir, lock: lock, manifest: Manifest(migrationID: migrationID, createdAt: now, updatedAt: now))
        try store.publish(store.manifest)
        try fsyncDirectory(ImagePaths.parent(of: dir))
        return store
    }

    /// Opens an existing image for writing and recovers it: a committed round
    /// whose journal was not applied is re-applied; an uncommitted journal is
    /// discarded; files no committed round references are removed.
    public static func open(directory: String) throws(ImageError) -> ImageStore {
        let paths = ImagePaths(directory)
        let dir = paths.directory
        let lock = try ImageLock.exclusive(paths)
        let manifest = try Manifest.read(paths)
        let store = ImageStore(directory: dir, lock: lock, manifest: manifest)
        // Until recovery finishes nothing may checkpoint (deinit of a failed open).
        store.poisoned = "recovery did not finish"
        try store.recover()
        store.poisoned = nil
        return store
    }

    private static func makeParents(of dir: String) throws(ImageError) {
        let p = ImagePaths.parent(of: dir)
        if p == "/" || p == "." || access(p, F_OK) == 0 { return }
        try makeParents(of: p)
        do {
            _ = try Syscall.run("mkdir(\(p))") { mkdir(p, 0o700) }
        } catch {
            if error.errno != .EEXIST { throw .io(file: p, call: "mkdir", errno: error.errno) }
        }
    }

    /// Releases the lock and every descriptor; an open round is aborted. The
    /// store refuses further work.
    public func close() {
        try? join()
        abortRound()
        if poisoned == nil { try? checkpoint() }  // or the next open replays the journals
        files.removeAll()
        lock.release()
        poisoned = "store closed"
    }

    // MARK: state

    public var migrationID: String { manifest.migrationID }
    public var committedRound: UInt32? { manifest.committedRound }
    /// The committed layout, ascending.
    public var layout: [ImageRegion] { manifest.regions }
    public var state: ImageState { manifest.state }
    public var rounds: [RoundRecord] { manifest.history }
    public var finalDigest: MemoryDigest? { manifest.digest }
    public var failureReason: String? { manifest.state == .failed ? manifest.failureReason : nil }
    /// The round currently open, if any.
    public var openRound: UInt32? { open?.round }
    /// Every journal up to this round is applied and the region files fsynced.
    public var checkpointedRound: UInt32? { manifest.checkpointedRound }
    /// Committed journals after the checkpoint (replayed by `open` after a crash), ascending.
    public var pendingJournals: [UInt32] { manifest.journals.map(\.round) }
    /// Their total size.
    public var pendingJournalBytes: UInt64 { manifest.journalBytesPending }
    /// The threshold in effect (see `checkpointThreshold`).
    public var effectiveCheckpointThreshold: UInt64 {
        checkpointThreshold ?? max(1 << 30, 2 * manifest.regions.reduce(0) { $0 + $1.byteCount })
    }

    private func checkUsable() throws(ImageError) {
        if let poisoned { throw .mustReopen(poisoned) }
    }

    // MARK: rounds

    /// Applies a committed round's journal left by a deferred commit (to the
    /// page cache: cheap), then checkpoints if one is due (journals over
    /// `effectiveCheckpointThreshold`, or the image is complete or failed).
    ///
    /// The apply runs on a background thread: this returns at once unless a
    /// checkpoint is due. Every call that needs the applied files (reads,
    /// digest, info, abort, the next round's apply, checkpoint, close) joins it
    /// first; the next round's beginRound, writes and commit up to its commit
    /// point do not, so a receiver takes the next round while the previous one
    /// is applied.
    public func finishApply() throws(ImageError) {
        try startPendingApply()
        if checkpointDue {
            try checkpoint()
            if lastCommit?.round == manifest.committedRound { lastCommit?.checkpointNanoseconds += lastCheckpointNanoseconds }
        }
    }

    /// Starts the deferred apply in the background (after the previous one).
    private func startPendingApply() throws(ImageError) {
        guard let p = pendingApply else { return }
        try join()
        pendingApply = nil
#if DEBUG
        if hooks.skipApply { return }
#endif
        guard let entry = manifest.journals.last, entry.round == p.round else { return }
        let job = ApplyJob(round: p.round, layoutPass: p.layoutPass, punches: p.punches)
        let applier = self.applier
        let m = manifest
        let faults = Syscall.currentFaults  // the apply's writes fail as the caller's would (tests)
        // Weak: the job holds its item; a strong capture was a cycle, and every
        // apply leaked the job, the manifest copy and the applier with it.
        // `running` (then join) keeps the job alive until the item has run.
        job.item = DispatchWorkItem { [weak job] in
            guard let job else { return }
            let t0 = MonotonicClock.nanoseconds()
            Syscall.withFaults(faults) {
                do throws(ImageError) {
                    job.touched = try applier.apply(entry, m: m, verifyFirst: false, layoutPass: p.layoutPass, replay: false)
                } catch {
                    job.error = error
                }
            }
            applier.dropDescriptors()
            job.nanoseconds = MonotonicClock.nanoseconds() - t0
        }
        running = job
#if DEBUG
        hooks.lastApply = job
#endif
        Self.applyQueue.async(execute: job.item!)
    }

    /// Waits for the background apply and takes over its result.
    private func join() throws(ImageError) {
        guard let job = running else { return }
        running = nil
        job.item!.wait()
        dirtyFiles.formUnion(job.touched)
        if lastCommit?.round == job.round { lastCommit?.applyNanoseconds = job.nanoseconds }  // a deferred apply
        if let error = job.error {
            poisoned = "applying round \(job.round) failed: \(error)"
            throw .mustReopen(poisoned!)
        }
        if job.layoutPass {
            do {
                try removeUnreferencedFiles(try listDirectory(directory))
            } catch {
                poisoned = "applying round \(job.round) failed: \(error)"
                throw .mustReopen(poisoned!)
            }
        }
    }

    private var checkpointDue: Bool {
        !manifest.journals.isEmpty
            && (manifest.journalBytesPending >= effectiveCheckpointThreshold || manifest.state != .inProgress)
    }

    /// Applies the deferred journal now (without fsync) and waits for it.
    private func applyPending() throws(ImageError) {
        try startPendingApply()
        try join()
    }

    /// Makes every committed round durable in the region files so the journals
    /// can go: applies the deferred journal, fsyncs the region files the applies
    /// changed and the directory, publishes the manifest with `checkpointedRound`
    /// = the committed round, and only then unlinks the journals. A failure
    /// keeps the journals (the store must be reopened, which replays them).
    public func checkpoint() throws(ImageError) {
        try applyPending()
        try checkUsable()
        guard !manifest.journals.isEmpty else { return }
        let t0 = MonotonicClock.nanoseconds()
        let old = manifest.journals
        var m = manifest
        m.checkpointedRound = m.committedRound
        m.journals = []
        m.legacy = false
        do {
            let live = Set(manifest.files.map(\.id))
            for id in dirtyFiles.sorted() where live.contains(id) { try file(id, create: true).fsync() }
            try fsyncDirectory(directory)  // files created or removed by the applies
            try publish(m)
        } catch {
            poisoned = "checkpoint of round \(m.committedRound ?? 0) failed: \(error)"
            throw .mustReopen(poisoned!)
        }
        dirtyFiles = []
        for entry in old {
            // The last close frees the journal's blocks (~1 s per GiB): off this path.
            let path = journalPath(entry.round)
            let journal = try? ImageFile(path: path, flags: O_RDONLY)
            try? unlinkIfPresent(path)
            if let raw = journal?.fd.release() { Self.reaper.async { _ = Glibc.close(raw) } }
        }
        lastCheckpointNanoseconds = MonotonicClock.nanoseconds() - t0
    }

    /// Opens round `round` with its layout (regions must be page-aligned and
    /// disjoint; they are sorted here). Content is kept by address: an address
    /// in both the committed and the new layout keeps its bytes; an address new
    /// to the layout reads as zeros; removed addresses are dropped at commit.
    /// A deferred apply of the previous round is started, not waited for.
    public func beginRound(_ round: UInt32, layout: [ImageRegion]) throws(ImageError) {
        try finishApply()  // does not wait for the apply
        try checkUsable()
        guard manifest.state == .inProgress else { throw .closedImage(manifest.state) }
        if let open { throw .roundAlreadyOpen(open.round) }
        if let committed = manifest.committedRound, round <= committed { throw .staleRound(round: round, committed: committed) }
        let regions = try LayoutPlanner.validated(layout)
        let plan = LayoutPlanner.plan(
            regions, segments: manifest.segments, files: manifest.files, nextFileID: manifest.nextFileID)
        let journal = try JournalWriter(
            path: journalPath(round), round: round, imageID: imageID, buffer: scratch, hashState: hashState,
            startsWriteback: writeback.decision.startsWriteback)
        open = OpenRound(
            round: round, regions: regions, plan: plan, vacant: manifest.vacant, layoutChanged: regions != manifest.regions,
            journal: journal, writeback: writeback)
    }

    /// Regions end at or below this address: above any Linux user address space (57 bits with
    /// 5-level paging), and it keeps sizes, file offsets (off_t) and the checkpoint threshold
    /// (twice the layout) far from overflowing, whatever layout a peer declares.
    public static let maxLayoutAddress: UInt64 = LayoutPlanner.maxLayoutAddress

    /// Stores pages at `address` (page-aligned, a whole number of pages, inside
    /// the open round's layout). Pages at addresses new to the layout that
    /// live in a new region file, and pages at vacant addresses (no committed
    /// content, no pending journal), are written in place; the others go to
    /// the round's journal. All become visible when the round commits. An I/O
    /// error aborts the round.
    public func writePages(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws(ImageError) {
        guard let r = open else { throw .noOpenRound }
        guard address % imagePageSize == 0 else { throw .unaligned(address) }
        guard UInt64(bytes.count) % imagePageSize == 0 else { throw .unaligned(address &+ UInt64(bytes.count)) }
        guard bytes.count > 0 else { return }
        let end = address + UInt64(bytes.count)
        try forEachPiece(r.segments, address, end) { _, _, _ in }  // refuse before any side effect
        do {
            try forEachPiece(r.segments, address, end) { s, a, e throws(ImageError) in
                try splitInPlace(r, a, e) { x, y, inPlace throws(ImageError) in
                    let piece = UnsafeRawBufferPointer(rebasing: bytes[Int(x - address)..<Int(y - address)])
                    if inPlace {
                        // No committed byte lives here: write in place, fsync before the commit.
                        let f = try file(s.fileID, create: true)
                        let offset = x - base(s, r)
                        try f.pwriteAll(piece, at: offset)
                        r.written.insert(AddressRange(start: x, end: y))
                        r.directFiles.insert(s.fileID)
                        r.directBytes += UInt64(piece.count)
                        r.noteUnsynced(file: f, id: s.fileID, from: offset, to: offset + UInt64(piece.count))
                        return
                    }
                    r.addReservation(s.fileID, x - base(s, r), y - x)
                    try r.journal.appendData(at: x, piece)
                }
            }
        } catch {
            abortRound()
            throw error
        }
        r.dataPages += UInt64(bytes.count) / imagePageSize
        r.dataBytes += UInt64(bytes.count)
    }

    /// Reserves (`fallocate(KEEP_SIZE)`) the region-file blocks of `span`'s
    /// in-place parts, the gaps between its pages included, before a dense
    /// batch is written there. On ext4 that is one allocation for the span
    /// instead of one per run of pages between gaps, each its own extent to
    /// allocate at writeback (Protocol/image.md, "Reserved gaps"). Content is
    /// unchanged: reserved blocks read as zeros, and `SEEK_DATA` skips them.
    /// Parts of `span` outside the layout, or journaled, are left alone.
    public func reserveInPlace(_ span: AddressRange) throws(ImageError) {
        guard let r = open, reservesInPlace else { return }
        try checkAligned(span)
        guard span.start < span.end else { return }
        do {
            // In-place ranges lie inside the layout: binary searches, not a pass over every segment per batch.
            try splitInPlace(r, span.start, span.end) { a, e, inPlace throws(ImageError) in
                guard inPlace else { return }
                try forEachPiece(r.segments, a, e) { s, x, y throws(ImageError) in
                    if try file(s.fileID, create: true).reserve(at: x - base(s, r), length: y - x) {
                        r.reservedBytes += y - x
                    }
                }
            }
        } catch {
            abortRound()
            throw error
        }
    }

    /// Gaps between a dense batch's runs of at most this many bytes are
    /// written as zeros by ``writeRuns(_:_:)`` (Protocol/image.md, "Filled
    /// gaps"); 0 turns filling off. At most 1 MiB (the zero buffer).
    public var gapFillBytes: UInt64 = ImageStore.defaultGapFillBytes {
        didSet { precondition(gapFillBytes % imagePageSize == 0 && gapFillBytes <= UInt64(zeros.count), "gapFillBytes: whole pages, at most 1 MiB") }
    }
    /// Two pages: on ext4, 716 MiB of pages in runs of about 2.3 with 30 %
    /// one-page holes cost 1.2–1.3 core-s to write and flush with the gaps
    /// reserved, 0.36–0.43 with gaps up to two pages filled (C microbenchmark,
    /// BENCHMARKS.md "Filled gaps").
    public static let defaultGapFillBytes: UInt64 = 2 * imagePageSize

    /// Stores a dense batch's runs (`runs` ascending and disjoint, their pages
    /// back to back in `bytes`), the batch whose span the receiver has charged
    /// to the disk budget and reserved (``reserveInPlace(_:)``). Where that span,
    /// from the first run's start to the last run's end, lies in place in one
    /// region file and holds nothing written this round, each gap of at most
    /// ``gapFillBytes`` between two runs is written as zeros in the same
    /// `pwritev` as the runs around it: ext4 then maps, writes back and
    /// converts one extent per stretch instead of one per run. The image's
    /// content is unchanged (a gap reads as zeros either way) and the gap stays
    /// vacant: only the runs count as written. Anywhere else the runs are
    /// stored one by one (``writePages(at:_:)``), unfilled. Returns the zero
    /// bytes written. An I/O error aborts the round.
    @discardableResult
    public func writeRuns(_ runs: [PageRun], _ bytes: UnsafeRawBufferPointer) throws(ImageError) -> UInt64 {
        guard let r = open else { throw .noOpenRound }
        guard let fill = fillableSpan(r, runs, bytes.count) else {
            var offset = 0
            for run in runs {
                let n = Int(run.pageCount) * Int(imagePageSize)
                try writePages(at: run.start, UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)]))
                offset += n
            }
            return 0
        }
        var filled: UInt64 = 0
        do {
            let f = try file(fill.segment.fileID, create: true)
            let base = base(fill.segment, r)
            let iov = iovecs
            var count = 0, total = 0
            var stretchStart = runs[0].start, cursor = runs[0].start
            var offset = 0
            func flush() throws(ImageError) {
                guard count > 0 else { return }
                try f.pwritev(iov, count: count, total: total, at: stretchStart - base)
                r.noteUnsynced(file: f, id: fill.segment.fileID, from: stretchStart - base, to: cursor - base)
                count = 0
                total = 0
            }
            for run in runs {
                let n = Int(run.pageCount) * Int(imagePageSize)
                let gap = run.start - cursor
                if gap > 0 && gap <= gapFillBytes && count > 0 && count + 2 <= iovMax {
                    iov[count] = iovec(iov_base: zeros.baseAddress, iov_len: Int(gap))
                    count += 1
                    total += Int(gap)
                    filled += gap
                } else if gap > 0 || count + 1 > iovMax {
                    try flush()
                    stretchStart = run.start
                }
                iov[count] = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress! + offset), iov_len: n)
                count += 1
                total += n
                cursor = run.start + UInt64(n)
                offset += n
                r.written.insert(AddressRange(start: run.start, end: cursor))
            }
            try flush()
        } catch {
            abortRound()
            throw error
        }
        r.directFiles.insert(fill.segment.fileID)
        r.directBytes += UInt64(bytes.count)
        r.filledBytes += filled
        r.dataPages += UInt64(bytes.count) / imagePageSize
        r.dataBytes += UInt64(bytes.count)
        return filled
    }

    /// The one segment `runs` lie in when ``writeRuns(_:_:)`` may fill their
    /// gaps: filling on, runs ascending, disjoint, aligned and as long as
    /// `byteCount`, their span in place in that segment, nothing of it written
    /// this round. Nil sends the runs down the per-run path, which checks them.
    private func fillableSpan(_ r: OpenRound, _ runs: [PageRun], _ byteCount: Int) -> (segment: Segment, span: AddressRange)? {
        guard gapFillBytes > 0, runs.count > 1 else { return nil }
        var cursor = runs[0].start
        var pages = 0
        for run in runs {
            guard run.start >= cursor, run.start % imagePageSize == 0, run.pageCount > 0 else { return nil }
            let (bytes, o1) = UInt64(run.pageCount).multipliedReportingOverflow(by: imagePageSize)
            let (end, o2) = run.start.addingReportingOverflow(bytes)
            guard !o1, !o2 else { return nil }
            cursor = end
            pages += Int(run.pageCount)
        }
        guard pages * Int(imagePageSize) == byteCount else { return nil }
        let span = AddressRange(start: runs[0].start, end: cursor)
        var segment: Segment?
        var segments = 0, pieces = 0, allInPlace = true
        do throws(ImageError) {
            try forEachPiece(r.segments, span.start, span.end) { s, _, _ in
                segment = s
                segments += 1
            }
            try splitInPlace(r, span.start, span.end) { _, _, inPlace in
                pieces += 1
                allInPlace = allInPlace && inPlace
            }
        } catch {
            return nil
        }
        guard segments == 1, pieces == 1, allInPlace else { return nil }
        guard let segment, r.written.intersection(with: span).isEmpty else { return nil }
        return (segment, span)
    }

    /// Whether ``reserveInPlace(_:)`` reserves: where the image's file system
    /// has a device behind it (the writeback decision). On tmpfs a reserved
    /// block would be a page of memory.
    public var reservesInPlace: Bool { writeback.decision.startsWriteback }

    /// Makes a range of pages read as zeros (a hole in the region file).
    public func zeroPages(_ range: AddressRange) throws(ImageError) {
        guard let r = open else { throw .noOpenRound }
        try checkAligned(range)
        guard range.start < range.end else { return }
        try forEachPiece(r.segments, range.start, range.end) { _, _, _ in }
        try clear(r, .zero, range)
        r.zeroPages += UInt64(range.pageCount)
    }

    /// Discards pages (now unpopulated at the source): they read as zeros and
    /// free their blocks. Parts of the range outside the layout are ignored:
    /// the layout change already dropped them.
    public func discardPages(_ range: AddressRange) throws(ImageError) {
        guard let r = open else { throw .noOpenRound }
        try checkAligned(range)
        guard range.start < range.end else { return }
        try clear(r, .discard, range)
        r.discardedPages += UInt64(range.pageCount)
    }

    private func checkAligned(_ range: AddressRange) throws(ImageError) {
        guard range.start % imagePageSize == 0 else { throw .unaligned(range.start) }
        guard range.end % imagePageSize == 0 else { throw .unaligned(range.end) }
    }

    /// Zero or discard: journaled where committed bytes live; where none do
    /// (in place), only what this round wrote there is punched: the rest is a
    /// hole already, and costs no fallocate.
    private func clear(_ r: OpenRound, _ kind: RecordKind, _ range: AddressRange) throws(ImageError) {
        do {
            try forEachCoveredPiece(r.segments, range.start, range.end) { s, a, e throws(ImageError) in
                try splitInPlace(r, a, e) { x, y, inPlace throws(ImageError) in
                    if inPlace {
                        for w in r.written.intersection(with: AddressRange(start: x, end: y)) {
                            try file(s.fileID, create: true).punchHole(
                                at: w.start - base(s, r), length: w.byteCount, zeros: UnsafeRawBufferPointer(zeros))
                            r.directFiles.insert(s.fileID)
                        }
                    } else {
                        try r.journal.append(kind, x, y - x, nil)
                        r.punches.add(s.fileID, AddressRange(start: x - base(s, r), end: y - base(s, r)))
                    }
                }
            }
        } catch {
            abortRound()
            throw error
        }
    }

    /// Splits `[start, end)` into runs written in place (fresh or vacant: no
    /// committed byte lives there) or not (journaled).
    private func splitInPlace(
        _ r: OpenRound, _ start: UInt64, _ end: UInt64, _ body: (UInt64, UInt64, Bool) throws(ImageError) -> Void
    ) throws(ImageError) {
        try r.inPlace.forEachPiece(of: start, end, body)
    }

    private func base(_ s: Segment, _ r: OpenRound) -> UInt64 { r.fileBases[s.fileID]! }

    /// Drops the open round: its journal is removed; the committed round is untouched.
    public func abortRound() {
        guard let r = open else { return }
        open = nil
        _ = r.writeback.finish()  // none of its ranges still running when they are punched
        r.journal.remove()
        // Undo in-place writes: fresh addresses go with the files reconciling
        // drops, vacant ones are punched back to holes.
        do {
            try join()
            dirtyFiles.formUnion(try applier.reconcileFiles(manifest))
            // Durably: a later round may bridge its writes across these pages
            // and so commit them as they are on disk (VacantSpace.after).
            for id in try applier.punch(r.written.ranges, m: manifest).sorted() { try file(id, create: true).fsync() }
            applier.dropDescriptors()
            try removeUnreferencedFiles(try listDirectory(directory))
        } catch {
            poisoned = "undoing round \(r.round) failed: \(error)"
        }
    }

    /// Commits the open round atomically: journal durable, then the manifest is
    /// replaced (the commit point), then the journal is applied to the region
    /// files (page cache only: the journal stays until a checkpoint makes the
    /// files durable). `final` marks the image complete (with the sender's
    /// digest, if given). An error before the commit point aborts the round and
    /// leaves the previous round committed.
    ///
    /// With `deferApply`, it returns at the commit point (durable: a crash now
    /// replays the journal on open) and leaves the apply to ``finishApply()``,
    /// which every later call runs first. A receiver uses it to acknowledge a
    /// round before the apply, and applies while the sender scans. Without it,
    /// the commit also checkpoints when one is due, and always when `final`
    /// (the image is then durable in its region files, with no journal left,
    /// when this returns). A final commit with `deferApply` leaves its
    /// checkpoint to ``finishApply()``, ``checkpoint()`` or ``close()``, to be
    /// taken after the receiver has acknowledged it.
    @discardableResult
    public func commitRound(final: Bool = false, digest: MemoryDigest? = nil, deferApply: Bool = false) throws(ImageError) -> CommitInfo {
        try startPendingApply()  // the previous round's apply may still run: only its result is needed, after the commit point
        try checkUsable()
        guard let r = open else { throw .noOpenRound }
        let t0 = MonotonicClock.nanoseconds()
        var m = manifest
        let writebackFailures = r.writeback.finish()  // none still running when the fsyncs below wait
        do {
            try r.journal.seal()
            for id in r.directFiles.sorted() { try file(id, create: true).fsync() }
            // A running apply that punches or truncates where this round reserves would undo the reservation.
            if let job = running, job.conflicts(with: r) { try join() }
            try reserveBlocks(r)
            try fsyncDirectory(directory)  // the journal's directory entry, before the commit names it
        } catch {
            abortRound()
            throw error
        }
        let t1 = MonotonicClock.nanoseconds()
        let now = WallClock.nanoseconds()
        let journalBytes = r.journal.written, journalRecords = r.journal.records
        let record = RoundRecord(
            round: r.round, dataPages: r.dataPages, dataBytes: r.dataBytes, zeroPages: r.zeroPages,
            discardedPages: r.discardedPages, journalBytes: journalBytes, committedAt: now, layoutChanged: r.layoutChanged)
        m.committedRound = r.round
        m.updatedAt = now
        m.journalBytes = journalBytes
        m.journalRecords = journalRecords
        m.journals.append(
            JournalEntry(round: r.round, bytes: journalBytes, records: journalRecords, nextFileID: r.nextFileID, grown: r.grown))
        m.legacy = false
        m.nextFileID = r.nextFileID
        m.regions = r.regions
        m.files = r.files
        m.segments = r.segments
        m.vacant = VacantSpace.after(inPlace: r.inPlace, written: r.written)
        m.history.append(record)
        if final {
            m.state = .complete
            m.digest = digest
        }
        do {
            try publish(m)
        } catch {
            guard manifest.committedRound == r.round else {
                abortRound()
                throw error
            }
            // Renamed but the directory fsync failed: committed in this process,
            // maybe not on disk. Keep the journal; reopening decides.
            open = nil
            throw .mustReopen(poisoned ?? "\(error)")
        }
        // Committed.
        open = nil
        r.journal.close()
        let t2 = MonotonicClock.nanoseconds()
#if DEBUG
        if hooks.stopAfterPublish {
            poisoned = "stopped after the commit point (test)"
            throw .mustReopen(poisoned!)
        }
#endif
        pendingApply = (r.round, r.layoutChanged, r.punches)
        var checkpointNs: UInt64 = 0
        if !deferApply {
            try applyPending()
            if final || checkpointDue {
                try checkpoint()
                checkpointNs = lastCheckpointNanoseconds
            }
        }
        let t3 = MonotonicClock.nanoseconds()
        var info = CommitInfo(
            round: r.round, record: record, directBytes: r.directBytes, syncNanoseconds: t1 - t0,
            publishNanoseconds: t2 - t1, applyNanoseconds: t3 - t2 - checkpointNs, checkpointNanoseconds: checkpointNs,
            applyDeferred: deferApply, writebackFailures: writebackFailures + r.journal.writebackFailures)
        info.reservedBytes = r.reservedBytes
        info.filledBytes = r.filledBytes
        lastCommit = info
        return info
    }

    /// Reserves (fallocate KEEP_SIZE) the file blocks the round will write, so
    /// applying it after the commit point cannot fail with ENOSPC.
    /// Ranges are sorted and small gaps bridged first, so scattered pages cost
    /// one fallocate per run of them, not one per page.
    private func reserveBlocks(_ r: OpenRound) throws(ImageError) {
        for (id, ranges) in r.reservations.coalesced(bridging: Self.reserveGap).sorted(by: { $0.key < $1.key }) {
            let f = try file(id, create: true)
            for res in ranges where try !f.reserve(at: res.start, length: res.byteCount) { return }
        }
    }

    /// Reservations closer than this are made as one (the gap's blocks are
    /// reserved too: at most this much disk per gap, until a checkpoint's
    /// punches or the next write).
    static let reserveGap: UInt64 = 64 << 10

    /// Writes `m` to `manifest.tmp`, fsyncs it, renames it over `manifest` and
    /// fsyncs the directory: the atomic commit point.
    private func publish(_ m: Manifest) throws(ImageError) {
        let tmp = paths.manifestTmp
        do throws(ImageError) {
            let f = try ImageFile(path: tmp, flags: O_WRONLY | O_CREAT | O_TRUNC)
            try f.writeAll(m.encode())
            try f.fsync()
            _ = try onFile("rename", tmp) { rename(tmp, manifestPath) }
        } catch {
            try? unlinkIfPresent(tmp)
            throw error
        }
        manifest = m
        do {
            try fsyncDirectory(directory)
        } catch {
            poisoned = "fsync of \(directory) after publishing the manifest failed: \(error)"
            throw error
        }
    }

    /// Marks the migration failed; the image stays at its last committed round.
    public func markFailed(reason: String) throws(ImageError) {
        try applyPending()
        try checkUsable()
        abortRound()
        var m = manifest
        m.state = .failed
        m.failureReason = reason
        m.updatedAt = WallClock.nanoseconds()
        try publish(m)
    }

    // MARK: apply / recovery

    private func file(_ id: UInt32, create: Bool) throws(ImageError) -> ImageFile {
        if let f = files[id] { return f }
        let f = try ImageFile(path: filePath(id), flags: O_RDWR | (create ? O_CREAT : 0))
        files[id] = f
        return f
    }

    private func recover() throws(ImageError) {
        let result = try Recovery.run(paths, manifest, applier)
        dirtyFiles.formUnion(result.dirty)
        replayedJournals = result.replayed
        recovery = result.outcome
        poisoned = nil
        if !manifest.journals.isEmpty { try checkpoint() }
    }

    private func removeUnreferencedFiles(_ names: [String]) throws(ImageError) {
        // An open round's new files stay.
        for (id, name) in Recovery.unreferencedFiles(names, manifest, keepingFrom: open != nil ? manifest.nextFileID : nil) {
            files[id] = nil
            dirtyFiles.remove(id)
            try unlinkIfPresent(directory + "/" + name)
        }
    }

    // MARK: reading (ImageReader.swift reads the same way, without a store)

    /// Reads committed memory `[address, address + buffer.count)`; never-written
    /// and discarded pages read as zeros. Throws `outsideLayout` for addresses
    /// not in the committed layout. An open round's writes are not visible.
    public func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ImageError) {
        try applyPending()
        try checkUsable()
        try CommittedContent(manifest).read(at: address, into: buffer) { id throws(ImageError) in try file(id, create: false) }
    }

    /// The memory digest (ARCHITECTURE.md) of the committed image: per region
    /// ascending, its bounds then its bytes. Holes (SEEK_HOLE) are fed as zeros
    /// without reading them.
    ///
    /// `version` picks the canonical form (v2: zero runs cost O(1), so the time
    /// follows the stored data, not the declared layout). `isCancelled` is asked
    /// before every region and every read chunk (≤ 8 MiB); when it answers true
    /// the walk stops with ``ImageError/cancelled(_:)``.
    /// `recording` (v3): the ledger that gets every non-zero page's hash (a resumed receiver's rebuild).
    public func computeDigest(version: DigestVersion = .v1, recording: PageLedger? = nil,
                              isCancelled: () -> Bool = { false }) throws(ImageError) -> MemoryDigest {
        try applyPending()
        try checkUsable()
        readBufferAllocated = true
        return try CommittedContent(manifest).digest(buffer: readBuffer, version: version, recording: recording, isCancelled: isCancelled) { id throws(ImageError) in
            try file(id, create: false)
        }
    }

    /// Bytes of the committed layout that are data, not holes (SEEK_DATA/SEEK_HOLE only, no reads).
    public func storedBytes() throws(ImageError) -> UInt64 {
        try applyPending()
        return try CommittedContent(manifest).storedBytes { id throws(ImageError) in try file(id, create: false) }
    }

    /// A summary for `memhaul image inspect`.
    public func info() throws(ImageError) -> ImageInfo {
        try applyPending()
        try checkUsable()
        let stored = try storedBytes()
        return ImageInfo(manifest, directory: directory, storedBytes: stored, recovery: recovery)
    }
}

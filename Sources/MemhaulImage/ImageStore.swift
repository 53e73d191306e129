#if canImport(Glibc)
import Glibc
#endif
import CXXHash
import Dispatch
import MemhaulDigest
import MemhaulSystem

/// The receiver's on-disk image of one migration (Protocol/image.md): sparse
/// region files holding pages at their addresses, committed round by round
/// through a redo journal so that after a crash at any point the image opens at
/// its last committed round.
///
/// Thread safety: one writer per image. The store does no locking of its own;
/// its owner serialises calls (e.g. one receiver session task). Separate images
/// (separate directories) are fully independent. Across processes,
/// `migration.lock` (flock) keeps a second store from opening the same image.
public final class ImageStore: @unchecked Sendable {
    /// Start writeback of in-place writes every this many bytes.
    static let writebackKickBytes: UInt64 = 32 << 20
  // unchecked: one owner serialises calls (documented above)
    /// The image directory (`<images>/<migration-id>`).
    public let directory: String
    /// What `open` found and did.
    public private(set) var recovery: ImageRecovery = .clean

    private let lock: ImageFile
    private var manifest: Manifest
    private let imageID: UInt64
    private var files: [UInt32: ImageFile] = [:]
    private var open: OpenRound?
    /// Set when a step after the commit point failed: the store refuses work until reopened.
    private var poisoned: String?
    /// A committed round whose journal is not applied yet (``commitRound(final:digest:deferApply:)``).
    private var pendingApply: (round: UInt32, layoutPass: Bool, punches: [FileRange])?
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
    /// Journal buffer while a round is open, journal read window while applying, read buffer for digests.
    private let scratch: UnsafeMutableRawBufferPointer
    /// Read buffer for digests and info (a round's journal may be buffered in `scratch` meanwhile).
    private lazy var readBuffer: UnsafeMutableRawBufferPointer = .allocate(byteCount: Self.scratchSize, alignment: 4096)
    private var readBufferAllocated = false
    private let zeros: UnsafeMutableRawBufferPointer
    /// Applies journals (inline, or on a background thread: ``finishApply()``).
    private let applier: JournalApplier
    /// An apply running in the background, joined before anything touches the
    /// files it writes (``join()``).
    private var running: ApplyJob?
    private let hashState: OpaquePointer

    /// Tests: stop right after the commit point, leaving the journal unapplied
    /// (the state a crash there leaves).
    var testStopAfterPublish = false

    /// Tests: never apply journals to the region files, as if no apply had
    /// reached the disk before a crash (only fsynced in-place writes did).
    var testSkipApply = false

    /// Tests: drop the store as a crash would: no checkpoint, journals left for `open`.
    func testCrash() {
        poisoned = "crashed (test)"
        close()
    }

    /// Tests: leave the open round's journal on disk as a crash before the commit would.
    func testStopBeforeCommit() {
        guard let r = open else { return }
        try? flush(r)
        open = nil
    }

    static let scratchSize = 8 << 20
    /// Runs background applies (one per store at a time).
    static let applyQueue = DispatchQueue(label: "memhaul.image.apply", qos: .userInitiated, attributes: .concurrent)
    /// Closes unlinked journals in the background.
    static let reaper = DispatchQueue(label: "memhaul.image.reaper", qos: .utility)
    /// Largest data record; writes are split so any record fits the read window.
    static let maxRecordData = 4 << 20

    // MARK: paths

    var manifestPath: String { directory + "/manifest" }
    func journalPath(_ round: UInt32) -> String {
        let digits = String(round)
        return directory + "/journal-" + String(repeating: "0", count: max(0, 10 - digits.count)) + digits
    }
    func filePath(_ id: UInt32) -> String { directory + "/mem-" + hex8(id) + ".bin" }

    // MARK: create / open

    private init(directory: String, lock: ImageFile, manifest: Manifest) {
        self.directory = directory
        self.lock = lock
        self.manifest = manifest
        self.imageID = MemhaulImage.imageID(of: manifest.migrationID)
        scratch = .allocate(byteCount: Self.scratchSize, alignment: 4096)
        zeros = .allocate(byteCount: 1 << 20, alignment: 4096)
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        applier = JournalApplier(directory: directory, imageID: MemhaulImage.imageID(of: manifest.migrationID))
        hashState = XXH3_createState()
    }

    deinit {
        try? join()  // the lock must outlive any write to the image
        abortRound()
        if poisoned == nil { try? checkpoint() }  // or the next open replays the journals
        unlock()
        scratch.deallocate()
        if readBufferAllocated { readBuffer.deallocate() }
        zeros.deallocate()
        XXH3_freeState(hashState)
    }

    /// Checks a migration id can name a directory: 1–128 of `[A-Za-z0-9._-]`, not `.` or `..`.
    public static func validate(migrationID id: String) throws(ImageError) {
        let ok = !id.isEmpty && id.utf8.count <= 128 && id != "." && id != ".."
            && id.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x2D
                    || c == 0x5F
            }
        guard ok else { throw .invalidMigrationID(id) }
    }

    /// The image directory of `migrationID` under the images root.
    public static func directory(root: String, migrationID: String) throws(ImageError) -> String {
        try validate(migrationID: migrationID)
        return (root.hasSuffix("/") ? String(root.dropLast()) : root) + "/" + migrationID
    }

    /// Creates a new, empty image in `directory` (mode 0700; missing parents are
    /// created 0700 too) and locks it. No round is committed yet. With `owner`,
    /// the owner record is made durable before the first manifest.
    public static func create(directory: String, migrationID: String, owner: ImageOwner? = nil) throws(ImageError) -> ImageStore {
        try validate(migrationID: migrationID)
        let dir = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        try makeParents(of: dir)
        do {
            _ = try Syscall.run("mkdir(\(dir))") { mkdir(dir, 0o700) }
        } catch {
            if error.errno == .EEXIST { throw .alreadyExists(directory: dir) }
            throw .io(file: dir, call: "mkdir", errno: error.errno)
        }
        _ = try onFile("chmod", dir) { chmod(dir, 0o700) }  // whatever the umask
        let lock = try lockImage(dir)
        let now = wallNanoseconds()
        if var owner {
            if owner.recordedAt == 0 { owner.recordedAt = now }
            try writeOwner(owner, migrationID: migrationID, directory: dir)
        }
        let store = ImageStore(
            directory: dir, lock: lock, manifest: Manifest(migrationID: migrationID, createdAt: now, updatedAt: now))
        try store.publish(store.manifest)
        try fsyncDirectory(parent(of: dir))
        return store
    }

    /// Opens an existing image for writing and recovers it: a committed round
    /// whose journal was not applied is re-applied; an uncommitted journal is
    /// discarded; files no committed round references are removed.
    public static func open(directory: String) throws(ImageError) -> ImageStore {
        let dir = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        let lock = try lockImage(dir)
        let bytes: [UInt8]
        do {
            bytes = try readWholeFile(dir + "/manifest")
        } catch {
            if case .io(_, _, .ENOENT) = error { throw .notAnImage(directory: dir) }
            throw error
        }
        let manifest = try Manifest.decode(bytes, file: dir + "/manifest")
        let store = ImageStore(directory: dir, lock: lock, manifest: manifest)
        // Until recovery finishes nothing may checkpoint (deinit of a failed open).
        store.poisoned = "recovery did not finish"
        try store.recover()
        store.poisoned = nil
        return store
    }

    private static func lockImage(_ dir: String) throws(ImageError) -> ImageFile {
        let path = dir + "/migration.lock"
        let file: ImageFile
        do {
            file = try ImageFile(path: path, flags: O_RDWR | O_CREAT)
        } catch {
            if case .io(_, _, .ENOENT) = error { throw .notAnImage(directory: dir) }
            throw error
        }
        do {
            _ = try Syscall.run("flock(\(path))") { flock(file.raw, LOCK_EX | LOCK_NB) }
        } catch {
            if error.errno == .EAGAIN { throw .locked(directory: dir) }
            throw .io(file: path, call: "flock", errno: error.errno)
        }
        return file
    }

    private static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    private static func makeParents(of dir: String) throws(ImageError) {
        let p = parent(of: dir)
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
        unlock()
        poisoned = "store closed"
    }

    /// Releases the flock explicitly before closing: a child forked meanwhile
    /// (not yet at exec, where O_CLOEXEC acts) shares the open file description
    /// and would otherwise keep the image locked.
    private func unlock() {
        guard lock.raw >= 0 else { return }
        _ = try? Syscall.run("flock(\(lock.path))") { flock(lock.raw, LOCK_UN) }
        try? lock.fd.close()
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
        if checkpointDue { try checkpoint() }
    }

    /// Starts the deferred apply in the background (after the previous one).
    private func startPendingApply() throws(ImageError) {
        guard let p = pendingApply else { return }
        try join()
        pendingApply = nil
        if testSkipApply { return }
        guard let entry = manifest.journals.last, entry.round == p.round else { return }
        let job = ApplyJob(round: p.round, layoutPass: p.layoutPass, punches: p.punches)
        let applier = self.applier
        let m = manifest
        job.item = DispatchWorkItem { [job] in
            do throws(ImageError) {
                job.touched = try applier.apply(entry, m: m, verifyFirst: false, layoutPass: p.layoutPass, replay: false)
            } catch {
                job.error = error
            }
            applier.dropDescriptors()
        }
        running = job
        Self.applyQueue.async(execute: job.item!)
    }

    /// Waits for the background apply and takes over its result.
    private func join() throws(ImageError) {
        guard let job = running else { return }
        running = nil
        job.item!.wait()
        dirtyFiles.formUnion(job.touched)
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
        let t0 = monotonicNanoseconds()
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
        lastCheckpointNanoseconds = monotonicNanoseconds() - t0
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
        let regions = try Self.validated(layout)
        let plan = planLayout(regions)
        let path = journalPath(round)
        let journal = try ImageFile(path: path, flags: O_WRONLY | O_CREAT | O_TRUNC)
        let r = OpenRound(
            round: round, regions: regions, segments: plan.segments, files: plan.files, nextFileID: plan.nextFileID,
            fresh: plan.fresh, grown: plan.grown, layoutChanged: regions != manifest.regions, journal: journal)
        let header = encodeJournalHeader(round: round, imageID: imageID)
        header.withUnsafeBytes { scratch.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        r.buffered = header.count
        open = r
    }

    /// Regions end at or below this address: above any Linux user address space (57 bits with
    /// 5-level paging), and it keeps sizes, file offsets (off_t) and the checkpoint threshold
    /// (twice the layout) far from overflowing, whatever layout a peer declares.
    public static let maxLayoutAddress: UInt64 = 1 << 57

    static func validated(_ layout: [ImageRegion]) throws(ImageError) -> [ImageRegion] {
        let sorted = layout.sorted { $0.start < $1.start }
        var last: UInt64 = 0
        for r in sorted {
            guard r.end <= maxLayoutAddress else {
                throw .invalidLayout("region 0x\(String(r.start, radix: 16))-0x\(String(r.end, radix: 16)) ends above 2^57")
            }
            guard r.start % imagePageSize == 0, r.end % imagePageSize == 0 else {
                throw .invalidLayout("region 0x\(String(r.start, radix: 16))-0x\(String(r.end, radix: 16)) is not page-aligned")
            }
            guard r.start < r.end else { throw .invalidLayout("empty region at 0x\(String(r.start, radix: 16))") }
            guard r.start >= last else { throw .invalidLayout("regions overlap at 0x\(String(r.start, radix: 16))") }
            last = r.end
        }
        return sorted
    }

    /// Maps the new layout onto region files: kept addresses stay in their
    /// file; an added range extends the file that ends right before it (heap
    /// growth) or gets a new file; files left without addresses are dropped.
    /// `fresh`: added ranges in new files (written in place); `grown`: added
    /// ranges in files that exist (journaled: an earlier apply of that file may
    /// not be durable yet, so in-place writes would need its fsync).
    private func planLayout(_ regions: [ImageRegion]) -> (
        segments: [Segment], files: [FileEntry], nextFileID: UInt32, fresh: [(UInt64, UInt64)], grown: [ImageRange]
    ) {
        // Union of the new regions.
        var wanted: [(UInt64, UInt64)] = []
        for r in regions {
            if let last = wanted.last, last.1 == r.start { wanted[wanted.count - 1].1 = r.end } else { wanted.append((r.start, r.end)) }
        }
        let old = manifest.segments
        var pieces: [Segment] = []
        var added: [(UInt64, UInt64)] = []
        var j = 0
        for (ws, we) in wanted {
            var cursor = ws
            while j < old.count && old[j].end <= ws { j += 1 }
            var k = j
            while k < old.count && old[k].start < we {
                let s = max(old[k].start, ws), e = min(old[k].end, we)
                if s > cursor { added.append((cursor, s)) }
                pieces.append(Segment(start: s, end: e, fileID: old[k].fileID))
                cursor = e
                k += 1
            }
            if cursor < we { added.append((cursor, we)) }
        }
        let oldFiles = Dictionary(manifest.files.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        var sizes: [UInt32: UInt64] = [:]
        for p in pieces { sizes[p.fileID] = max(sizes[p.fileID] ?? 0, p.end - oldFiles[p.fileID]!.base) }
        var endsAt: [UInt64: UInt32] = [:]
        for (id, size) in sizes { endsAt[oldFiles[id]!.base + size] = id }
        var bases: [UInt32: UInt64] = oldFiles.mapValues(\.base)
        var nextID = manifest.nextFileID
        var fresh: [(UInt64, UInt64)] = []
        var grown: [ImageRange] = []
        for (s, e) in added {
            let id: UInt32
            if let extend = endsAt.removeValue(forKey: s) {
                id = extend
            } else {
                id = nextID
                nextID += 1
                bases[id] = s
            }
            sizes[id] = e - bases[id]!
            endsAt[e] = id
            pieces.append(Segment(start: s, end: e, fileID: id))
            if id < manifest.nextFileID { grown.append(ImageRange(start: s, end: e)) } else { fresh.append((s, e)) }
        }
        pieces.sort { $0.start < $1.start }
        var segments: [Segment] = []
        for p in pieces {
            if let last = segments.last, last.end == p.start, last.fileID == p.fileID {
                segments[segments.count - 1].end = p.end
            } else {
                segments.append(p)
            }
        }
        let files = sizes.map { FileEntry(id: $0.key, base: bases[$0.key]!, size: $0.value) }.sorted { $0.id < $1.id }
        return (segments, files, nextID, fresh, grown)
    }

    /// Stores pages at `address` (page-aligned, a whole number of pages, inside
    /// the open round's layout). Pages at addresses new to the layout that
    /// live in a new region file are written in place, the others go to the
    /// round's journal; all become visible when the round commits. An I/O
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
                try splitFresh(r, a, e) { x, y, fresh throws(ImageError) in
                    let piece = UnsafeRawBufferPointer(rebasing: bytes[Int(x - address)..<Int(y - address)])
                    if fresh {
                        // No committed byte lives here: write in place, fsync before the commit.
                        let f = try file(s.fileID, create: true)
                        let offset = x - base(s, r)
                        try f.pwriteAll(piece, at: offset)
                        r.directFiles.insert(s.fileID)
                        r.directBytes += UInt64(piece.count)
                        r.noteUnsynced(file: s.fileID, fd: f.fd.rawValue, from: offset, to: offset + UInt64(piece.count))
                        return
                    }
                    r.addReservation(s.fileID, x - base(s, r), y - x)
                    var done = 0
                    while done < piece.count {
                        let n = min(Self.maxRecordData, piece.count - done)
                        try append(r, .data, x + UInt64(done), UInt64(n), UnsafeRawBufferPointer(rebasing: piece[done..<done + n]))
                        done += n
                    }
                }
            }
        } catch {
            abortRound()
            throw error
        }
        r.dataPages += UInt64(bytes.count) / imagePageSize
        r.dataBytes += UInt64(bytes.count)
    }

    /// Makes a range of pages read as zeros (a hole in the region file).
    public func zeroPages(_ range: ImageRange) throws(ImageError) {
        guard let r = open else { throw .noOpenRound }
        try checkAligned(range)
        guard range.start < range.end else { return }
        try forEachPiece(r.segments, range.start, range.end) { _, _, _ in }
        try clear(r, .zero, range)
        r.zeroPages += range.pageCount
    }

    /// Discards pages (now unpopulated at the source): they read as zeros and
    /// free their blocks. Parts of the range outside the layout are ignored:
    /// the layout change already dropped them.
    public func discardPages(_ range: ImageRange) throws(ImageError) {
        guard let r = open else { throw .noOpenRound }
        try checkAligned(range)
        guard range.start < range.end else { return }
        try clear(r, .discard, range)
        r.discardedPages += range.pageCount
    }

    private func checkAligned(_ range: ImageRange) throws(ImageError) {
        guard range.start % imagePageSize == 0 else { throw .unaligned(range.start) }
        guard range.end % imagePageSize == 0 else { throw .unaligned(range.end) }
    }

    /// Zero or discard: punched now where no committed byte lives, journaled elsewhere.
    private func clear(_ r: OpenRound, _ kind: RecordKind, _ range: ImageRange) throws(ImageError) {
        do {
            try forEachCoveredPiece(r.segments, range.start, range.end) { s, a, e throws(ImageError) in
                try splitFresh(r, a, e) { x, y, fresh throws(ImageError) in
                    if fresh {
                        try file(s.fileID, create: true).punchHole(
                            at: x - base(s, r), length: y - x, zeros: UnsafeRawBufferPointer(zeros))
                        r.directFiles.insert(s.fileID)
                    } else {
                        try append(r, kind, x, y - x, nil)
                        r.punches.append(FileRange(fileID: s.fileID, offset: x - base(s, r), length: y - x))
                    }
                }
            }
        } catch {
            abortRound()
            throw error
        }
    }

    /// Splits `[start, end)` into runs that are fresh (not in the committed
    /// layout: written in place) or not (journaled).
    private func splitFresh(
        _ r: OpenRound, _ start: UInt64, _ end: UInt64, _ body: (UInt64, UInt64, Bool) throws(ImageError) -> Void
    ) throws(ImageError) {
        var lo = 0, hi = r.fresh.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if r.fresh[mid].1 <= start { lo = mid + 1 } else { hi = mid }
        }
        var cursor = start
        var i = lo
        while cursor < end {
            if i < r.fresh.count, r.fresh[i].0 <= cursor {
                let e = min(end, r.fresh[i].1)
                try body(cursor, e, true)
                cursor = e
                i += 1
            } else {
                let e = i < r.fresh.count ? min(end, r.fresh[i].0) : end
                try body(cursor, e, false)
                cursor = e
            }
        }
    }

    private func base(_ s: Segment, _ r: OpenRound) -> UInt64 { r.fileBases[s.fileID]! }

    /// Calls `body(segment, start, end)` for each piece of `[start, end)`;
    /// throws `outsideLayout` naming the first address no segment covers.
    private func forEachPiece(
        _ segments: [Segment], _ start: UInt64, _ end: UInt64, _ body: (Segment, UInt64, UInt64) throws(ImageError) -> Void
    ) throws(ImageError) {
        var lo = 0, hi = segments.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if segments[mid].end <= start { lo = mid + 1 } else { hi = mid }
        }
        var cursor = start
        var i = lo
        while cursor < end {
            guard i < segments.count, segments[i].start <= cursor else { throw .outsideLayout(cursor) }
            let e = min(end, segments[i].end)
            try body(segments[i], cursor, e)
            cursor = e
            i += 1
        }
    }

    /// Appends one journal record through the scratch buffer.
    private func append(
        _ r: OpenRound, _ kind: RecordKind, _ address: UInt64, _ length: UInt64, _ data: UnsafeRawBufferPointer?
    ) throws(ImageError) {
        let need = ImageFormat.recordHeaderSize + (data?.count ?? 0)
        if r.buffered + need > scratch.count { try flush(r) }
        let at = UnsafeMutableRawBufferPointer(rebasing: scratch[r.buffered..<r.buffered + need])
        var copied: UnsafeRawBufferPointer?
        if let data, data.count > 0 {
            let dst = UnsafeMutableRawBufferPointer(rebasing: at[ImageFormat.recordHeaderSize...])
            dst.copyMemory(from: data)
            copied = UnsafeRawBufferPointer(dst)
        }
        encodeRecordHeader(
            UnsafeMutableRawBufferPointer(rebasing: at[0..<ImageFormat.recordHeaderSize]), kind: kind, address: address,
            length: length, data: copied, state: hashState)
        r.buffered += need
        if kind != .seal { r.records += 1 }
    }

    private func flush(_ r: OpenRound) throws(ImageError) {
        guard r.buffered > 0 else { return }
        try r.journal.writeAll(UnsafeRawBufferPointer(rebasing: scratch[0..<r.buffered]))
        r.written += UInt64(r.buffered)
        r.buffered = 0
    }

    /// Drops the open round: its journal is removed; the committed round is untouched.
    public func abortRound() {
        guard let r = open else { return }
        open = nil
        try? r.journal.fd.close()
        try? unlinkIfPresent(r.journal.path)
        // Undo in-place writes to fresh addresses: back to the committed files.
        do {
            try join()
            dirtyFiles.formUnion(try applier.reconcileFiles(manifest))
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
        let t0 = monotonicNanoseconds()
        var m = manifest
        do {
            let sealAt = r.written + UInt64(r.buffered)
            try append(r, .seal, r.records, sealAt, nil)
            try flush(r)
            try r.journal.fsync()
            for id in r.directFiles.sorted() { try file(id, create: true).fsync() }
            // A running apply that punches or truncates where this round reserves would undo the reservation.
            if let job = running, job.conflicts(with: r) { try join() }
            try reserveBlocks(r)
            try fsyncDirectory(directory)  // the journal's directory entry, before the commit names it
        } catch {
            abortRound()
            throw error
        }
        let t1 = monotonicNanoseconds()
        let now = wallNanoseconds()
        let record = RoundRecord(
            round: r.round, dataPages: r.dataPages, dataBytes: r.dataBytes, zeroPages: r.zeroPages,
            discardedPages: r.discardedPages, journalBytes: r.written, committedAt: now, layoutChanged: r.layoutChanged)
        m.committedRound = r.round
        m.updatedAt = now
        m.journalBytes = r.written
        m.journalRecords = r.records
        m.journals.append(
            JournalEntry(round: r.round, bytes: r.written, records: r.records, nextFileID: r.nextFileID, grown: r.grown))
        m.legacy = false
        m.nextFileID = r.nextFileID
        m.regions = r.regions
        m.files = r.files
        m.segments = r.segments
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
        try? r.journal.fd.close()
        let t2 = monotonicNanoseconds()
        if testStopAfterPublish {
            poisoned = "stopped after the commit point (test)"
            throw .mustReopen(poisoned!)
        }
        pendingApply = (r.round, r.layoutChanged, r.punches)
        var checkpointNs: UInt64 = 0
        if !deferApply {
            try applyPending()
            if final || checkpointDue {
                try checkpoint()
                checkpointNs = lastCheckpointNanoseconds
            }
        }
        let t3 = monotonicNanoseconds()
        return CommitInfo(
            round: r.round, record: record, directBytes: r.directBytes, syncNanoseconds: t1 - t0,
            publishNanoseconds: t2 - t1, applyNanoseconds: t3 - t2 - checkpointNs, checkpointNanoseconds: checkpointNs)
    }

    /// Reserves (fallocate KEEP_SIZE) the file blocks the round will write, so
    /// applying it after the commit point cannot fail with ENOSPC.
    private func reserveBlocks(_ r: OpenRound) throws(ImageError) {
        for res in r.reservations {
            let f = try file(res.fileID, create: true)
            if try !f.reserve(at: res.offset, length: res.length) { return }
        }
    }

    /// Writes `m` to `manifest.tmp`, fsyncs it, renames it over `manifest` and
    /// fsyncs the directory: the atomic commit point.
    private func publish(_ m: Manifest) throws(ImageError) {
        let tmp = directory + "/manifest.tmp"
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
        m.updatedAt = wallNanoseconds()
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
        let names = try listDirectory(directory)
        try? unlinkIfPresent(directory + "/manifest.tmp")
        var action = ImageRecovery.clean
        let listed = Set(manifest.journals.map(\.round))
        for name in names.sorted() where name.hasPrefix("journal-") {
            guard let round = UInt32(name.dropFirst("journal-".count)), !listed.contains(round) else { continue }
            // Older: checkpointed, its unlink was not durable. Newer: never committed.
            try unlinkIfPresent(directory + "/" + name)
            if round > manifest.committedRound ?? 0 || manifest.committedRound == nil, action == .clean {
                action = .discardedJournal(round: round)
            }
        }
        var entries = manifest.journals
        if manifest.legacy {
            // 1.x: the committed journal may have been applied and removed already.
            entries = entries.filter { access(journalPath($0.round), F_OK) == 0 }
        }
        if entries.isEmpty {
            // Fully checkpointed: every file the manifest names must be there (a
            // missing one would otherwise be recreated empty and read as zeros).
            for f in manifest.files where access(filePath(f.id), F_OK) != 0 {
                throw .corrupt(file: filePath(f.id), reason: "region file missing")
            }
        }
        // Verify every committed journal before changing anything.
        var journals: [ImageFile] = []
        for entry in entries {
            let path = journalPath(entry.round)
            guard access(path, F_OK) == 0 else { throw .corrupt(file: path, reason: "committed journal missing") }
            let journal = try ImageFile(path: path, flags: O_RDONLY)
            try applier.verify(entry, journal)
            journals.append(journal)
        }
        // Undo in-place writes of an uncommitted round (and anything else outside
        // the manifest), size the files, then replay the journals in order.
        dirtyFiles.formUnion(try applier.reconcileFiles(manifest))
        for (entry, journal) in zip(entries, journals) {
            dirtyFiles.formUnion(
                try applier.apply(entry, m: manifest, journal: journal, verifyFirst: false, layoutPass: false, replay: true))
        }
        applier.dropDescriptors()
        try removeUnreferencedFiles(try listDirectory(directory))
        if let last = entries.last { action = .reappliedJournal(round: last.round) }
        replayedJournals = entries.map(\.round)
        recovery = action
        journals.removeAll()
        poisoned = nil
        if !manifest.journals.isEmpty { try checkpoint() }
    }

    private func removeUnreferencedFiles(_ names: [String]) throws(ImageError) {
        let live = Set(manifest.files.map(\.id))
        for name in names where name.hasPrefix("mem-") && name.hasSuffix(".bin") {
            guard let id = UInt32(name.dropFirst(4).dropLast(4), radix: 16), !live.contains(id) else { continue }
            if open != nil && id >= manifest.nextFileID { continue }  // the open round's new files
            files[id] = nil
            dirtyFiles.remove(id)
            try unlinkIfPresent(directory + "/" + name)
        }
    }

    // MARK: reading

    /// Reads committed memory `[address, address + buffer.count)`; never-written
    /// and discarded pages read as zeros. Throws `outsideLayout` for addresses
    /// not in the committed layout. An open round's writes are not visible.
    public func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ImageError) {
        try applyPending()
        try checkUsable()
        guard buffer.count > 0 else { return }
        let bases = Dictionary(manifest.files.map { ($0.id, $0.base) }, uniquingKeysWith: { a, _ in a })
        try forEachPiece(manifest.segments, address, address + UInt64(buffer.count)) { s, a, e throws(ImageError) in
            let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(a - address)..<Int(e - address)])
            _ = try file(s.fileID, create: false).preadFull(dst, at: a - bases[s.fileID]!)
        }
    }

    /// The memory digest (ARCHITECTURE.md) of the committed image: per region
    /// ascending, its bounds then its bytes. Holes (SEEK_HOLE) are fed as zeros
    /// without reading them.
    ///
    /// `version` picks the canonical form (v2: zero runs cost O(1), so the time
    /// follows the stored data, not the declared layout). `isCancelled` is asked
    /// before every region and every read chunk (≤ 8 MiB); when it answers true
    /// the walk stops with ``ImageError/cancelled(_:)``.
    public func computeDigest(version: DigestVersion = .v1, isCancelled: () -> Bool = { false }) throws(ImageError) -> MemoryDigest {
        try applyPending()
        try checkUsable()
        let digester = MemoryDigester(version: version)
        try walkCommitted(isCancelled: isCancelled) { region in
            digester.beginRegion(start: region.start, end: region.end)
        } data: { p in
            digester.update(p)
        } zeros: { n in
            digester.updateZeros(count: Int(n))
        }
        return digester.finalize()
    }

    /// Walks the committed layout region by region, data extents read in large
    /// chunks, holes reported by length.
    private func walkCommitted(
        isCancelled: () -> Bool = { false },
        region: (ImageRegion) -> Void, data: (UnsafeRawBufferPointer) -> Void, zeros: (UInt64) -> Void
    ) throws(ImageError) {
        let bases = Dictionary(manifest.files.map { ($0.id, $0.base) }, uniquingKeysWith: { a, _ in a })
        readBufferAllocated = true
        let buffer = readBuffer
        for r in manifest.regions {
            if isCancelled() { throw .cancelled("digest stopped at region 0x\(String(r.start, radix: 16))") }
            region(r)
            try forEachPiece(manifest.segments, r.start, r.end) { s, a, e throws(ImageError) in
                let f = try file(s.fileID, create: false)
                var pos = a - bases[s.fileID]!
                let end = e - bases[s.fileID]!
                while pos < end {
                    let dataAt = min(try f.nextData(pos) ?? end, end)
                    if dataAt > pos {
                        zeros(dataAt - pos)
                        pos = dataAt
                        continue
                    }
                    let holeAt = min(max(try f.nextHole(pos), pos + imagePageSize), end)
                    while pos < holeAt {
                        if isCancelled() { throw .cancelled("digest stopped at 0x\(String(pos + bases[s.fileID]!, radix: 16))") }
                        let n = Int(min(UInt64(buffer.count), holeAt - pos))
                        let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                        _ = try f.preadFull(chunk, at: pos)
                        data(UnsafeRawBufferPointer(chunk))
                        pos += UInt64(n)
                    }
                }
            }
        }
    }

    /// Bytes of the committed layout that are data, not holes (SEEK_DATA/SEEK_HOLE only, no reads).
    public func storedBytes() throws(ImageError) -> UInt64 {
        try applyPending()
        let bases = Dictionary(manifest.files.map { ($0.id, $0.base) }, uniquingKeysWith: { a, _ in a })
        var total: UInt64 = 0
        for s in manifest.segments {
            let f = try file(s.fileID, create: false)
            var pos = s.start - bases[s.fileID]!
            let end = s.end - bases[s.fileID]!
            while pos < end, let dataAt = try f.nextData(pos), dataAt < end {
                let holeAt = min(max(try f.nextHole(dataAt), dataAt + imagePageSize), end)
                total += holeAt - dataAt
                pos = holeAt
            }
        }
        return total
    }

    /// Reads an image's committed manifest without locking or recovering it, to
    /// watch a migration a receiver is writing. Stored pages and disk use are
    /// best effort (the writer may be changing the files meanwhile).
    public static func peek(directory: String) throws(ImageError) -> ImageInfo {
        let dir = directory.hasSuffix("/") ? String(directory.dropLast()) : directory
        let path = dir + "/manifest"
        let bytes: [UInt8]
        do {
            bytes = try readWholeFile(path)
        } catch {
            if case .io(_, _, .ENOENT) = error { throw .notAnImage(directory: dir) }
            throw error
        }
        let m = try Manifest.decode(bytes, file: path)
        var stored: UInt64 = 0
        for s in m.segments {
            guard let f = m.files.first(where: { $0.id == s.fileID }),
                let file = try? ImageFile(path: dir + "/mem-" + hex8(f.id) + ".bin", flags: O_RDONLY)
            else { continue }
            var pos = s.start - f.base
            let end = s.end - f.base
            while pos < end, let d = (try? file.nextData(pos)) ?? nil, d < end {
                let holeAt = min(max((try? file.nextHole(d)) ?? end, d + imagePageSize), end)
                stored += holeAt - d
                pos = holeAt
            }
        }
        return ImageInfo(
            directory: dir, migrationID: m.migrationID, state: m.state,
            failureReason: m.state == .failed ? m.failureReason : nil, committedRound: m.committedRound,
            layout: m.regions, rounds: m.history, storedPages: stored / imagePageSize, diskBytes: diskUse(dir),
            logicalBytes: m.regions.reduce(0) { $0 + $1.byteCount }, finalDigest: m.digest, createdAt: m.createdAt,
            updatedAt: m.updatedAt, recovery: .clean, checkpointedRound: m.checkpointedRound,
            pendingJournals: m.journals.map(\.round), owner: Self.ownerOrProblem(dir, m.migrationID))
    }

    static func diskUse(_ dir: String) -> UInt64 {
        var disk: UInt64 = 0
        for name in (try? listDirectory(dir)) ?? [] {
            var st = stat()
            if lstat(dir + "/" + name, &st) == 0 { disk += UInt64(st.st_blocks) * 512 }
        }
        return disk
    }

    /// A summary for `memhaul image inspect`.
    public func info() throws(ImageError) -> ImageInfo {
        try applyPending()
        try checkUsable()
        let stored = try storedBytes()
        let disk = Self.diskUse(directory)
        return ImageInfo(
            directory: directory, migrationID: manifest.migrationID, state: manifest.state,
            failureReason: failureReason, committedRound: manifest.committedRound, layout: manifest.regions,
            rounds: manifest.history, storedPages: stored / imagePageSize, diskBytes: disk,
            logicalBytes: manifest.regions.reduce(0) { $0 + $1.byteCount }, finalDigest: manifest.digest,
            createdAt: manifest.createdAt, updatedAt: manifest.updatedAt, recovery: recovery,
            checkpointedRound: manifest.checkpointedRound, pendingJournals: manifest.journals.map(\.round),
            owner: Self.ownerOrProblem(directory, manifest.migrationID))
    }
}

/// 8 lower-case hex digits.
func hex8(_ v: UInt32) -> String {
    let hex = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 8 - hex.count)) + hex
}

/// The state of the open round.
final class OpenRound {
    let round: UInt32
    let regions: [ImageRegion]
    let segments: [Segment]
    let files: [FileEntry]
    let fileBases: [UInt32: UInt64]
    let nextFileID: UInt32
    /// Address ranges not in the committed layout, in new files: written in place, not journaled.
    let fresh: [(UInt64, UInt64)]
    /// Address ranges not in the committed layout, in files that exist: journaled.
    let grown: [ImageRange]
    let layoutChanged: Bool
    let journal: ImageFile
    var directFiles: Set<UInt32> = []
    /// In-place writes since writeback was last started: (file, fd, range, bytes).
    private var unsynced: (file: UInt32, fd: Int32, from: UInt64, to: UInt64, bytes: UInt64)?

    /// Starts writeback of in-place writes every `ImageStore.writebackKickBytes`
    /// (or when another file is written), so the disk works during the round
    /// and the fsync at the commit point finds little left.
    func noteUnsynced(file: UInt32, fd: Int32, from: UInt64, to: UInt64) {
        if var u = unsynced, u.file == file {
            u.from = min(u.from, from)
            u.to = max(u.to, to)
            u.bytes += to - from
            unsynced = u
        } else {
            kickWriteback()
            unsynced = (file, fd, from, to, to - from)
        }
        if let u = unsynced, u.bytes >= ImageStore.writebackKickBytes { kickWriteback() }
    }

    func kickWriteback() {
        guard let u = unsynced else { return }
        startWriteback(u.fd, from: u.from, count: u.to - u.from)
        unsynced = nil
    }
    var directBytes: UInt64 = 0
    /// Journal bytes written to the file, and waiting in the scratch buffer.
    var written: UInt64 = 0
    var buffered = 0
    var records: UInt64 = 0
    var dataPages: UInt64 = 0
    var dataBytes: UInt64 = 0
    var zeroPages: UInt64 = 0
    var discardedPages: UInt64 = 0
    /// File ranges the round writes, coalesced, reserved before the commit.
    var reservations: [(fileID: UInt32, offset: UInt64, length: UInt64)] = []
    /// File ranges the round's journal punches (zero, discard) when applied.
    var punches: [FileRange] = []

    init(
        round: UInt32, regions: [ImageRegion], segments: [Segment], files: [FileEntry], nextFileID: UInt32,
        fresh: [(UInt64, UInt64)], grown: [ImageRange], layoutChanged: Bool, journal: ImageFile
    ) {
        self.fresh = fresh
        self.grown = grown
        self.round = round
        self.regions = regions
        self.segments = segments
        self.files = files
        self.fileBases = Dictionary(files.map { ($0.id, $0.base) }, uniquingKeysWith: { a, _ in a })
        self.nextFileID = nextFileID
        self.layoutChanged = layoutChanged
        self.journal = journal
    }

    func addReservation(_ fileID: UInt32, _ offset: UInt64, _ length: UInt64) {
        if let last = reservations.last, last.fileID == fileID, last.offset + last.length == offset {
            reservations[reservations.count - 1].length += length
        } else {
            reservations.append((fileID, offset, length))
        }
    }
}

/// A range of a region file.
struct FileRange: Hashable {
    var fileID: UInt32
    var offset: UInt64
    var length: UInt64
}

/// An apply running on `ImageStore.applyQueue`; its fields are written by the
/// worker and read by the store only after `item.wait()`.
final class ApplyJob: @unchecked Sendable {  // unchecked: handed over by DispatchWorkItem.wait (happens-before)
    let round: UInt32
    let layoutPass: Bool
    let punches: [FileRange]
    var item: DispatchWorkItem?
    var touched: Set<UInt32> = []
    var error: ImageError?

    init(round: UInt32, layoutPass: Bool, punches: [FileRange]) {
        self.round = round
        self.layoutPass = layoutPass
        self.punches = punches
    }

    /// Whether this apply could free blocks the open round reserves: its layout
    /// pass truncates files the round grows, or a punch overlaps a reservation.
    func conflicts(with r: OpenRound) -> Bool {
        if layoutPass && !r.grown.isEmpty { return true }
        guard !punches.isEmpty, !r.reservations.isEmpty else { return false }
        let a = punches.sorted { ($0.fileID, $0.offset) < ($1.fileID, $1.offset) }
        let b = r.reservations.sorted { ($0.fileID, $0.offset) < ($1.fileID, $1.offset) }
        var i = 0, j = 0
        while i < a.count && j < b.count {
            if a[i].fileID != b[j].fileID {
                if a[i].fileID < b[j].fileID { i += 1 } else { j += 1 }
                continue
            }
            if a[i].offset < b[j].offset + b[j].length && b[j].offset < a[i].offset + a[i].length { return true }
            if a[i].offset + a[i].length <= b[j].offset + b[j].length { i += 1 } else { j += 1 }
        }
        return false
    }
}

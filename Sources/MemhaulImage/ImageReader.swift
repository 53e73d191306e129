#if canImport(Glibc)
import Glibc
#endif
import MemhaulDigest

/// Committed memory an image exposes: ``ImageStore`` (the writer) and
/// ``ImageReader`` (read-only) both read it the same way.
public protocol CommittedImage: AnyObject {
    /// The committed layout, ascending.
    var layout: [ImageRegion] { get }
    /// Reads committed memory `[address, address + buffer.count)`; `outsideLayout`
    /// for addresses not in the committed layout.
    func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ImageError)
}

extension ImageStore: CommittedImage {}

/// Read-only access to an image at its last committed round: `memhaul image
/// read`, `inspect` and `verify` (Protocol/image.md, "Reading").
///
/// It never writes: it opens every file `O_RDONLY` (it works on a read-only
/// file system), creates nothing and runs no recovery. It takes the shared
/// form of the image lock, `flock(migration.lock, LOCK_SH|LOCK_NB)`, never
/// waiting for it: readers coexist, and while one holds it no receiver can
/// open (and so recover or commit) the image under it. If a receiver holds the
/// image, the reader reads without a lock (``live``): what it reads is the
/// round committed when it opened, as long as ``isUnchanged()`` says so.
///
/// Committed journals not yet applied to the region files (a crash, or a
/// receiver that acknowledged a round before applying it) are verified whole
/// at open and read through in memory, exactly as recovery would replay them:
/// the reader returns the committed content without writing it back.
public final class ImageReader: CommittedImage {
    public let directory: String
    /// A receiver held the image when it was opened: no lock is held, and a
    /// commit meanwhile can change what the files hold (``isUnchanged()``).
    public let live: Bool
    let paths: ImagePaths
    private let lock: ImageLock?
    private let manifestBytes: [UInt8]
    let manifest: Manifest
    private let content: CommittedContent
    /// Region files opened so far, by id; nil: missing (reads as zeros: recovery would create it).
    private var files: [UInt32: ImageFile?] = [:]
    private let fileIDs: Set<UInt32>
    private var journals: JournalOverlay
    private var closed = false

    private init(
        paths: ImagePaths, lock: ImageLock?, live: Bool, manifestBytes: [UInt8], manifest: Manifest, journals: JournalOverlay
    ) {
        self.directory = paths.directory
        self.paths = paths
        self.lock = lock
        self.live = live
        self.manifestBytes = manifestBytes
        self.manifest = manifest
        self.content = CommittedContent(manifest)
        self.fileIDs = Set(manifest.files.map(\.id))
        self.journals = journals
    }

    deinit { lock?.release() }

    /// Opens the image in `directory` for reading at its committed round. Never
    /// blocks and never writes; errors are those of a damaged image
    /// (`notAnImage`, `corrupt`, `badChecksum`, …), as `ImageStore.open` would
    /// report them. With `requireLock`, an image a receiver is writing is
    /// refused (`locked`) instead of read ``live``.
    public static func open(directory: String, requireLock: Bool = false) throws(ImageError) -> ImageReader {
        let paths = ImagePaths(directory)
        let lock = try ImageLock.shared(paths)
        let live = lock == nil && access(paths.lock, F_OK) == 0
        if live && requireLock { throw .locked(directory: paths.directory) }
        var attempts = 0
        while true {
            let bytes = try Manifest.readBytes(paths)
            let m = try Manifest.decode(bytes, file: paths.manifest)
            do throws(ImageError) {
                let entries = try Recovery.committedJournals(paths, m)
                let journals = try JournalOverlay(paths, m, entries)
                return ImageReader(paths: paths, lock: lock, live: live, manifestBytes: bytes, manifest: m, journals: journals)
            } catch {
                // A live receiver checkpointed (unlinking journals) or dropped files between
                // the manifest and here: start over from its new manifest (it made progress).
                guard live, attempts < 64, (try? Manifest.readBytes(paths)) != bytes else { throw error }
                attempts += 1
            }
        }
    }

    /// Releases the shared lock and every descriptor (so a read-only mount can
    /// be unmounted); later reads fail.
    public func close() {
        lock?.release()
        files = [:]
        journals = JournalOverlay()
        closed = true
    }

    // MARK: state (of the committed round the reader opened at)

    public var migrationID: String { manifest.migrationID }
    public var committedRound: UInt32? { manifest.committedRound }
    public var layout: [ImageRegion] { manifest.regions }
    public var state: ImageState { manifest.state }
    public var rounds: [RoundRecord] { manifest.history }
    public var finalDigest: MemoryDigest? { manifest.digest }
    public var failureReason: String? { manifest.state == .failed ? manifest.failureReason : nil }
    public var checkpointedRound: UInt32? { manifest.checkpointedRound }
    /// Committed journals after the checkpoint, ascending.
    public var pendingJournals: [UInt32] { manifest.journals.map(\.round) }
    /// The committed journals read through in memory (not applied to the
    /// region files yet; a receiver's open would replay them).
    public var journalsReadThrough: [UInt32] { journals.rounds }

    /// Whether the manifest is still the one the reader opened at: then every
    /// read so far returned that round's content. Always true while the reader
    /// holds the shared lock; a live reader checks it after reading.
    public func isUnchanged() throws(ImageError) -> Bool {
        try Manifest.readBytes(paths) == manifestBytes
    }

    /// Throws `changedWhileReading` unless ``isUnchanged()``.
    public func checkUnchanged() throws(ImageError) {
        guard try isUnchanged() else { throw .changedWhileReading(directory: directory) }
    }

    // MARK: reading

    /// A region file, opened on first use (read-only). Missing: zeros while
    /// journals are pending (reconciling would create it), else `corrupt`; for
    /// a live reader, `changedWhileReading` if a commit removed it.
    private func file(_ id: UInt32) throws(ImageError) -> ImageFile? {
        if closed { throw .mustReopen("the reader of \(directory) is closed") }
        if let f = files[id] { return f }
        let path = paths.regionFile(id)
        guard fileIDs.contains(id) else { throw .corrupt(file: path, reason: "region file not in the manifest") }
        do {
            let f = try ImageFile(path: path, flags: O_RDONLY)
            files[id] = f
            return f
        } catch {
            guard case .io(_, _, .ENOENT) = error else { throw error }
            if live, try !isUnchanged() { throw .changedWhileReading(directory: directory) }
            guard !journals.isEmpty else { throw .corrupt(file: path, reason: "region file missing") }
            files[id] = .some(nil)
            return nil
        }
    }

    /// Reads committed memory `[address, address + buffer.count)`: the region
    /// files, then the unapplied committed journals over them, in memory.
    public func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ImageError) {
        guard buffer.count > 0 else { return }
        try content.read(at: address, into: buffer, file: file)
        try journals.overlay(manifest, at: address, into: buffer)
    }

    /// The memory digest (ARCHITECTURE.md) of the committed image, as
    /// ``ImageStore/computeDigest(version:isCancelled:)`` computes it after recovery.
    /// With unapplied journals it reads the whole layout through the overlay
    /// (cost: the layout, whatever the version).
    public func computeDigest(version: DigestVersion = .v1) throws(ImageError) -> MemoryDigest {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: ImageStore.scratchSize, alignment: 4096)
        defer { buffer.deallocate() }
        if journals.isEmpty { return try content.digest(buffer: buffer, version: version, file: file) }
        let digester = MemoryDigester(version: version)
        for r in manifest.regions {
            digester.beginRegion(start: r.start, end: r.end)
            var at = r.start
            while at < r.end {
                let n = Int(min(UInt64(buffer.count), r.end - at))
                let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                try read(at: at, into: chunk)
                digester.update(UnsafeRawBufferPointer(chunk))
                at += UInt64(n)
            }
        }
        return digester.finalize()
    }

    /// A summary for `memhaul image inspect`. Stored pages count the region
    /// files' data only (not pages still in unapplied journals).
    public func info() throws(ImageError) -> ImageInfo {
        ImageInfo(manifest, directory: directory, storedBytes: try content.storedBytes(file: file), recovery: .clean)
    }
}

/// Reads of the committed image over its manifest and region files. The store
/// reads through it after its apply; the reader adds ``JournalOverlay``.
struct CommittedContent {
    let m: Manifest
    private let bases: [UInt32: UInt64]

    init(_ m: Manifest) {
        self.m = m
        bases = Dictionary(m.files.map { ($0.id, $0.base) }, uniquingKeysWith: { a, _ in a })
    }

    /// A region file by id; nil when it does not exist (reads as zeros).
    typealias Files = (UInt32) throws(ImageError) -> ImageFile?

    /// Calls `body(segment, start, end, vacant)` for each piece of `[start,
    /// end)`, split at the vacant ranges: those read as zeros, whatever the
    /// file holds (an open or crashed round's in-place writes). `outsideLayout`
    /// as ``forEachPiece``.
    private func forEachContentPiece(
        _ start: UInt64, _ end: UInt64, _ body: (Segment, UInt64, UInt64, Bool) throws(ImageError) -> Void
    ) throws(ImageError) {
        let vacant = m.vacant
        try forEachPiece(m.segments, start, end) { s, a, e throws(ImageError) in
            try vacant.forEachPiece(of: a, e) { x, y, isVacant throws(ImageError) in try body(s, x, y, isVacant) }
        }
    }

    func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer, file: Files) throws(ImageError) {
        guard buffer.count > 0 else { return }
        try forEachContentPiece(address, address + UInt64(buffer.count)) { s, a, e, vacant throws(ImageError) in
            let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(a - address)..<Int(e - address)])
            if !vacant, let f = try file(s.fileID) {
                _ = try f.preadFull(dst, at: a - bases[s.fileID]!)
            } else {
                dst.initializeMemory(as: UInt8.self, repeating: 0)
            }
        }
    }

    /// The memory digest: per region ascending, its bounds then its bytes;
    /// holes (SEEK_HOLE) fed as zeros without reading them (v2: counted, O(1)).
    /// `isCancelled` is asked before each region and each read chunk.
    func digest(buffer: UnsafeMutableRawBufferPointer, version: DigestVersion = .v1, recording: PageLedger? = nil,
                isCancelled: () -> Bool = { false }, file: Files) throws(ImageError) -> MemoryDigest {
        let digester = MemoryDigester(version: version, recording: recording)
        for r in m.regions {
            if isCancelled() { throw .cancelled("digest stopped at region 0x\(String(r.start, radix: 16))") }
            digester.beginRegion(start: r.start, end: r.end)
            try forEachContentPiece(r.start, r.end) { s, a, e, vacant throws(ImageError) in
                guard !vacant, let f = try file(s.fileID) else {
                    digester.updateZeros(count: Int(e - a))
                    return
                }
                var pos = a - bases[s.fileID]!
                let end = e - bases[s.fileID]!
                while pos < end {
                    let dataAt = min(try f.nextData(pos) ?? end, end)
                    if dataAt > pos {
                        digester.updateZeros(count: Int(dataAt - pos))
                        pos = dataAt
                        continue
                    }
                    let holeAt = min(max(try f.nextHole(pos), pos + imagePageSize), end)
                    while pos < holeAt {
                        if isCancelled() { throw .cancelled("digest stopped at 0x\(String(pos + bases[s.fileID]!, radix: 16))") }
                        let n = Int(min(UInt64(buffer.count), holeAt - pos))
                        let chunk = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                        _ = try f.preadFull(chunk, at: pos)
                        digester.update(UnsafeRawBufferPointer(chunk))
                        pos += UInt64(n)
                    }
                }
            }
        }
        return digester.finalize()
    }

    /// Bytes of the committed layout that are data, not holes (SEEK_DATA/SEEK_HOLE only, no reads).
    func storedBytes(file: Files) throws(ImageError) -> UInt64 {
        var total: UInt64 = 0
        for seg in m.segments {
            try forEachContentPiece(seg.start, seg.end) { s, a, e, vacant throws(ImageError) in
                guard !vacant, let f = try file(s.fileID) else { return }
                var pos = a - bases[s.fileID]!
                let end = e - bases[s.fileID]!
                while pos < end, let dataAt = try f.nextData(pos), dataAt < end {
                    let holeAt = min(max(try f.nextHole(dataAt), dataAt + imagePageSize), end)
                    total += holeAt - dataAt
                    pos = holeAt
                }
            }
        }
        return total
    }
}

/// The committed journals a recovery would replay, verified whole and indexed
/// at open, laid over reads in memory with the replay's rules (Protocol/image.md,
/// "Recovery", step 6): per journal in ascending order, its grown ranges read
/// as zeros, then its records in order; parts outside the layout, or mapped to
/// a file with id ≥ the journal's `nextFileID`, are skipped.
final class JournalOverlay {
    private struct Record {
        var kind: RecordKind
        var address: UInt64
        var length: UInt64
        /// Offset of a data record's bytes in the journal.
        var dataOffset: UInt64
    }

    private struct Journal {
        var entry: JournalEntry
        var file: ImageFile
        var records: [Record]
    }

    private let journals: [Journal]

    var isEmpty: Bool { journals.isEmpty }

    /// No journals.
    init() { journals = [] }
    var rounds: [UInt32] { journals.map(\.entry.round) }

    init(_ paths: ImagePaths, _ m: Manifest, _ entries: [JournalEntry]) throws(ImageError) {
        guard !entries.isEmpty else {
            journals = []
            return
        }
        let verifier = JournalApplier(directory: paths.directory, imageID: imageID(of: m.migrationID))
        var journals: [Journal] = []
        for entry in entries {
            let path = paths.journal(entry.round)
            let file: ImageFile
            do {
                file = try ImageFile(path: path, flags: O_RDONLY)
            } catch {
                if case .io(_, _, .ENOENT) = error { throw .corrupt(file: path, reason: "committed journal missing") }
                throw error
            }
            var records: [Record] = []
            var offset = UInt64(ImageFormat.journalHeaderSize)
            try verifier.forEachRecord(file, round: entry.round, bytes: entry.bytes, records: entry.records, flushing: {}) {
                kind, address, length, _ throws(ImageError) in
                let data = kind == .data ? length : 0
                records.append(Record(kind: kind, address: address, length: length, dataOffset: offset + UInt64(ImageFormat.recordHeaderSize)))
                offset += UInt64(ImageFormat.recordHeaderSize) + data
            }
            journals.append(Journal(entry: entry, file: file, records: records))
        }
        self.journals = journals
    }

    /// Lays the journals over `buffer`, which holds the region files' bytes at `address`.
    func overlay(_ m: Manifest, at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ImageError) {
        guard !journals.isEmpty, buffer.count > 0 else { return }
        let end = address + UInt64(buffer.count)
        for j in journals {
            let limit = j.entry.nextFileID
            func zero(_ start: UInt64, _ stop: UInt64) throws(ImageError) {
                try forEachCoveredPiece(m.segments, max(start, address), min(stop, end)) { s, a, e throws(ImageError) in
                    guard s.fileID < limit else { return }
                    (buffer.baseAddress! + Int(a - address)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(e - a))
                }
            }
            for g in j.entry.grown where g.start < end && g.end > address { try zero(g.start, g.end) }
            for r in j.records where r.address < end && r.address + r.length > address {
                switch r.kind {
                case .data:
                    try forEachCoveredPiece(m.segments, max(r.address, address), min(r.address + r.length, end)) {
                        s, a, e throws(ImageError) in
                        guard s.fileID < limit else { return }
                        let dst = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(a - address)..<Int(e - address)])
                        let got = try j.file.preadFull(dst, at: r.dataOffset + (a - r.address))
                        guard got == dst.count else { throw .truncated(file: j.file.path) }
                    }
                case .zero, .discard:
                    try zero(r.address, r.address + r.length)
                case .seal:
                    break
                }
            }
        }
    }
}

extension Manifest {
    /// The manifest's bytes; `notAnImage` without one.
    static func readBytes(_ paths: ImagePaths) throws(ImageError) -> [UInt8] {
        do {
            return try readWholeFile(paths.manifest)
        } catch {
            if case .io(_, _, .ENOENT) = error { throw .notAnImage(directory: paths.directory) }
            throw error
        }
    }

    /// Reads and verifies the manifest (any damage is an error).
    static func read(_ paths: ImagePaths) throws(ImageError) -> Manifest {
        try decode(try readBytes(paths), file: paths.manifest)
    }
}

extension ImageInfo {
    init(_ m: Manifest, directory: String, storedBytes: UInt64, recovery: ImageRecovery) {
        self.init(
            directory: directory, migrationID: m.migrationID, state: m.state,
            failureReason: m.state == .failed ? m.failureReason : nil, committedRound: m.committedRound,
            layout: m.regions, rounds: m.history, storedPages: storedBytes / imagePageSize, diskBytes: ImageStore.diskUse(directory),
            logicalBytes: m.regions.reduce(0) { $0 + $1.byteCount }, finalDigest: m.digest, createdAt: m.createdAt,
            updatedAt: m.updatedAt, recovery: recovery, checkpointedRound: m.checkpointedRound,
            pendingJournals: m.journals.map(\.round), owner: ImageStore.ownerOrProblem(directory, m.migrationID))
    }
}

extension ImageStore {
    /// Reads an image's committed manifest without locking or recovering it, to
    /// watch a migration a receiver is writing. Stored pages and disk use are
    /// best effort (the writer may be changing the files meanwhile).
    public static func peek(directory: String) throws(ImageError) -> ImageInfo {
        let paths = ImagePaths(directory)
        let m = try Manifest.read(paths)
        var stored: UInt64 = 0
        for s in m.segments {
            guard let f = m.files.first(where: { $0.id == s.fileID }),
                let file = try? ImageFile(path: paths.regionFile(f.id), flags: O_RDONLY)
            else { continue }
            var pos = s.start - f.base
            let end = s.end - f.base
            while pos < end, let d = (try? file.nextData(pos)) ?? nil, d < end {
                let holeAt = min(max((try? file.nextHole(d)) ?? end, d + imagePageSize), end)
                stored += holeAt - d
                pos = holeAt
            }
        }
        return ImageInfo(m, directory: paths.directory, storedBytes: stored, recovery: .clean)
    }

    static func diskUse(_ dir: String) -> UInt64 {
        var disk: UInt64 = 0
        for name in (try? listDirectory(dir)) ?? [] {
            var st = stat()
            if lstat(dir + "/" + name, &st) == 0 { disk += UInt64(st.st_blocks) * 512 }
        }
        return disk
    }
}

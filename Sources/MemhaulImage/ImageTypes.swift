import MemhaulWire
import MemhaulDigest
import MemhaulSystem

/// Page size of the image (ARCHITECTURE.md: pages are 4096 bytes).
public let imagePageSize: UInt64 = 4096

/// Protection bits of a region, as in `/proc/PID/maps` (`rwxp` / `rwxs`).
public struct ImageProtection: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let read = ImageProtection(rawValue: 1)
    public static let write = ImageProtection(rawValue: 2)
    public static let execute = ImageProtection(rawValue: 4)
    public static let shared = ImageProtection(rawValue: 8)
    /// Backed by a file (the region's name is its path).
    public static let fileBacked = ImageProtection(rawValue: 16)
    /// Transparent huge pages were enabled for the region.
    public static let hugePages = ImageProtection(rawValue: 32)

    /// `rw-p` style, as `/proc/PID/maps` prints it.
    public var description: String {
        (contains(.read) ? "r" : "-") + (contains(.write) ? "w" : "-") + (contains(.execute) ? "x" : "-")
            + (contains(.shared) ? "s" : "p")
    }
}

/// One memory region of the image layout: `[start, end)`, page-aligned.
public struct ImageRegion: Hashable, Sendable {
    public var start: UInt64
    public var end: UInt64
    public var protection: ImageProtection
    /// The mapping's name (`[heap]`, a path, or empty for anonymous memory).
    public var name: String

    public init(start: UInt64, end: UInt64, protection: ImageProtection = [.read, .write], name: String = "") {
        self.start = start
        self.end = end
        self.protection = protection
        self.name = name
    }

    public var byteCount: UInt64 { end - start }
    public var pageCount: UInt64 { (end - start) / imagePageSize }
}


/// Where a migration's image stands.
public enum ImageState: UInt8, Sendable, CustomStringConvertible {
    /// Rounds are still arriving (or the receiver died mid-migration).
    case inProgress = 0
    /// The final round was committed.
    case complete = 1
    /// The migration was marked failed; the image stays at its last committed round.
    case failed = 2

    public var description: String {
        switch self {
        case .inProgress: "in-progress"
        case .complete: "complete"
        case .failed: "failed"
        }
    }
}

/// One committed round, as kept in the manifest's history.
public struct RoundRecord: Hashable, Sendable {
    public var round: UInt32
    /// Pages written with data this round.
    public var dataPages: UInt64
    /// Bytes of page data written this round.
    public var dataBytes: UInt64
    /// Pages zeroed this round.
    public var zeroPages: UInt64
    /// Pages discarded this round.
    public var discardedPages: UInt64
    /// Size of the round's redo journal.
    public var journalBytes: UInt64
    /// Commit time, nanoseconds since the Unix epoch.
    public var committedAt: UInt64
    /// Whether the round changed the layout.
    public var layoutChanged: Bool
}

/// What `commitRound` did and how long each step took. The store keeps the
/// last one (`ImageStore.lastCommit`), completed when a deferred apply ends.
public struct CommitInfo: Hashable, Sendable {
    public var round: UInt32
    public var record: RoundRecord
    /// Page bytes written in place (addresses new to the layout) instead of through the journal.
    public var directBytes: UInt64
    /// Region-file bytes reserved in place ahead of dense batches, gaps included (``ImageStore/reserveInPlace(_:)``).
    public var reservedBytes: UInt64 = 0
    /// Zeros written into short gaps between a dense batch's runs (``ImageStore/writeRuns(_:_:)``): disk bytes that are not page bytes.
    public var filledBytes: UInt64 = 0
    /// Journal flush + fsync + block reservation, nanoseconds.
    public var syncNanoseconds: UInt64
    /// Writing and publishing the manifest (the commit point), nanoseconds.
    public var publishNanoseconds: UInt64
    /// Applying the journal into the region files (page cache, no fsync), nanoseconds.
    public var applyNanoseconds: UInt64
    /// A checkpoint the commit took (fsync of the region files, publish, journals
    /// unlinked), nanoseconds; 0 when none was due or the apply was deferred.
    public var checkpointNanoseconds: UInt64 = 0
    /// The commit returned at the commit point (`deferApply`): `applyNanoseconds`
    /// is then known only from `ImageStore.lastCommit`, once the apply is joined.
    public var applyDeferred: Bool = false
    /// `sync_file_range` calls of the round that failed: harmless (the fsyncs
    /// of the commit wrote those bytes), but the overlap was lost.
    public var writebackFailures: Int = 0
    public var totalNanoseconds: UInt64 { syncNanoseconds + publishNanoseconds + applyNanoseconds + checkpointNanoseconds }
}

/// A summary of an image for `memhaul image inspect`.
public struct ImageInfo: Sendable {
    public var directory: String
    public var migrationID: String
    public var state: ImageState
    public var failureReason: String?
    public var committedRound: UInt32?
    public var layout: [ImageRegion]
    public var rounds: [RoundRecord]
    /// Pages that hold data in the region files (SEEK_DATA), i.e. not holes.
    public var storedPages: UInt64
    /// Bytes the image occupies on disk (`st_blocks * 512` over its files).
    public var diskBytes: UInt64
    /// Size of the layout (sum of region sizes).
    public var logicalBytes: UInt64
    /// The digest stored with the final commit, if any.
    public var finalDigest: MemoryDigest?
    /// Nanoseconds since the Unix epoch.
    public var createdAt: UInt64
    public var updatedAt: UInt64
    public var recovery: ImageRecovery
    /// Every journal up to this round is applied and fsynced into the region files.
    public var checkpointedRound: UInt32? = nil
    /// Committed journals after the checkpoint (replayed on open after a crash).
    public var pendingJournals: [UInt32] = []
    /// The sender that owns the image (`owner` file), nil if it has none, or
    /// why the record could not be read.
    public var owner: Result<ImageOwner?, ImageError> = .success(nil)
}

/// Every error the image store throws. I/O errors name the file and errno;
/// an I/O error during an open round aborts that round (its journal is removed)
/// and leaves the last committed round intact.
public enum ImageError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A system call on `file` failed.
    case io(file: String, call: String, errno: Errno)
    /// Another process holds `migration.lock` of this image.
    case locked(directory: String)
    case alreadyExists(directory: String)
    case notAnImage(directory: String)
    case badMagic(file: String)
    case badChecksum(file: String)
    case truncated(file: String)
    /// The file was written by a newer, incompatible format (major version).
    case unsupportedVersion(file: String, major: UInt16, minor: UInt16)
    case corrupt(file: String, reason: String)
    case invalidMigrationID(String)
    case invalidLayout(String)
    /// A page (or range) not inside the declared layout of the open round.
    case outsideLayout(UInt64)
    /// An address or length that is not a multiple of the page size.
    case unaligned(UInt64)
    case noOpenRound
    case roundAlreadyOpen(UInt32)
    /// Rounds must increase: `round` is not after the committed one.
    case staleRound(round: UInt32, committed: UInt32)
    /// The image is complete or failed and takes no more rounds.
    case closedImage(ImageState)
    /// A step after the commit point failed; the commit is durable but the
    /// store must be reopened (which re-applies the journal).
    case mustReopen(String)
    /// Long work (a digest) stopped because its caller asked (the peer went away).
    case cancelled(String)
    /// A receiver committed to the image while an ``ImageReader`` without the
    /// shared lock (``ImageReader/live``) read it: what was read may mix rounds.
    case changedWhileReading(directory: String)

    public var description: String {
        switch self {
        case let .io(file, call, errno): "image I/O error: \(call) on \(file): \(errno)"
        case let .locked(dir): "image \(dir) is locked by another receiver (migration.lock)"
        case let .alreadyExists(dir): "image \(dir) already exists"
        case let .notAnImage(dir): "\(dir) is not a memhaul image (no manifest)"
        case let .badMagic(file): "\(file): bad magic, not a memhaul image file"
        case let .badChecksum(file): "\(file): checksum mismatch"
        case let .truncated(file): "\(file): truncated"
        case let .unsupportedVersion(file, major, minor):
            "\(file): format version \(major).\(minor) is newer than this memhaul reads (\(ImageFormat.major).x)"
        case let .corrupt(file, reason): "\(file): corrupt: \(reason)"
        case let .invalidMigrationID(id): "invalid migration id \"\(id)\" (use \(MigrationID.rule))"
        case let .invalidLayout(reason): "invalid layout: \(reason)"
        case let .outsideLayout(addr): "address 0x\(String(addr, radix: 16)) is outside the round's layout"
        case let .unaligned(addr): "0x\(String(addr, radix: 16)) is not page-aligned"
        case .noOpenRound: "no round is open (beginRound first)"
        case let .roundAlreadyOpen(round): "round \(round) is already open"
        case let .staleRound(round, committed): "round \(round) is not after the committed round \(committed)"
        case let .closedImage(state): "the image is \(state) and takes no more rounds"
        case let .mustReopen(reason): "image must be reopened to recover: \(reason)"
        case let .cancelled(what): "cancelled: \(what)"
        case let .changedWhileReading(dir): "image \(dir) changed while it was read (a receiver committed meanwhile); read it again"
        }
    }

    /// The file an error names, if any.
    public var file: String? {
        switch self {
        case let .io(file, _, _), let .badMagic(file), let .badChecksum(file), let .truncated(file),
            let .unsupportedVersion(file, _, _), let .corrupt(file, _):
            file
        default: nil
        }
    }
}

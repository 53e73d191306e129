/// A run of consecutive pages: start address u64 (page aligned) + page count u32 (>= 1). 12 bytes on the wire.
public struct PageRun: Hashable, Comparable, Sendable {
    public static let size = 12

    public var start: UInt64
    public var pageCount: UInt32

    public init(start: UInt64, pageCount: UInt32) {
        self.start = start
        self.pageCount = pageCount
    }

    /// Exclusive end address, or nil if it does not fit in 64 bits.
    public func end(pageSize: UInt32) -> UInt64? {
        let (bytes, o1) = UInt64(pageCount).multipliedReportingOverflow(by: UInt64(pageSize))
        let (end, o2) = start.addingReportingOverflow(bytes)
        return o1 || o2 ? nil : end
    }

    public static func < (a: PageRun, b: PageRun) -> Bool { (a.start, a.pageCount) < (b.start, b.pageCount) }
}

/// Checks a run list one run at a time: every run aligned, non-empty, not wrapping, ascending
/// and non-overlapping (adjacent runs are allowed). Counts pages (cannot overflow: at most
/// 2^16 runs of < 2^32 pages).
struct RunChecker {
    let pageSize: UInt32
    private(set) var totalPages = 0
    private var previousEnd: UInt64 = 0

    init(pageSize: UInt32) { self.pageSize = pageSize }

    @inline(__always)
    mutating func add(_ run: PageRun) throws(WireError) {
        guard run.start & (UInt64(pageSize) &- 1) == 0 else { throw .unalignedAddress(run.start) }
        guard run.pageCount > 0 else { throw .emptyRange(start: run.start) }
        guard let end = run.end(pageSize: pageSize) else { throw .rangeOverflow(start: run.start) }
        guard run.start >= previousEnd else { throw .rangesUnsorted(start: run.start) }
        previousEnd = end
        totalPages &+= Int(run.pageCount)
    }

    static func check(_ runs: [PageRun], pageSize: UInt32) throws(WireError) -> Int {
        var c = RunChecker(pageSize: pageSize)
        for run in runs { try c.add(run) }
        return c.totalPages
    }
}

/// Page protection of a region (LAYOUT): bit 0 read, bit 1 write, bit 2 exec.
public struct Protection: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let read = Protection(rawValue: 1 << 0)
    public static let write = Protection(rawValue: 1 << 1)
    public static let exec = Protection(rawValue: 1 << 2)
    public static let defined: Protection = [.read, .write, .exec]
}

/// Region flags (LAYOUT).
public struct RegionFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// MAP_SHARED mapping (the sender copies its content like any other; the receiver records it).
    public static let shared = RegionFlags(rawValue: 1 << 0)
    /// File-backed: `name` is the path from /proc/PID/maps.
    public static let fileBacked = RegionFlags(rawValue: 1 << 1)
    /// Transparent huge pages are enabled for the region.
    public static let hugePages = RegionFlags(rawValue: 1 << 2)
    public static let defined: RegionFlags = [.shared, .fileBacked, .hugePages]
}

/// One memory region of the source process, `[start, end)`, page aligned. 20 bytes + name on the wire.
public struct RegionDescriptor: Hashable, Sendable {
    public static let fixedSize = 20

    public var start: UInt64
    public var end: UInt64
    public var protection: Protection
    public var flags: RegionFlags
    /// UTF-8, at most `WireLimits.maxRegionNameLength` bytes ("" for anonymous, "[heap]", a path...).
    public var name: String

    public init(start: UInt64, end: UInt64, protection: Protection, flags: RegionFlags = [], name: String = "") {
        self.start = start
        self.end = end
        self.protection = protection
        self.flags = flags
        self.name = name
    }
}

/// A 128-bit memory digest in canonical XXH128 byte order: 16 bytes, high 64 bits first,
/// each big-endian, so the bytes read in order are the 32-hex-digit display form.
public struct WireDigest: Hashable, Sendable, CustomStringConvertible {
    public static let size = 16

    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// 32 lower-case hex digits, high 64 bits first (the ARCHITECTURE.md display form).
    public var hex: String { Self.hex16(high) + Self.hex16(low) }
    public var description: String { hex }

    private static func hex16(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    func encode(into out: inout [UInt8]) {
        out.appendBE(high)
        out.appendBE(low)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> WireDigest {
        WireDigest(high: try r.readBE(UInt64.self), low: try r.readBE(UInt64.self))
    }
}

/// PAGE_BATCH payload encoding.
public enum PageEncoding: UInt8, Hashable, Sendable, CaseIterable {
    case raw = 0
    case zstd = 1
    /// Per page a u16 tag, then the page whole (tag 0xFFFF) or an XBZRLE delta against the
    /// receiver's committed page (tag = its length); only with capability `pageDelta` (wire.md).
    case delta = 2
}

/// ERROR codes (wire.md, "Error codes"). Unknown values are kept, not rejected: a newer minor may add codes.
public struct ErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let malformedFrame = ErrorCode(rawValue: 1)
    public static let unsupportedVersion = ErrorCode(rawValue: 2)
    public static let badHello = ErrorCode(rawValue: 3)
    public static let pageSizeMismatch = ErrorCode(rawValue: 4)
    public static let unexpectedMessage = ErrorCode(rawValue: 5)
    public static let checksumMismatch = ErrorCode(rawValue: 6)
    public static let decompressionFailed = ErrorCode(rawValue: 7)
    public static let roundMismatch = ErrorCode(rawValue: 8)
    public static let outsideLayout = ErrorCode(rawValue: 9)
    public static let storageFailure = ErrorCode(rawValue: 10)
    public static let migrationBusy = ErrorCode(rawValue: 11)
    public static let resumeRejected = ErrorCode(rawValue: 12)
    public static let digestMismatch = ErrorCode(rawValue: 13)
    public static let cancelled = ErrorCode(rawValue: 14)
    public static let internalError = ErrorCode(rawValue: 15)
    /// The sender's certificate is valid but not authorised for this migration
    /// id (another sender's image, or no policy rule allows it).
    public static let unauthorized = ErrorCode(rawValue: 16)
    /// The CRIU hand-over failed on the receiver (files refused, CRIU's restore failed):
    /// the message quotes why. The sender resumes its source.
    public static let restoreFailed = ErrorCode(rawValue: 17)
    /// A limit of the receiver (wire.md "Receiver limits") was reached: regions
    /// or bytes of a round's layout, pages of a round, image bytes of a
    /// migration, images of one sender.
    public static let limitExceeded = ErrorCode(rawValue: 18)

    public var description: String {
        switch self {
        case .malformedFrame: "malformed-frame"
        case .unsupportedVersion: "unsupported-version"
        case .badHello: "bad-hello"
        case .pageSizeMismatch: "page-size-mismatch"
        case .unexpectedMessage: "unexpected-message"
        case .checksumMismatch: "checksum-mismatch"
        case .decompressionFailed: "decompression-failed"
        case .roundMismatch: "round-mismatch"
        case .outsideLayout: "outside-layout"
        case .storageFailure: "storage-failure"
        case .migrationBusy: "migration-busy"
        case .resumeRejected: "resume-rejected"
        case .digestMismatch: "digest-mismatch"
        case .cancelled: "cancelled"
        case .internalError: "internal-error"
        case .unauthorized: "unauthorized"
        case .restoreFailed: "restore-failed"
        case .limitExceeded: "limit-exceeded"
        default: "error-\(rawValue)"
        }
    }
}

/// CLOSE reasons. Unknown values are kept.
public struct CloseReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The migration finished: the final round was acknowledged with a matching digest.
    public static let complete = CloseReason(rawValue: 0)
    /// An operator cancelled the migration.
    public static let cancelled = CloseReason(rawValue: 1)
    /// The process is shutting down; the migration may be resumed later.
    public static let shutdown = CloseReason(rawValue: 2)
    /// An ERROR frame was sent just before.
    public static let error = CloseReason(rawValue: 3)
    /// No frame arrived within the idle timeout.
    public static let idleTimeout = CloseReason(rawValue: 4)

    public var description: String {
        switch self {
        case .complete: "complete"
        case .cancelled: "cancelled"
        case .shutdown: "shutdown"
        case .error: "error"
        case .idleTimeout: "idle-timeout"
        default: "reason-\(rawValue)"
        }
    }
}

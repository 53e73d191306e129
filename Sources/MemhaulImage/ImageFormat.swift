import MemhaulSystem
import CXXHash
import MemhaulDigest

/// On-disk format constants (Protocol/image.md).
public enum ImageFormat {
    /// Manifest major version: a reader refuses files with a newer major. 2: several
    /// committed journals may be pending (write-ahead log with checkpoints), which a
    /// 1.x reader would delete unread, so the change is not a minor one. 3: vacant
    /// ranges, written in place by an open round, which a 2.x reader would read as
    /// committed content.
    public static let major: UInt16 = 3
    /// Minor version: newer minors only append fields; older readers ignore them.
    /// (2.1: the final digest's version follows the journal list.)
    public static let minor: UInt16 = 0
    /// Journal version: the journal format did not change with manifest 2.0.
    public static let journalMajor: UInt16 = 1
    public static let journalMinor: UInt16 = 0
    static let manifestMagic: [UInt8] = Array("MHIMGMAN".utf8)
    static let journalMagic: [UInt8] = Array("MHIMGJNL".utf8)
    /// "MHRC" little-endian: starts every journal record.
    static let recordMagic: UInt32 = 0x4352_484D
    static let manifestHeaderSize = 24
    static let journalHeaderSize = 32
    static let recordHeaderSize = 32
}

/// XXH3-64 (`XXH3_64bits`) of a byte range: the checksum of every format file.
@inline(__always)
func checksum64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    XXH3_64bits(bytes.baseAddress, bytes.count)
}

/// The framing shared by the manifest and the owner record: magic (8),
/// major (u16), minor (u16), reserved (u32), body length (u64), body, then
/// XXH3-64 of everything before it.
enum FramedFile {
    static func encode(magic: [UInt8], major: UInt16, minor: UInt16, body: [UInt8]) -> [UInt8] {
        var out = ByteWriter()
        out.bytes = magic
        out.u16(major)
        out.u16(minor)
        out.u32(0)
        out.u64(UInt64(body.count))
        out.bytes += body
        let sum = out.bytes.withUnsafeBytes { checksum64($0) }
        out.u64(sum)
        return out.bytes
    }

    /// Checks magic, then version (`minMajor...maxMajor`), then length, then
    /// checksum; returns the version and a reader over the body.
    static func decode(_ bytes: [UInt8], magic: [UInt8], minMajor: UInt16 = 0, maxMajor: UInt16, file: String) throws(ImageError)
        -> (major: UInt16, minor: UInt16, body: ByteReader)
    {
        let h = ImageFormat.manifestHeaderSize
        guard bytes.count >= 8 else { throw .truncated(file: file) }
        guard Array(bytes[0..<8]) == magic else { throw .badMagic(file: file) }
        guard bytes.count >= h + 8 else { throw .truncated(file: file) }
        var r = ByteReader(bytes: bytes, offset: 8, end: h, file: file)
        let major = try r.u16()
        let minor = try r.u16()
        guard major <= maxMajor else { throw .unsupportedVersion(file: file, major: major, minor: minor) }
        guard major >= minMajor else { throw .corrupt(file: file, reason: "version \(major).\(minor)") }
        _ = try r.u32()
        let bodyLength = try r.u64()
        guard bodyLength <= UInt64(bytes.count - h - 8) else { throw .truncated(file: file) }
        let end = h + Int(bodyLength)
        guard bytes.count == end + 8 else { throw .corrupt(file: file, reason: "\(bytes.count - end - 8) bytes after the checksum") }
        let stored = bytes.withUnsafeBytes { loadLE($0, end, as: UInt64.self) }
        let computed = bytes.withUnsafeBytes { checksum64(UnsafeRawBufferPointer(rebasing: $0[0..<end])) }
        guard stored == computed else { throw .badChecksum(file: file) }
        return (major, minor, ByteReader(bytes: bytes, offset: h, end: end, file: file))
    }
}

/// Journal record kinds.
enum RecordKind: UInt8 {
    case data = 1
    case zero = 2
    case discard = 3
    /// Last record: address = number of records before it, length = byte offset of the seal.
    case seal = 4
}

// MARK: - little-endian writer / reader

struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func string(_ s: String) {
        let utf8 = Array(s.utf8)
        u32(UInt32(utf8.count))
        bytes.append(contentsOf: utf8)
    }
}

/// Bounds-checked reader; running off the end is a `corrupt` error (the
/// checksum already matched, so a short body means a writer bug, not a torn write).
struct ByteReader {
    let bytes: [UInt8]
    var offset: Int
    let end: Int
    let file: String

    func short() -> ImageError { .corrupt(file: file, reason: "body ends early at byte \(offset)") }

    mutating func take(_ n: Int) throws(ImageError) -> ArraySlice<UInt8> {
        guard n >= 0, end - offset >= n else { throw short() }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }
    mutating func u8() throws(ImageError) -> UInt8 { try take(1).first! }
    mutating func u16() throws(ImageError) -> UInt16 { try le(take(2)) }
    mutating func u32() throws(ImageError) -> UInt32 { try le(take(4)) }
    mutating func u64() throws(ImageError) -> UInt64 { try le(take(8)) }
    mutating func string() throws(ImageError) -> String {
        let n = Int(try u32())
        guard n <= 1 << 20 else { throw ImageError.corrupt(file: file, reason: "string of \(n) bytes") }
        return String(decoding: try take(n), as: UTF8.self)
    }
    private func le<T: FixedWidthInteger>(_ s: ArraySlice<UInt8>) -> T {
        var v: T = 0
        for (i, b) in s.enumerated() { v |= T(b) << (8 * i) }
        return v
    }
}

func loadLE<T: FixedWidthInteger>(_ p: UnsafeRawBufferPointer, _ offset: Int, as: T.Type) -> T {
    T(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: T.self))
}

func storeLE<T: FixedWidthInteger>(_ p: UnsafeMutableRawBufferPointer, _ offset: Int, _ v: T) {
    p.storeBytes(of: v.littleEndian, toByteOffset: offset, as: T.self)
}

// MARK: - manifest

/// A region file: addresses `[base, base + size)` are stored at file offset `address - base`.
struct FileEntry: Hashable {
    var id: UInt32
    var base: UInt64
    var size: UInt64
}

/// A piece of the layout stored in one region file.
struct Segment: Hashable {
    var start: UInt64
    var end: UInt64
    var fileID: UInt32
}

/// A committed journal not yet covered by a checkpoint: replayed on open.
struct JournalEntry: Hashable {
    var round: UInt32
    /// Length of `journal-<round>`, seal included, and records before the seal.
    var bytes: UInt64
    var records: UInt64
    /// `nextFileID` of the round's manifest: files with a higher id did not
    /// exist when the round committed, so its records never go to them on replay.
    var nextFileID: UInt32
    /// Ranges new to the layout in the round that went to a file that already
    /// existed (growth): zeroed on replay before the journal's records, so bytes
    /// of an earlier life of those addresses cannot come back.
    var grown: [AddressRange] = []
}

/// The manifest: the commit record of the last committed round.
struct Manifest: Equatable {
    var migrationID: String
    var state: ImageState = .inProgress
    var failureReason: String = ""
    var committedRound: UInt32?
    var createdAt: UInt64
    var updatedAt: UInt64
    /// Length and record count of the committed round's journal (`journal-<round>`).
    var journalBytes: UInt64 = 0
    var journalRecords: UInt64 = 0
    var nextFileID: UInt32 = 1
    var regions: [ImageRegion] = []
    var files: [FileEntry] = []
    var segments: [Segment] = []
    var history: [RoundRecord] = []
    var digest: MemoryDigest?
    /// Every journal of a round up to this one is applied and the region files fsynced (2.0).
    var checkpointedRound: UInt32?
    /// Committed journals after `checkpointedRound`, ascending (2.0).
    var journals: [JournalEntry] = []
    /// Read from a 1.x manifest: the committed round's journal may already be applied and gone.
    var legacy = false
    /// Vacant ranges of the layout (3.0): no committed content (holes), no pending
    /// journal touches them; an open round writes there in place (VacantSpace).
    var vacant: [AddressRange] = []

    var journalBytesPending: UInt64 { journals.reduce(0) { $0 + $1.bytes } }

    func encode() -> [UInt8] {
        var body = ByteWriter()
        body.string(migrationID)
        body.u8(state.rawValue)
        body.string(failureReason)
        body.u8(committedRound == nil ? 0 : 1)
        body.u32(committedRound ?? 0)
        body.u64(createdAt)
        body.u64(updatedAt)
        body.u64(journalBytes)
        body.u64(journalRecords)
        body.u32(nextFileID)
        body.u32(UInt32(regions.count))
        for r in regions {
            body.u64(r.start)
            body.u64(r.end)
            body.u8(r.protection.rawValue)
            body.string(r.name)
        }
        body.u32(UInt32(files.count))
        for f in files {
            body.u32(f.id)
            body.u64(f.base)
            body.u64(f.size)
        }
        body.u32(UInt32(segments.count))
        for s in segments {
            body.u64(s.start)
            body.u64(s.end)
            body.u32(s.fileID)
        }
        body.u32(UInt32(history.count))
        for h in history {
            body.u32(h.round)
            body.u64(h.dataPages)
            body.u64(h.dataBytes)
            body.u64(h.zeroPages)
            body.u64(h.discardedPages)
            body.u64(h.journalBytes)
            body.u64(h.committedAt)
            body.u8(h.layoutChanged ? 1 : 0)
        }
        body.u8(digest == nil ? 0 : 1)
        body.u64(digest?.high ?? 0)
        body.u64(digest?.low ?? 0)
        body.u8(checkpointedRound == nil ? 0 : 1)
        body.u32(checkpointedRound ?? 0)
        body.u32(UInt32(journals.count))
        for j in journals {
            body.u32(j.round)
            body.u64(j.bytes)
            body.u64(j.records)
            body.u32(j.nextFileID)
            body.u32(UInt32(j.grown.count))
            for g in j.grown {
                body.u64(g.start)
                body.u64(g.end)
            }
        }
        body.u8(digest?.version.rawValue ?? 0)  // 2.1
        body.u32(UInt32(vacant.count))  // 3.0
        for v in vacant {
            body.u64(v.start)
            body.u64(v.end)
        }

        return FramedFile.encode(magic: ImageFormat.manifestMagic, major: ImageFormat.major, minor: ImageFormat.minor, body: body.bytes)
    }

    /// Checks magic, then version, then length, then checksum, then decodes.
    static func decode(_ bytes: [UInt8], file: String) throws(ImageError) -> Manifest {
        // 1.x is read (and rewritten as 2.0 at the next publish); older is not a version.
        var (major, _, r) = try FramedFile.decode(bytes, magic: ImageFormat.manifestMagic, minMajor: 1, maxMajor: ImageFormat.major, file: file)
        let id = try r.string()
        guard let state = ImageState(rawValue: try r.u8()) else { throw .corrupt(file: file, reason: "bad state") }
        var m = Manifest(migrationID: id, createdAt: 0, updatedAt: 0)
        m.state = state
        m.failureReason = try r.string()
        let hasRound = try r.u8() != 0
        let round = try r.u32()
        m.committedRound = hasRound ? round : nil
        m.createdAt = try r.u64()
        m.updatedAt = try r.u64()
        m.journalBytes = try r.u64()
        m.journalRecords = try r.u64()
        m.nextFileID = try r.u32()
        for _ in 0..<(try r.u32()) {
            let start = try r.u64(), end = try r.u64()
            let prot = ImageProtection(rawValue: try r.u8())
            m.regions.append(ImageRegion(start: start, end: end, protection: prot, name: try r.string()))
        }
        for _ in 0..<(try r.u32()) {
            let id = try r.u32(), base = try r.u64(), size = try r.u64()
            m.files.append(FileEntry(id: id, base: base, size: size))
        }
        for _ in 0..<(try r.u32()) {
            let start = try r.u64(), end = try r.u64(), fid = try r.u32()
            m.segments.append(Segment(start: start, end: end, fileID: fid))
        }
        for _ in 0..<(try r.u32()) {
            let round = try r.u32()
            let dp = try r.u64(), db = try r.u64(), zp = try r.u64(), disc = try r.u64(), jb = try r.u64(), at = try r.u64()
            let lc = try r.u8() != 0
            m.history.append(
                RoundRecord(
                    round: round, dataPages: dp, dataBytes: db, zeroPages: zp, discardedPages: disc, journalBytes: jb,
                    committedAt: at, layoutChanged: lc))
        }
        let hasDigest = try r.u8() != 0
        let high = try r.u64(), low = try r.u64()
        if hasDigest { m.digest = MemoryDigest(high: high, low: low) }
        if major == 1 {
            // 1.x: journals before the committed round were applied and fsynced; the
            // committed round's journal, if still there, is the only one to replay.
            m.legacy = true
            if let c = m.committedRound {
                m.checkpointedRound = c > 0 ? c - 1 : nil
                m.journals = [JournalEntry(round: c, bytes: m.journalBytes, records: m.journalRecords, nextFileID: m.nextFileID)]
            }
        } else {
            let hasCheckpoint = try r.u8() != 0
            let checkpoint = try r.u32()
            m.checkpointedRound = hasCheckpoint ? checkpoint : nil
            for _ in 0..<(try r.u32()) {
                let round = try r.u32(), bytes = try r.u64(), records = try r.u64(), next = try r.u32()
                var entry = JournalEntry(round: round, bytes: bytes, records: records, nextFileID: next)
                for _ in 0..<(try r.u32()) {
                    let start = try r.u64(), end = try r.u64()
                    guard start < end, start % imagePageSize == 0, end % imagePageSize == 0 else {
                        throw .corrupt(file: file, reason: "bad grown range in the journal list")
                    }
                    entry.grown.append(AddressRange(start: start, end: end))
                }
                m.journals.append(entry)
            }
        }
        if major >= 2, r.offset < r.end {
            // 2.1: the digest's version (absent: v1, the only one before).
            let v = try r.u8()
            if m.digest != nil {
                guard let version = DigestVersion(rawValue: v) else { throw .corrupt(file: file, reason: "unknown digest version \(v)") }
                m.digest!.version = version
            }
        }
        if major >= 3 {
            for _ in 0..<(try r.u32()) {
                let start = try r.u64(), end = try r.u64()
                guard start < end, start % imagePageSize == 0, end % imagePageSize == 0,
                    m.vacant.last.map({ start >= $0.end }) ?? true
                else { throw .corrupt(file: file, reason: "bad vacant range") }
                m.vacant.append(AddressRange(start: start, end: end))
            }
        }
        // Fields a newer minor appended after these are ignored.
        try m.validate(file: file)
        return m
    }

    /// Structural checks so a manifest that passed its checksum but was written
    /// by a buggy writer cannot make the store address outside its files.
    func validate(file: String) throws(ImageError) {
        let ids = Dictionary(files.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        guard ids.count == files.count else { throw .corrupt(file: file, reason: "duplicate file id") }
        var last: UInt64 = 0
        for s in segments {
            guard s.start < s.end, s.start >= last, let f = ids[s.fileID], s.start >= f.base, s.end - f.base <= f.size,
                f.id < nextFileID
            else { throw .corrupt(file: file, reason: "bad segment 0x\(String(s.start, radix: 16))") }
            last = s.end
        }
        last = 0
        for r in regions {
            guard r.start < r.end, r.start >= last else { throw .corrupt(file: file, reason: "bad region order") }
            last = r.end
        }
        // Pending journals: ascending, after the checkpoint, up to the committed round (which is the last).
        var previous = checkpointedRound
        for j in journals {
            guard let c = committedRound, j.round <= c, previous.map({ j.round > $0 }) ?? true, j.nextFileID <= nextFileID
            else { throw .corrupt(file: file, reason: "bad journal list at round \(j.round)") }
            previous = j.round
        }
        if let c = committedRound, let cp = checkpointedRound, cp > c {
            throw .corrupt(file: file, reason: "checkpoint \(cp) after the committed round \(c)")
        }
        if let last = journals.last, last.round == committedRound,
            last.bytes != journalBytes || last.records != journalRecords
        {
            throw .corrupt(file: file, reason: "journal list disagrees with the committed journal")
        }
    }
}

// MARK: - journal

/// The 32-byte journal header: magic, version, round, image id, checksum.
func encodeJournalHeader(round: UInt32, imageID: UInt64) -> [UInt8] {
    var w = ByteWriter()
    w.bytes = ImageFormat.journalMagic
    w.u16(ImageFormat.journalMajor)
    w.u16(ImageFormat.journalMinor)
    w.u32(round)
    w.u64(imageID)
    let sum = w.bytes.withUnsafeBytes { checksum64($0) }
    w.u64(sum)
    return w.bytes
}

/// Validates a journal header; returns its round.
func decodeJournalHeader(_ p: UnsafeRawBufferPointer, file: String, imageID: UInt64) throws(ImageError) -> UInt32 {
    guard p.count >= 8 else { throw .truncated(file: file) }
    guard p.prefix(8).elementsEqual(ImageFormat.journalMagic) else { throw .badMagic(file: file) }
    guard p.count >= ImageFormat.journalHeaderSize else { throw .truncated(file: file) }
    let major = loadLE(p, 8, as: UInt16.self), minor = loadLE(p, 10, as: UInt16.self)
    guard major <= ImageFormat.journalMajor else { throw .unsupportedVersion(file: file, major: major, minor: minor) }
    guard loadLE(p, 24, as: UInt64.self) == checksum64(UnsafeRawBufferPointer(rebasing: p[0..<24])) else {
        throw .badChecksum(file: file)
    }
    guard loadLE(p, 16, as: UInt64.self) == imageID else { throw .corrupt(file: file, reason: "journal of another image") }
    return loadLE(p, 12, as: UInt32.self)
}

/// Stable 64-bit id of an image (XXH3-64 of its migration id), stamped in journals.
func imageID(of migrationID: String) -> UInt64 {
    Array(migrationID.utf8).withUnsafeBytes { checksum64($0) }
}

/// Writes a record header into `p[0..<32]`; the checksum covers bytes 0..<24 then the data.
func encodeRecordHeader(
    _ p: UnsafeMutableRawBufferPointer, kind: RecordKind, address: UInt64, length: UInt64,
    data: UnsafeRawBufferPointer?, state: OpaquePointer
) {
    storeLE(p, 0, ImageFormat.recordMagic)
    storeLE(p, 4, UInt32(kind.rawValue))
    storeLE(p, 8, address)
    storeLE(p, 16, length)
    XXH3_64bits_reset(state)
    XXH3_64bits_update(state, p.baseAddress, 24)
    if let data, data.count > 0 { XXH3_64bits_update(state, data.baseAddress, data.count) }
    storeLE(p, 24, XXH3_64bits_digest(state))
}

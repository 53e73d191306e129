/// The state of the open round: its layout plan, its journal, what it wrote
/// in place (and the writeback of those writes), its counters, and the file
/// ranges it reserves and punches.
final class OpenRound {
    let round: UInt32
    let regions: [ImageRegion]
    let segments: [Segment]
    let files: [FileEntry]
    let fileBases: [UInt32: UInt64]
    let nextFileID: UInt32
    /// Address ranges not in the committed layout, in new files: written in place, not journaled.
    let fresh: [ImageRange]
    /// Address ranges not in the committed layout, in files that exist: journaled.
    let grown: [ImageRange]
    let layoutChanged: Bool
    let journal: JournalWriter
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
    var dataPages: UInt64 = 0
    var dataBytes: UInt64 = 0
    var zeroPages: UInt64 = 0
    var discardedPages: UInt64 = 0
    /// File ranges the round writes, coalesced, reserved before the commit.
    var reservations: [(fileID: UInt32, offset: UInt64, length: UInt64)] = []
    /// File ranges the round's journal punches (zero, discard) when applied.
    var punches: [FileRange] = []

    init(round: UInt32, regions: [ImageRegion], plan: LayoutPlan, layoutChanged: Bool, journal: JournalWriter) {
        self.fresh = plan.fresh
        self.grown = plan.grown
        self.round = round
        self.regions = regions
        self.segments = plan.segments
        self.files = plan.files
        self.fileBases = Dictionary(plan.files.map { ($0.id, $0.base) }, uniquingKeysWith: { a, _ in a })
        self.nextFileID = plan.nextFileID
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

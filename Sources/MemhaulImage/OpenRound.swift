import MemhaulSystem
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
    let fresh: [AddressRange]
    /// Address ranges not in the committed layout, in files that exist: journaled.
    let grown: [AddressRange]
    /// Where pages go in place, not to the journal: the fresh ranges and the
    /// committed layout's vacant ranges the round keeps (sorted, disjoint).
    let inPlace: [AddressRange]
    /// Pages written in place this round (addresses).
    var written = SortedRanges()
    let layoutChanged: Bool
    let journal: JournalWriter
    var directFiles: Set<UInt32> = []
    /// In-place writes since writeback was last started: (file, range, bytes).
    private var unsynced: (file: ImageFile, id: UInt32, from: UInt64, to: UInt64, bytes: UInt64)?
    /// Where the writeback is started (off the writer's thread).
    let writeback: WritebackQueue

    /// Starts writeback of in-place writes every `ImageStore.writebackKickBytes`
    /// (or when another file is written), so the disk works during the round
    /// and the fsync at the commit point finds little left.
    func noteUnsynced(file: ImageFile, id: UInt32, from: UInt64, to: UInt64) {
        if var u = unsynced, u.id == id {
            u.from = min(u.from, from)
            u.to = max(u.to, to)
            u.bytes += to - from
            unsynced = u
        } else {
            kickWriteback()
            unsynced = (file, id, from, to, to - from)
        }
        if let u = unsynced, u.bytes >= ImageStore.writebackKickBytes { kickWriteback() }
    }

    func kickWriteback() {
        guard let u = unsynced else { return }
        writeback.start(u.file, from: u.from, count: u.to - u.from)
        unsynced = nil
    }
    var directBytes: UInt64 = 0
    /// Bytes of region files reserved in place ahead of a dense batch (``ImageStore/reserveInPlace(_:)``), gaps included.
    var reservedBytes: UInt64 = 0
    /// Zeros written into gaps between a dense batch's runs (``ImageStore/writeRuns(_:_:)``).
    var filledBytes: UInt64 = 0
    var dataPages: UInt64 = 0
    var dataBytes: UInt64 = 0
    var zeroPages: UInt64 = 0
    var discardedPages: UInt64 = 0
    /// Byte ranges of each region file the round writes, reserved before the commit.
    var reservations = FileRanges()
    /// Byte ranges of each region file the round's journal punches (zero, discard) when applied.
    var punches = FileRanges()

    init(
        round: UInt32, regions: [ImageRegion], plan: LayoutPlan, vacant: [AddressRange], layoutChanged: Bool,
        journal: JournalWriter, writeback: WritebackQueue
    ) {
        self.writeback = writeback
        self.fresh = plan.fresh
        self.grown = plan.grown
        let layout = regions.map { AddressRange(start: $0.start, end: $0.end) }.coalesced()
        self.inPlace = plan.fresh.coalesced().union(vacant.intersecting(layout))
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
        reservations.add(fileID, AddressRange(start: offset, end: offset + length))
    }
}

/// Byte ranges (file offsets) per region file id.
struct FileRanges {
    private(set) var byFile: [UInt32: [AddressRange]] = [:]
    var isEmpty: Bool { byFile.isEmpty }

    /// Ranges arrive in write order; touching ones merge.
    mutating func add(_ fileID: UInt32, _ range: AddressRange) {
        byFile[fileID, default: []].appendCoalescing(range)
    }

    /// Per file: sorted, merged, and gaps of at most `gap` bytes closed.
    func coalesced(bridging gap: UInt64) -> [UInt32: [AddressRange]] {
        byFile.mapValues { ranges in
            var out: [AddressRange] = []
            for r in ranges.coalesced() {
                if let last = out.last, r.start - last.end <= gap { out[out.count - 1].end = r.end } else { out.append(r) }
            }
            return out
        }
    }

    /// Whether any byte of any file is in both.
    func overlaps(_ other: FileRanges) -> Bool {
        byFile.contains { id, mine in
            guard let theirs = other.byFile[id] else { return false }
            return !mine.coalesced().intersecting(theirs.coalesced()).isEmpty
        }
    }
}

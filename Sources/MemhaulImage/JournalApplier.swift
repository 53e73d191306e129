#if canImport(Glibc)
import Glibc
#endif
import CXXHash
import Dispatch
import MemhaulSystem

/// Applies committed journals to the region files with its own read window,
/// iovecs, hash state and descriptors, so an apply can run on another thread
/// while the store's owner receives the next round (whose journal buffer,
/// hash state and descriptors are the store's).
final class JournalApplier: @unchecked Sendable {  // unchecked: one thread at a time; ImageStore joins before reuse
    let directory: String
    let imageID: UInt64
    private let window: UnsafeMutableRawBufferPointer
    private let zeros: UnsafeMutableRawBufferPointer
    private let iov: UnsafeMutablePointer<iovec>
    private let hashState: OpaquePointer
    private var files: [UInt32: ImageFile] = [:]

    init(directory: String, imageID: UInt64) {
        self.directory = directory
        self.imageID = imageID
        window = BufferPool.take(ImageStore.scratchSize)
        zeros = BufferPool.takeZeroed(1 << 20)
        iov = .allocate(capacity: iovMax)
        hashState = XXH3_createState()
    }

    deinit {
        BufferPool.give(window)
        BufferPool.giveZeroed(zeros)
        iov.deallocate()
        XXH3_freeState(hashState)
    }

    func journalPath(_ round: UInt32) -> String { ImagePaths(directory).journal(round) }

    private func file(_ id: UInt32) throws(ImageError) -> ImageFile {
        if let f = files[id] { return f }
        let f = try ImageFile(path: ImagePaths(directory).regionFile(id), flags: O_RDWR | O_CREAT)
        files[id] = f
        return f
    }

    /// Closes the descriptors (files may be removed next).
    func dropDescriptors() { files.removeAll() }

    /// Verifies a whole journal against its list entry.
    func verify(_ entry: JournalEntry, _ journal: ImageFile) throws(ImageError) {
        try forEachRecord(journal, round: entry.round, bytes: entry.bytes, records: entry.records, flushing: {}) {
            _, _, _, _ throws(ImageError) in
        }
    }

    /// Applies a committed journal to the region files (idempotent), page cache
    /// only: the files it touches are fsynced by the next checkpoint. Right after
    /// the commit (`replay` false) `m` is the journal's own round, so every record
    /// maps; with the layout pass, files are sized to the committed layout and
    /// addresses outside it punched first. On recovery (`replay`) `m` is the last
    /// committed round: the round's grown ranges are zeroed first, and parts of
    /// records outside `m`'s layout, or mapped to files created after the round
    /// (their content was written in place later), are skipped.
    func apply(
        _ entry: JournalEntry, m: Manifest, journal given: ImageFile? = nil, verifyFirst: Bool, layoutPass: Bool, replay: Bool
    ) throws(ImageError) -> Set<UInt32> {
        let journal: ImageFile
        if let given { journal = given } else { journal = try ImageFile(path: journalPath(entry.round), flags: O_RDONLY) }
        if verifyFirst {
            try forEachRecord(journal, round: entry.round, bytes: entry.bytes, records: entry.records, flushing: {}) {
                _, _, _, _ throws(ImageError) in
            }
        }
        var touched: Set<UInt32> = []
        if layoutPass { touched = try reconcileFiles(m) }
        let bases = Dictionary(m.files.map { ($0.id, $0.base) }, uniquingKeysWith: { a, _ in a })
        let limit = entry.nextFileID
        let z = UnsafeRawBufferPointer(zeros)
        func punch(_ start: UInt64, _ end: UInt64) throws(ImageError) {
            try forEachCoveredPiece(m.segments, start, end) { s, a, e throws(ImageError) in
                guard s.fileID < limit else { return }
                try file(s.fileID).punchHole(at: a - bases[s.fileID]!, length: e - a, zeros: z)
                touched.insert(s.fileID)
            }
        }
        // Right after the commit the page cache already reads zeros there (earlier layout passes).
        if replay { for g in entry.grown { try punch(g.start, g.end) } }
        // Pending coalesced write: file, offset, iovecs in the read window.
        var pendingFile: UInt32 = 0
        var pendingOffset: UInt64 = 0
        var pendingCount = 0
        var pendingBytes = 0
        func flushPending() throws(ImageError) {
            guard pendingCount > 0 else { return }
            try file(pendingFile).pwritev(iov, count: pendingCount, total: pendingBytes, at: pendingOffset)
            touched.insert(pendingFile)
            pendingCount = 0
            pendingBytes = 0
        }
        try forEachRecord(journal, round: entry.round, bytes: entry.bytes, records: entry.records, flushing: flushPending) {
            kind, address, length, data throws(ImageError) in
            switch kind {
            case .data:
                try forEachCoveredPiece(m.segments, address, address + length) { s, a, e throws(ImageError) in
                    guard s.fileID < limit else { return }
                    let offset = a - bases[s.fileID]!
                    let ptr = data!.baseAddress! + Int(a - address)
                    let n = Int(e - a)
                    if pendingCount > 0, pendingFile == s.fileID, pendingOffset + UInt64(pendingBytes) == offset,
                        pendingCount < iovMax
                    {
                        iov[pendingCount] = iovec(iov_base: UnsafeMutableRawPointer(mutating: ptr), iov_len: n)
                    } else {
                        try flushPending()
                        pendingFile = s.fileID
                        pendingOffset = offset
                        iov[0] = iovec(iov_base: UnsafeMutableRawPointer(mutating: ptr), iov_len: n)
                    }
                    pendingCount += 1
                    pendingBytes += n
                }
            case .zero, .discard:
                try flushPending()
                try punch(address, address + length)
            case .seal:
                break
            }
        }
        try flushPending()
        return touched
    }

    /// Punches `ranges` (addresses) where `m`'s segments map them: vacant
    /// ranges back to holes, undoing in-place writes of a round that did not
    /// commit. Addresses outside the layout are skipped. Returns the files.
    func punch(_ ranges: [AddressRange], m: Manifest) throws(ImageError) -> Set<UInt32> {
        var touched: Set<UInt32> = []
        let bases = Dictionary(m.files.map { ($0.id, $0.base) }, uniquingKeysWith: { a, _ in a })
        let z = UnsafeRawBufferPointer(zeros)
        for r in ranges {
            try forEachCoveredPiece(m.segments, r.start, r.end) { s, a, e throws(ImageError) in
                try file(s.fileID).punchHole(at: a - bases[s.fileID]!, length: e - a, zeros: z)
                touched.insert(s.fileID)
            }
        }
        return touched
    }

    /// Makes the region files match `m`: each file exists at its size, and
    /// every range no segment uses is a hole. Idempotent; returns the files.
    func reconcileFiles(_ m: Manifest) throws(ImageError) -> Set<UInt32> {
        var touched: Set<UInt32> = []
        let z = UnsafeRawBufferPointer(zeros)
        for f in m.files {
            let file = try file(f.id)
            if try file.size() != f.size { try file.truncate(f.size) }
            var cursor = f.base
            for s in m.segments where s.fileID == f.id {
                if s.start > cursor { try file.punchHole(at: cursor - f.base, length: s.start - cursor, zeros: z) }
                cursor = s.end
            }
            if cursor < f.base + f.size { try file.punchHole(at: cursor - f.base, length: f.base + f.size - cursor, zeros: z) }
            touched.insert(f.id)
        }
        return touched
    }

    /// Streams a journal's records through the window window, verifying magic,
    /// checksums, the seal and the length the manifest recorded. `flushing` runs
    /// before the window is reused (so pending iovecs into it are written first).
    func forEachRecord(
        _ journal: ImageFile, round: UInt32, bytes: UInt64, records: UInt64, flushing: () throws(ImageError) -> Void,
        _ body: (RecordKind, UInt64, UInt64, UnsafeRawBufferPointer?) throws(ImageError) -> Void
    ) throws(ImageError) {
        let path = journal.path
        var fileOffset: UInt64 = 0  // file offset of window[0]
        var filled = 0
        var pos = 0
        var eof = false
        func ensure(_ n: Int) throws(ImageError) -> Bool {
            if filled - pos >= n { return true }
            try flushing()
            // Slide the unread tail to the front and refill.
            let tail = filled - pos
            if tail > 0 && pos > 0 { window.baseAddress!.copyMemory(from: window.baseAddress! + pos, byteCount: tail) }
            fileOffset += UInt64(pos)
            filled = tail
            pos = 0
            while filled < window.count && !eof {
                let want = window.count - filled
                let got = try onFile("pread", path) {
                    Glibc.pread(journal.raw, window.baseAddress! + filled, want, off_t(fileOffset) + off_t(filled))
                }
                if got == 0 { eof = true }
                filled += got
            }
            return filled - pos >= n
        }
        guard try ensure(ImageFormat.journalHeaderSize) else {
            if filled >= 8 && !UnsafeRawBufferPointer(window).prefix(8).elementsEqual(ImageFormat.journalMagic) {
                throw .badMagic(file: path)
            }
            throw .truncated(file: path)
        }
        let headerRound = try decodeJournalHeader(
            UnsafeRawBufferPointer(rebasing: window[0..<ImageFormat.journalHeaderSize]), file: path, imageID: imageID)
        guard headerRound == round else { throw .corrupt(file: path, reason: "journal of round \(headerRound), not \(round)") }
        pos = ImageFormat.journalHeaderSize
        var count: UInt64 = 0
        while true {
            guard try ensure(ImageFormat.recordHeaderSize) else { throw .truncated(file: path) }
            let h = UnsafeRawBufferPointer(rebasing: window[pos..<pos + ImageFormat.recordHeaderSize])
            let at = fileOffset + UInt64(pos)
            guard loadLE(h, 0, as: UInt32.self) == ImageFormat.recordMagic else {
                throw .corrupt(file: path, reason: "bad record magic at byte \(at)")
            }
            guard let kind = RecordKind(rawValue: UInt8(truncatingIfNeeded: loadLE(h, 4, as: UInt32.self))) else {
                throw .corrupt(file: path, reason: "bad record kind at byte \(at)")
            }
            let address = loadLE(h, 8, as: UInt64.self)
            let length = loadLE(h, 16, as: UInt64.self)
            let dataLength = kind == .data ? Int(clamping: length) : 0
            guard dataLength <= JournalWriter.maxRecordData else { throw .corrupt(file: path, reason: "record of \(length) bytes at byte \(at)") }
            guard try ensure(ImageFormat.recordHeaderSize + dataLength) else { throw .truncated(file: path) }
            let header = UnsafeRawBufferPointer(rebasing: window[pos..<pos + 24])
            let data = UnsafeRawBufferPointer(
                rebasing: window[pos + ImageFormat.recordHeaderSize..<pos + ImageFormat.recordHeaderSize + dataLength])
            XXH3_64bits_reset(hashState)
            XXH3_64bits_update(hashState, header.baseAddress, 24)
            if dataLength > 0 { XXH3_64bits_update(hashState, data.baseAddress, dataLength) }
            guard XXH3_64bits_digest(hashState) == loadLE(UnsafeRawBufferPointer(window), pos + 24, as: UInt64.self) else {
                throw .badChecksum(file: path)
            }
            if kind == .seal {
                guard address == count, length == at, at + UInt64(ImageFormat.recordHeaderSize) == bytes,
                    count == records
                else { throw .corrupt(file: path, reason: "seal does not match the manifest") }
                pos += ImageFormat.recordHeaderSize
                guard try !ensure(1) else { throw .corrupt(file: path, reason: "bytes after the seal") }
                return
            }
            try body(kind, address, length, kind == .data ? data : nil)
            pos += ImageFormat.recordHeaderSize + dataLength
            count += 1
        }
    }

}

/// An apply running on `ImageStore.applyQueue`; its fields are written by the
/// worker and read by the store only after `item.wait()`.
final class ApplyJob: @unchecked Sendable {  // unchecked: handed over by DispatchWorkItem.wait (happens-before)
    let round: UInt32
    let layoutPass: Bool
    let punches: FileRanges
    var item: DispatchWorkItem?
    var touched: Set<UInt32> = []
    var error: ImageError?
    /// How long the apply took.
    var nanoseconds: UInt64 = 0

    init(round: UInt32, layoutPass: Bool, punches: FileRanges) {
        self.round = round
        self.layoutPass = layoutPass
        self.punches = punches
    }

    /// Whether this apply could free blocks the open round reserves: its layout
    /// pass truncates files the round grows, or a punch overlaps a reservation.
    func conflicts(with r: OpenRound) -> Bool {
        if layoutPass && !r.grown.isEmpty { return true }
        return punches.overlaps(r.reservations)
    }
}

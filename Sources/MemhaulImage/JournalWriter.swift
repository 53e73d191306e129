#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// The redo journal of one open round, `journal-<round>` (Protocol/image.md,
/// "journal-<round>"): a header, then records appended through a buffer
/// (written with write(2) when full), then a seal at the commit.
///
/// The buffer and hash state are the store's, lent for the round (one round
/// is open at a time), so a round costs no allocation.
final class JournalWriter {
    /// Largest data record; writes are split so any record fits the applier's read window.
    static let maxRecordData = 4 << 20

    let round: UInt32
    let file: ImageFile
    private let buffer: UnsafeMutableRawBufferPointer
    private let hashState: OpaquePointer
    /// Bytes written to the file, and waiting in the buffer.
    private(set) var written: UInt64 = 0
    private(set) var buffered = 0
    /// Records before the seal.
    private(set) var records: UInt64 = 0

    var path: String { file.path }
    /// Whether ``flush()`` starts writeback of what it wrote: not on tmpfs or
    /// ramfs, where there is none to start (``WritebackDecision``).
    let startsWriteback: Bool

    /// Creates (truncates) the journal and buffers its header.
    init(path: String, round: UInt32, imageID: UInt64, buffer: UnsafeMutableRawBufferPointer, hashState: OpaquePointer,
         startsWriteback: Bool) throws(ImageError)
    {
        self.round = round
        self.startsWriteback = startsWriteback
        self.buffer = buffer
        self.hashState = hashState
        file = try ImageFile(path: path, flags: O_WRONLY | O_CREAT | O_TRUNC)
        let header = encodeJournalHeader(round: round, imageID: imageID)
        header.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        buffered = header.count
    }

    /// Appends one record (data records carry `data`, at most `maxRecordData` bytes).
    func append(_ kind: RecordKind, _ address: UInt64, _ length: UInt64, _ data: UnsafeRawBufferPointer?) throws(ImageError) {
        let need = ImageFormat.recordHeaderSize + (data?.count ?? 0)
        if buffered + need > buffer.count { try flush() }
        let at = UnsafeMutableRawBufferPointer(rebasing: buffer[buffered..<buffered + need])
        var copied: UnsafeRawBufferPointer?
        if let data, data.count > 0 {
            let dst = UnsafeMutableRawBufferPointer(rebasing: at[ImageFormat.recordHeaderSize...])
            dst.copyMemory(from: data)
            copied = UnsafeRawBufferPointer(dst)
        }
        encodeRecordHeader(
            UnsafeMutableRawBufferPointer(rebasing: at[0..<ImageFormat.recordHeaderSize]), kind: kind, address: address,
            length: length, data: copied, state: hashState)
        buffered += need
        if kind != .seal { records += 1 }
    }

    /// Data records for `bytes` at `address`, split at `maxRecordData`.
    func appendData(at address: UInt64, _ bytes: UnsafeRawBufferPointer) throws(ImageError) {
        var done = 0
        while done < bytes.count {
            let n = min(Self.maxRecordData, bytes.count - done)
            try append(.data, address + UInt64(done), UInt64(n), UnsafeRawBufferPointer(rebasing: bytes[done..<done + n]))
            done += n
        }
    }

    /// `sync_file_range` calls that failed (best effort: the seal's fsync does their work).
    private(set) var writebackFailures = 0

    /// Writes the buffered bytes to the file and starts their writeback, so the
    /// seal's fsync at the commit finds little left to write.
    func flush() throws(ImageError) {
        guard buffered > 0 else { return }
        try file.writeAll(UnsafeRawBufferPointer(rebasing: buffer[0..<buffered]))
        if startsWriteback, file.startWriteback(from: written, count: UInt64(buffered)) != nil { writebackFailures += 1 }
        written += UInt64(buffered)
        buffered = 0
    }

    /// Commit step 1 for the journal: the seal record, flush, fsync. Afterwards
    /// `written` is the journal's length, seal included.
    func seal() throws(ImageError) {
        let sealAt = written + UInt64(buffered)
        try append(.seal, records, sealAt, nil)
        try flush()
        try file.fsync()
    }

    /// Closes the descriptor (the journal stays, for recovery or a checkpoint).
    func close() { try? file.fd.close() }

    /// Closes and unlinks the journal of a round that will not commit.
    func remove() {
        close()
        try? unlinkIfPresent(file.path)
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulCompression
import MemhaulDigest
import MemhaulImage
import MemhaulSystem
import MemhaulWire

/// The receiver's second pipeline stage: decompress, checksum and store page
/// batches, and apply zero/discard runs, on a thread of its own, while the
/// session thread reads and decrypts the next frames.
///
/// Bounded: at most `slots` batches are in flight (each read by the session
/// thread straight from the stream into a slot of `WireLimits.maxPagesPerBatch`
/// pages, ``reserveSlot()``) and at most
/// `maxQueued` items of any kind; `submit` blocks while full. Work runs in
/// submission order. The first error stops the stage: later work is dropped
/// and every later `submit`/`drain` throws it.
///
/// The image store is touched by this thread only between the round's
/// beginRound and a `drain()` (or `stop()`), which the session thread calls
/// before it uses the store itself; the condition variable orders the two.
final class StorageStage: @unchecked Sendable {  // unchecked: all state behind `condition`
    enum Work {
        /// `reserve`: the span reserved before the pages are written (``reservation(of:)``), when the session charged it.
        case batch(PageBatchHeader, slot: Int, payloadLength: Int, reserve: AddressRange?)
        case zero([PageRun])
        case discard([PageRun])
    }

    /// Called on the stage's thread with each run of pages once the store has
    /// it (address, plain bytes); it becomes committed at the round's commit.
    /// The hook for a per-page ledger of stored content.
    typealias StoredPages = (UInt64, UnsafeRawBufferPointer) -> Void

    static let defaultSlots = 3
    static let maxQueued = 16

    private let store: ImageStore
    private let slotBytes: Int
    /// Allocated on first use (a session that sends few pages costs little).
    private var slotBuffers: [UnsafeMutableRawBufferPointer?]
    private var zstdBuffer: UnsafeMutableRawBufferPointer?
    private let decoder = BatchDecoder()
    private let stored: StoredPages?
    private let condition = NSCondition()
    private var freeSlots: [Int]
    private var queue: [Work] = []
    private var running = false
    private var stopping = false
    private var finished = false
    private var failure: Error?
    /// Nanoseconds the stage spent working (not waiting), for the busy fraction.
    private var busy: UInt64 = 0
    private var phases = Phases()
    /// The stage thread's CPU demand, as of its last finished item (exact while idle).
    private var demand = ThreadDemand(cpuNanoseconds: 0, waitNanoseconds: 0)
    private var thread: Thread?

    /// The incremental proof's ledger (capability `ledgerDigest`): it sees every
    /// stored, zeroed and discarded page in the order the frames came, on this
    /// stage's thread; the session touches it only once the stage is drained.
    private let ledger: ReceiverLedger?

    /// ``ReceiverTestHooks/beforeStoringBatch``.
    private let beforeStoringBatch: (@Sendable () -> Void)?

    init(store: ImageStore, slots: Int = StorageStage.defaultSlots, ledger: ReceiverLedger? = nil, stored: StoredPages? = nil,
         beforeStoringBatch: (@Sendable () -> Void)? = nil) {
        self.beforeStoringBatch = beforeStoringBatch
        self.ledger = ledger
        self.store = store
        self.stored = stored
        slotBytes = WireLimits.default.maxPagesPerBatch * Int(WireLimits.default.pageSize)
        slotBuffers = Array(repeating: nil, count: slots)
        freeSlots = Array(0..<slots)
        let thread = Thread { [unowned self] in
            nameCurrentThread("rx.storage")  // the bench groups CPU by thread name
            self.work()
        }
        self.thread = thread
        thread.start()
    }

    deinit {
        stop()
        for b in slotBuffers { b?.deallocate() }
        zstdBuffer?.deallocate()
    }

    /// Whether `drain()` has something to wait for or report: work queued or
    /// running, or an error not reported yet.
    var needsDrain: Bool { condition.withLock { !queue.isEmpty || running || failure != nil } }

    /// Time the stage has spent working.
    var busyNanoseconds: UInt64 { condition.withLock { busy } }

    /// Wall time at work and the thread's CPU demand (CPU + run-queue wait), for
    /// ``ReceiverLoad``: exact after `drain()`, when the stage is idle.
    var load: (busyNanoseconds: UInt64, demandNanoseconds: UInt64) { condition.withLock { (busy, demand.totalNanoseconds) } }

    /// A slot taken by ``reserveSlot()``: a buffer of `WireLimits.maxPagesPerBatch` pages the
    /// session thread fills with one batch's payload, then gives to ``submit(_:in:)`` or back to ``release(_:)``.
    struct Slot {
        let index: Int
        let buffer: UnsafeMutableRawBufferPointer
    }

    /// A free slot (waiting for one); throws the stage's error.
    func reserveSlot() throws -> Slot {
        try condition.withLock {
            while freeSlots.isEmpty || queue.count >= Self.maxQueued, failure == nil, !stopping { condition.wait() }
            if let failure { throw failure }
            let slot = freeSlots.removeLast()
            if slotBuffers[slot] == nil { slotBuffers[slot] = .allocate(byteCount: slotBytes, alignment: 4096) }
            return Slot(index: slot, buffer: slotBuffers[slot]!)
        }
    }

    /// Gives back a reserved slot that will not be submitted.
    func release(_ slot: Slot) {
        condition.withLock {
            freeSlots.append(slot.index)
            condition.broadcast()
        }
    }

    /// Queues the batch whose `header.payloadLength` payload bytes are in `slot`
    /// (its in-place parts of `span` reserved first, ``ImageStore/reserveInPlace(_:)``).
    func submit(_ header: PageBatchHeader, in slot: Slot, reserving span: AddressRange? = nil) throws {
        do {
            try enqueue(.batch(header, slot: slot.index, payloadLength: Int(header.payloadLength), reserve: span))
        } catch {
            release(slot)
            throw error
        }
    }

    /// Copies a batch's payload into a free slot (waiting for one) and queues it.
    func submit(_ batch: PageBatch, reserving span: AddressRange? = nil) throws {
        let slot = try reserveSlot()
        let n = batch.payload.count
        precondition(n <= slotBytes && n == Int(batch.header.payloadLength), "PAGE_BATCH payload over the decoder's limit")
        batch.payload.withUnsafeBytes { slot.buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: n) }
        try submit(batch.header, in: slot, reserving: span)
    }

    /// Queues zero or discard runs (waiting while the queue is full).
    func submit(_ work: Work) throws {
        try condition.withLock {
            while queue.count >= Self.maxQueued, failure == nil, !stopping { condition.wait() }
            if let failure { throw failure }
        }
        try enqueue(work)
    }

    private func enqueue(_ work: Work) throws {
        try condition.withLock {
            if let failure { throw failure }
            queue.append(work)
            condition.broadcast()
        }
    }

    /// Waits until every submitted item is done; throws the stage's error.
    func drain() throws {
        try condition.withLock {
            while (!queue.isEmpty || running) && failure == nil { condition.wait() }
            if let failure { throw failure }
        }
    }

    /// Drops queued work, waits for the item in progress and ends the thread.
    /// Idempotent; afterwards the session thread owns the store again.
    func stop() {
        condition.withLock {
            stopping = true
            queue.removeAll()
            condition.broadcast()
            while !finished && thread != nil { condition.wait() }
        }
    }

    private func work() {
        while true {
            let item: Work? = condition.withLock {
                while queue.isEmpty && !stopping { condition.wait() }
                if stopping {
                    finished = true
                    condition.broadcast()
                    return nil
                }
                running = true
                return queue.removeFirst()
            }
            guard let item else { return }
            let t0 = MonotonicClock.nanoseconds()
            var error: Error?
            do { try perform(item) } catch let e { error = e }
            let spent = MonotonicClock.nanoseconds() - t0
            let demandNow = ThreadDemand.current()  // one small /proc read per item: ~1 % of a 1 MiB batch
            condition.withLock {
                running = false
                busy += spent
                demand = demandNow
                if case .batch(_, let slot, _, _) = item { freeSlots.append(slot) }
                if let error, failure == nil {
                    failure = error
                    queue.removeAll()
                }
                condition.broadcast()
            }
        }
    }

    private func perform(_ item: Work) throws {
        switch item {
        case .batch(let header, let slot, let payloadLength, let reserve):
            let buffer = condition.withLock { slotBuffers[slot]! }
            beforeStoringBatch?()
            try storeBatch(header, UnsafeRawBufferPointer(rebasing: buffer[0..<payloadLength]), reserving: reserve)
        case .zero(let runs):
            _ = try ReceiverSession.apply(runs, store.zeroPages)
            ledger?.cleared(runs)
        case .discard(let runs):
            _ = try ReceiverSession.apply(runs, store.discardPages)
            ledger?.cleared(runs)
        }
    }

    /// The pages of a delta batch, each delta applied to the page the image has committed
    /// at its address (never this round's writes: a page is in one batch per round).
    private func rebuildDelta(_ header: PageBatchHeader, _ payload: UnsafeRawBufferPointer,
                              into buffer: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer {
        let pageSize = Int(WireLimits.default.pageSize)
        var addresses: [UInt64] = []
        addresses.reserveCapacity(header.pageCount)
        for run in header.runs { for p in 0..<UInt64(run.pageCount) { addresses.append(run.start + p * UInt64(pageSize)) } }
        do {
            try DeltaBatch.decode(payload, pageCount: addresses.count, pageSize: pageSize, into: buffer) { i, page in
                do {
                    try store.read(at: addresses[i], into: page)
                } catch ImageError.outsideLayout {
                    return false
                }
                return true
            }
        } catch let error as DeltaBatchError {
            throw ReceiverSession.Refusal(code: .decompressionFailed, description: "round \(header.round): \(error)")
        }
        return UnsafeRawBufferPointer(start: buffer.baseAddress, count: addresses.count * pageSize)
    }

    /// Decompresses (raw pages are used where they are), checks the checksum, stores the runs.
    private func storeBatch(_ header: PageBatchHeader, _ payload: UnsafeRawBufferPointer, reserving span: AddressRange?) throws {
        let expected = Int(header.uncompressedLength)
        guard expected <= slotBytes else {
            throw ReceiverSession.Refusal(code: .malformedFrame, description: "batch of \(expected) bytes exceeds \(slotBytes)")
        }
        let plain: UnsafeRawBufferPointer
        if header.encoding == .zstd {
            if zstdBuffer == nil { zstdBuffer = .allocate(byteCount: slotBytes, alignment: 4096) }
            let pageBuffer = zstdBuffer!
            _ = try decoder.decode(.zstd, payload: payload, into: pageBuffer, expectedSize: expected)
            plain = UnsafeRawBufferPointer(start: pageBuffer.baseAddress, count: expected)
        } else if header.encoding == .delta {
            if zstdBuffer == nil { zstdBuffer = .allocate(byteCount: slotBytes, alignment: 4096) }
            plain = try rebuildDelta(header, payload, into: zstdBuffer!)
        } else {
            guard payload.count == expected else {
                throw ReceiverSession.Refusal(code: .malformedFrame, description: "raw batch of \(payload.count) bytes, \(expected) declared")
            }
            plain = payload
        }
        let t0 = MonotonicClock.nanoseconds()
        guard PageChecksum.xxh3_64(plain) == header.checksum else {
            throw ReceiverSession.Refusal(code: .checksumMismatch, description: "page batch checksum mismatch in round \(header.round)")
        }
        let t1 = MonotonicClock.nanoseconds()
        var writing: UInt64 = 0
        var offset = 0
        let pageSize = Int(WireLimits.default.pageSize)
        if let span {
            // Charged and dense: reserved, and its short gaps filled in the same writes.
            try store.reserveInPlace(span)
            try store.writeRuns(header.runs, UnsafeRawBufferPointer(rebasing: plain[0..<(header.pageCount * pageSize)]))
            writing = MonotonicClock.nanoseconds() - t1
        }
        for run in header.runs {
            let bytes = Int(run.pageCount) * pageSize
            let pages = UnsafeRawBufferPointer(rebasing: plain[offset..<(offset + bytes)])
            if span == nil {
                let w = MonotonicClock.nanoseconds()
                try store.writePages(at: run.start, pages)
                writing += MonotonicClock.nanoseconds() - w
            }
            try ledger?.wrote(at: run.start, pages)
            stored?(run.start, pages)
            offset += bytes
        }
        let t2 = MonotonicClock.nanoseconds()
        condition.withLock {
            phases.checksum += t1 - t0
            phases.write += writing
            phases.ledger += t2 - t1 - writing
        }
    }

    /// The span a batch's pages are reserved over before they are written in
    /// place (``ImageStore/reserveInPlace(_:)``): from its lowest page to the
    /// end of its highest, when its pages fill at least half of that and leave
    /// gaps; nil otherwise. The session reserves it only where the image's disk
    /// budget has room for the whole span (charged instead of the pages), so a
    /// reservation never outruns `--max-image-bytes` nor refuses a batch whose
    /// pages fit; it at most doubles what a batch costs on disk.
    static func reservation(of header: PageBatchHeader) -> AddressRange? {
        let pageSize = UInt64(WireLimits.default.pageSize)
        var lo = UInt64.max, hi: UInt64 = 0
        for run in header.runs {
            let (bytes, o1) = UInt64(run.pageCount).multipliedReportingOverflow(by: pageSize)
            let (end, o2) = run.start.addingReportingOverflow(bytes)
            guard !o1, !o2 else { return nil }
            lo = min(lo, run.start)
            hi = max(hi, end)
        }
        guard lo < hi else { return nil }
        let data = UInt64(header.pageCount) * pageSize
        let span = hi - lo
        guard data < span, data * 2 >= span else { return nil }
        return AddressRange(start: lo, end: hi)
    }

    /// Wall time the stage spent in each part of its work (decompression is `busy` minus these).
    struct Phases { var checksum: UInt64 = 0, write: UInt64 = 0, ledger: UInt64 = 0 }
    var phaseNanoseconds: Phases { condition.withLock { phases } }
}

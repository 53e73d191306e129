import Foundation
import MemhaulSession
import MemhaulCompression
import MemhaulDigest
import MemhaulKernel
import MemhaulWire
import Synchronization
import MemhaulSystem

/// Sends one round's pages: read → compress on a pool of workers → send.
///
/// Every stage is joined by a ``BoundedQueue`` and buffers come from a fixed
/// pool, so the agent's memory is `poolSize × batch` whatever the target's size.
/// Batches of one round are disjoint, so they may arrive in any order.
final class RoundSender: @unchecked Sendable {  // queues synchronise; each worker owns its encoder
    struct Configuration: Sendable {
        var batchPages = 256
        var workers = 2
        var poolSize = 8
        /// nil = adaptive (``CompressionGovernor``).
        var compressionLevel: Int32? = nil
        /// The receiver accepted the zstd capability; without it every batch is raw.
        var zstd = true
        /// Workers hash every data page for the ledger (capability `ledgerDigest`).
        var hashPages = false
    }

    /// One batch moving through the pipeline.
    final class Job: @unchecked Sendable {  // owned by one stage at a time
        let pages: UnsafeMutableRawBufferPointer
        let encoded: UnsafeMutableRawBufferPointer
        var runs: [AddressRange] = []
        var pageCount = 0
        // Filled by a worker.
        var header: PageBatchHeader?
        var payloadCount = 0
        /// Where the payload is: `pages` itself (raw), `encoded` (zstd) or `delta`.
        enum Payload { case pages, encoded, delta }
        var payload = Payload.pages
        var zeroRuns: [PageRun] = []
        var vanished: [AddressRange] = []
        /// With `hashPages`: the ledger hash of each data page, in the order of `header.runs`.
        var hashes: [LedgerSum] = []
        /// With a ``DeltaCache``: the cached content of the data pages, and the delta payload.
        let bases: UnsafeMutableRawBufferPointer?
        let delta: UnsafeMutableRawBufferPointer?
        var deltaUse = DeltaUse()

        init(bytes: Int, deltas: Bool) {
            pages = .allocate(byteCount: bytes, alignment: 4096)
            encoded = .allocate(byteCount: max(bytes, ZstdCompressor.bound(bytes)), alignment: 64)
            bases = deltas ? .allocate(byteCount: bytes, alignment: 4096) : nil
            delta = deltas ? .allocate(byteCount: bytes, alignment: 64) : nil
        }
        deinit {
            pages.deallocate()
            encoded.deallocate()
            bases?.deallocate()
            delta?.deallocate()
        }
    }

    /// What delta encoding did for one batch (or, summed, a round).
    struct DeltaUse {
        /// Data pages found in the cache / not found.
        var hits: UInt64 = 0
        var misses: UInt64 = 0
        /// Pages that went as deltas, and the bytes that saved against sending them raw.
        var pages: UInt64 = 0
        var savedBytes: UInt64 = 0

        static func += (a: inout DeltaUse, b: DeltaUse) {
            a.hits += b.hits
            a.misses += b.misses
            a.pages += b.pages
            a.savedBytes += b.savedBytes
        }
    }

    struct Totals {
        var delta = DeltaUse()
        var pages: UInt64 = 0
        var zeroPages: UInt64 = 0
        var discardedPages: UInt64 = 0
        var batches: UInt64 = 0
        var pageBytes: UInt64 = 0
        var payloadBytes: UInt64 = 0
        /// `stop` ended the round before all its pages were sent.
        var stopped = false
    }

    /// The pipeline's stages end on this when `stop` asks.
    struct RoundStopped: Error {}

    let configuration: Configuration
    private let pid: Int32
    private let free: BoundedQueue<Job>
    /// One encoder per worker and level, created on first use.
    private let encoders: [EncoderCache]
    let governor: CompressionGovernor
    /// The last-sent content of pages (capability `pageDelta`); nil: every page goes whole.
    let deltaCache: DeltaCache?

    init(pid: Int32, configuration: Configuration, deltaCache: DeltaCache? = nil) {
        self.pid = pid
        self.configuration = configuration
        self.deltaCache = deltaCache
        let bytes = configuration.batchPages * Int(PageSize.bytes)
        free = BoundedQueue(capacity: configuration.poolSize)
        for _ in 0..<configuration.poolSize { free.push(Job(bytes: bytes, deltas: deltaCache != nil)) }
        encoders = (0..<configuration.workers).map { _ in EncoderCache() }
        governor = CompressionGovernor(fixed: configuration.compressionLevel, workers: configuration.workers)
    }

    /// Sends `dirty` pages and `discarded` ranges of wire round `round` on `channel`.
    /// `pace` is called after each frame with the bytes sent (bandwidth cap).
    /// `ledger` records what each frame said, once it is out (on this thread), and so does
    /// the delta cache; `firstRound` (the full copy) only fills its free slots. `lastRound`: no
    /// round can follow (the final round, no `--strict` abort possible), so no sent page is ever
    /// a delta base: the cache forgets them instead of copying them in.
    func send(
        round: UInt64, dirty: [AddressRange], discarded: [AddressRange], channel: FrameChannel,
        ledger: PageLedger? = nil, firstRound: Bool = false, lastRound: Bool = false, pace: (Int) -> Void, cancelled: () -> Bool,
        stop: () -> Bool = { false }
    ) throws -> Totals {
        var totals = Totals()
        let limits = WireLimits.default

        // Discards first: they are disjoint from the dirty pages of the same round.
        for chunk in Self.runs(of: discarded).chunks(of: limits.maxRangesPerMessage) {
            try channel.send(.discardRanges(RangeList(round: round, runs: Array(chunk))))
            totals.discardedPages += chunk.reduce(0) { $0 + UInt64($1.pageCount) }
            for run in chunk {
                ledger?.clear(run.range)
                deltaCache?.drop(run.range)
            }
        }

        let work = BoundedQueue<Job>(capacity: configuration.poolSize)
        let done = BoundedQueue<Job>(capacity: configuration.poolSize)
        let group = DispatchGroup()
        for worker in 0..<encoders.count {
            group.enter()
            Thread.detachNewThread { [self] in
                nameCurrentThread("tx.compress")
                defer { group.leave() }
                while let job = work.pop() {
                    do {
                        let demand = governor.adaptive ? ThreadDemand.current().totalNanoseconds : 0
                        try encode(job, round: round, worker: worker, deltas: !firstRound)
                        if governor.adaptive { governor.recordWork(nanoseconds: ThreadDemand.current().totalNanoseconds &- demand) }
                    } catch {
                        done.fail(error)
                        work.fail(error)
                        free.push(job)
                        return
                    }
                    // A failed pipeline gives every buffer back, or the producer waits forever.
                    if !done.push(job) { free.push(job); return }
                }
            }
        }
        // Producer: read batches from the target on its own thread.
        let readerBox = HandOff(RemoteMemoryReader(pid: pid, bufferBytes: 4096))
        let batchPages = configuration.batchPages
        group.enter()
        Thread.detachNewThread { [self] in
            nameCurrentThread("tx.read")
            let reader = readerBox.value
            defer { group.leave() }
            var iterator = BatchIterator(ranges: dirty, batchPages: batchPages)
            while let runs = iterator.next() {
                guard let job = free.pop() else { break }
                job.runs = runs
                job.pageCount = runs.pageCount
                do {
                    let r = try reader.read(runs, into: job.pages)
                    job.vanished = r.vanished
                } catch {
                    done.fail(error)
                    work.fail(error)
                    free.push(job)
                    return
                }
                if !work.push(job) { free.push(job); return }
            }
            work.close()
        }
        // Closer: once the producer and workers are done, `done` drains and ends.
        Thread.detachNewThread { group.wait(); done.close() }

        // Sender: this thread owns the channel.
        var failure: Error?
        var stopped = false
        var idleSince = MonotonicClock.seconds()
        var blocked = 0.0
        while let job = done.pop() {
            defer {
                let sent = MonotonicClock.seconds()
                governor.record(seconds: sent - idleSince, blockedSeconds: blocked)
                idleSince = sent
                blocked = 0
            }
            // Stopped (an aborted cutover): end the round with what is out; the
            // caller re-sends the rest. Counted like a failure, without an error.
            if stop() {
                stopped = true
                done.fail(RoundStopped())
                work.fail(RoundStopped())
                free.push(job)
                break
            }
            do {
                if cancelled() { throw MigrationError.cancelled }
                try transmit(job, round: round, channel: channel, totals: &totals, blocked: &blocked, pace: pace)
                if let ledger { try record(job, in: ledger) }
                remember(job, evict: !firstRound, keep: !lastRound)
            } catch {
                failure = error
                done.fail(error)
                work.fail(error)
                free.push(job)
                break
            }
            free.push(job)
        }
        if failure != nil || done.error != nil {
            for job in done.drainAll() + work.drainAll() { free.push(job) }
        }
        group.wait()
        for job in done.drainAll() + work.drainAll() { free.push(job) }
        if let failure { throw failure }
        if stopped { totals.stopped = true; return totals }
        if let error = done.error ?? work.error { throw error }
        return totals
    }

    /// Worker stage: split zero pages off, checksum and compress the rest.
    /// `deltas`: look the pages up in the delta cache (not in the first round: nothing was sent before).
    private func encode(_ job: Job, round: UInt64, worker: Int, deltas: Bool) throws {
        let pageSize = Int(PageSize.bytes)
        let vanished = job.vanished
        var zero: [PageRun] = []
        var data: [PageRun] = []
        var dataPages = 0
        var offset = 0
        for run in job.runs {
            var address = run.start
            while address < run.end {
                let page = UnsafeRawBufferPointer(start: job.pages.baseAddress! + offset, count: pageSize)
                let gone = !vanished.isEmpty && vanished.contains { $0.contains(address) }
                if gone {
                    // Unmapped since the scan: the layout diff reports it next round.
                } else if PageClassifier.isZero(page: page) {
                    Self.append(&zero, address)
                } else {
                    if offset != dataPages * pageSize {
                        (job.pages.baseAddress! + dataPages * pageSize).copyMemory(from: page.baseAddress!, byteCount: pageSize)
                    }
                    Self.append(&data, address)
                    dataPages += 1
                }
                address += PageSize.bytes
                offset += pageSize
            }
        }
        job.zeroRuns = zero
        job.header = nil
        job.payloadCount = 0
        job.hashes = []
        job.deltaUse = DeltaUse()
        guard dataPages > 0 else { return }
        let plain = UnsafeRawBufferPointer(start: job.pages.baseAddress, count: dataPages * pageSize)
        if configuration.hashPages { job.hashes = Self.ledgerHashes(data, plain) }
        let checksum = PageChecksum.xxh3_64(plain)
        var encoding = PageEncoding.raw
        job.payload = .pages
        job.payloadCount = plain.count
        let delta = deltas ? encodeDelta(job, data: data, plain: plain) : nil
        if let delta, delta.count <= plain.count / 4 {
            // Small enough that zstd of the whole pages is not worth trying.
        } else if configuration.zstd, let level = governor.level {
            let encoder = encoders[worker].encoder(level: level)
            let (e, count) = try encoder.encode(plain, into: job.encoded)
            if e == .zstd {
                encoding = .zstd
                job.payload = .encoded
                job.payloadCount = count
            }
        }
        if let delta, delta.count < job.payloadCount {
            encoding = .delta
            job.payload = .delta
            job.payloadCount = delta.count
            job.deltaUse.pages = UInt64(delta.deltaPages)
            job.deltaUse.savedBytes = UInt64(plain.count - delta.count)
        }
        job.header = PageBatchHeader(
            round: round, encoding: encoding, runs: data,
            uncompressedLength: UInt32(plain.count), checksum: checksum, payloadLength: UInt32(job.payloadCount))
    }

    /// The batch's data pages as a delta payload in `job.delta` against the cached pages, or
    /// nil (no cache, no page cached, or no smaller than the pages raw). Counts hits and misses.
    private func encodeDelta(_ job: Job, data: [PageRun], plain: UnsafeRawBufferPointer) -> (count: Int, deltaPages: Int)? {
        guard let deltaCache, let bases = job.bases, let out = job.delta else { return nil }
        var addresses: [UInt64] = []
        addresses.reserveCapacity(plain.count / Int(PageSize.bytes))
        for run in data { for p in 0..<UInt64(run.pageCount) { addresses.append(run.start + p * PageSize.bytes) } }
        let found = deltaCache.lookup(addresses, into: bases)
        let hits = found.reduce(0) { $0 + ($1 ? 1 : 0) }
        job.deltaUse.hits = UInt64(hits)
        job.deltaUse.misses = UInt64(found.count - hits)
        guard hits > 0 else { return nil }
        return DeltaBatch.encode(plain, bases: UnsafeRawBufferPointer(bases), hasBase: found, pageSize: Int(PageSize.bytes),
                                 into: out, limit: plain.count)
    }

    /// What `job`'s frames put in the receiver's image, into the delta cache (`keep`), or
    /// out of it (what the cache had of those pages is stale now).
    private func remember(_ job: Job, evict: Bool, keep: Bool) {
        guard let deltaCache else { return }
        for run in job.zeroRuns { deltaCache.drop(run.range) }
        for range in job.vanished { deltaCache.drop(range.start..<range.end) }
        guard let header = job.header else { return }
        if keep {
            deltaCache.store(header.runs, pages: UnsafeRawBufferPointer(job.pages), evict: evict)
        } else {
            for run in header.runs { deltaCache.drop(run.range) }
        }
    }

    /// Sends the job's frames; `blocked` gets the seconds the thread spent
    /// waiting for the socket (wall minus CPU demand), for the governor.
    private func transmit(
        _ job: Job, round: UInt64, channel: FrameChannel, totals: inout Totals, blocked: inout Double, pace: (Int) -> Void
    ) throws {
        let before = channel.bytesSent
        let measure = governor.adaptive
        let wall0 = measure ? MonotonicClock.nanoseconds() : 0
        let demand0 = measure ? ThreadDemand.current().totalNanoseconds : 0
        if !job.zeroRuns.isEmpty {
            try channel.send(.zeroRanges(RangeList(round: round, runs: job.zeroRuns)))
            totals.zeroPages += job.zeroRuns.reduce(0) { $0 + UInt64($1.pageCount) }
        }
        if let header = job.header {
            let base = switch job.payload {
            case .pages: job.pages.baseAddress
            case .encoded: job.encoded.baseAddress
            case .delta: job.delta!.baseAddress
            }
            try channel.sendPageBatch(header, payload: UnsafeRawBufferPointer(start: base, count: job.payloadCount))
            totals.batches += 1
            totals.pages += UInt64(header.pageCount)
            totals.pageBytes += UInt64(header.uncompressedLength)
            totals.payloadBytes += UInt64(job.payloadCount)
            totals.delta += job.deltaUse
        }
        if measure {
            let wall = MonotonicClock.nanoseconds() - wall0, demand = ThreadDemand.current().totalNanoseconds &- demand0
            blocked += Double(wall > demand ? wall - demand : 0) / 1e9
        }
        pace(Int(channel.bytesSent - before))
    }

    /// The ledger hash of each page of `runs`, whose bytes are `plain` back to back.
    static func ledgerHashes(_ runs: [PageRun], _ plain: UnsafeRawBufferPointer) -> [LedgerSum] {
        var out: [LedgerSum] = []
        out.reserveCapacity(plain.count / Int(PageSize.bytes))
        var offset = 0
        for run in runs {
            for i in 0..<UInt64(run.pageCount) {
                out.append(PageLedger.pageHash(address: run.start + i * PageSize.bytes, plain.baseAddress! + offset))
                offset += Int(PageSize.bytes)
            }
        }
        return out
    }

    /// What `job`'s frames told the receiver, into the sender's ledger.
    private func record(_ job: Job, in ledger: PageLedger) throws {
        for run in job.zeroRuns { ledger.clear(run.range) }
        guard let header = job.header else { return }
        var i = 0
        for run in header.runs {
            for p in 0..<UInt64(run.pageCount) {
                try ledger.record(address: run.start + p * PageSize.bytes, hash: job.hashes[i])
                i += 1
            }
        }
    }

    private static func append(_ runs: inout [PageRun], _ address: UInt64) {
        if let last = runs.last, last.start + UInt64(last.pageCount) * PageSize.bytes == address {
            runs[runs.count - 1].pageCount += 1
        } else {
            runs.append(PageRun(start: address, pageCount: 1))
        }
    }

    static func runs(of ranges: [AddressRange]) -> [PageRun] {
        var out: [PageRun] = []
        for r in ranges {
            var start = r.start
            while start < r.end {
                let pages = min(UInt64(UInt32.max) & ~0xFFF, (r.end - start) / PageSize.bytes)
                out.append(PageRun(start: start, pageCount: UInt32(pages)))
                start += pages * PageSize.bytes
            }
        }
        return out
    }
}

/// Cuts sorted page ranges into batches of at most `batchPages` pages.
struct BatchIterator {
    private let ranges: [AddressRange]
    private let batchPages: Int
    private var index = 0
    private var cursor: UInt64 = 0

    init(ranges: [AddressRange], batchPages: Int) {
        self.ranges = ranges
        self.batchPages = batchPages
        self.cursor = ranges.first?.start ?? 0
    }

    mutating func next() -> [AddressRange]? {
        var batch: [AddressRange] = []
        var pages = 0
        while index < ranges.count && pages < batchPages {
            let r = ranges[index]
            if cursor < r.start { cursor = r.start }
            let take = min(UInt64(batchPages - pages), (r.end - cursor) / PageSize.bytes)
            if take > 0 {
                batch.append(AddressRange(start: cursor, end: cursor + take * PageSize.bytes))
                pages += Int(take)
                cursor += take * PageSize.bytes
            }
            if cursor >= r.end {
                index += 1
                if index < ranges.count { cursor = ranges[index].start }
            }
        }
        return batch.isEmpty ? nil : batch
    }
}

extension PageRun {
    /// The run's bytes as a half-open range.
    var range: Range<UInt64> { start..<(start + UInt64(pageCount) * PageSize.bytes) }
}

extension Array {
    func chunks(of size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: Swift.max(size, 1)).map { self[$0..<Swift.min($0 + size, count)] }
    }
}

/// One worker's encoder at the governor's current level; used by that worker's thread only.
/// Only one: a context per level the governor visits (7) and worker held 0.5–3.5 MiB each (ZSTD_estimateCCtxSize)
/// that the current level no longer used; a level change costs one new context.
final class EncoderCache: @unchecked Sendable {  // one worker thread at a time
    private var current: BatchEncoder?
    func encoder(level: Int32) -> BatchEncoder {
        if let e = current, e.compressor.level == level { return e }
        current = nil  // the old context goes before the new one grows
        // No scratch: RoundSender encodes into the job's own buffer.
        let e = BatchEncoder(level: level, maxBatchBytes: 0)
        current = e
        return e
    }
}

extension RoundScan {
    /// The scan cut into commit chunks of at most `maxBytes` of dirty pages
    /// each, the first at most `firstMaxBytes` (ranges are split at page
    /// boundaries); the discards travel with the first chunk. Always at least
    /// one chunk, so an empty round still commits.
    func commitChunks(maxBytes: UInt64, firstMaxBytes: UInt64? = nil) -> [RoundScan] {
        let rest = PageSize.roundDown(max(maxBytes, PageSize.bytes))
        let first = PageSize.roundDown(max(min(firstMaxBytes ?? maxBytes, maxBytes), PageSize.bytes))
        var chunks: [RoundScan] = []
        var current: [AddressRange] = []
        var bytes: UInt64 = 0
        func close() {
            chunks.append(RoundScan(round: round, dirty: current, discarded: chunks.isEmpty ? discarded : [], stats: stats))
            current = []
            bytes = 0
        }
        for range in dirty {
            var start = range.start
            while start < range.end {
                let limit = chunks.isEmpty ? first : rest
                let take = min(range.end - start, limit - bytes)
                current.append(AddressRange(start: start, end: start + take))
                bytes += take
                start += take
                if bytes == limit { close() }
            }
        }
        if !current.isEmpty || chunks.isEmpty { close() }
        return chunks
    }
}

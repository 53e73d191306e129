#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulImage
import MemhaulSystem
import Synchronization

/// Reads a complete image's region files into the page cache on one
/// background thread (`posix_fadvise(WILLNEED)`, Linux's `readahead(2)`, over
/// their data extents in address order, the order `criu restore` reads them), started once the final round
/// is committed: the read overlaps A's `criu dump` and the dump's transfer, and
/// goes on beside the restore (large sequential requests ahead of CRIU's many
/// small `preadv`s: a cold 2 GiB restore 20.4 s → 4.7 s, BENCHMARKS.md) until
/// the restore returns. Only an optimisation: a failed call ends it (logged),
/// the restore then reads what is not cached.
public final class ImageReadahead: Sendable {
    /// What it did, once it ended.
    public struct Outcome: Sendable, Equatable {
        /// Bytes handed to `posix_fadvise(WILLNEED)` (data extents only, holes skipped).
        public var bytes: UInt64 = 0
        /// Start → last call returned (the kernel may still complete the last reads).
        public var seconds: Double = 0
        /// Data bytes of the image's extents.
        public var imageBytes: UInt64 = 0
        /// Every extent was read ahead (not stopped, not failed, not skipped).
        public var finished = false
        /// Why it did not read (too large for the memory, no extents) or what failed; nil if it read.
        public var note: String?
    }

    /// One call's bytes: the thread checks for ``stop()`` between calls.
    static let chunkBytes: UInt64 = 8 << 20
    /// The image's data is read ahead only if it is at most MemAvailable / this:
    /// the restore then needs as much again as anonymous memory, and a cache
    /// larger than what stays free would evict its own first pages before the
    /// restore reads them (a wasted second read of the disk).
    public static let memoryDivisor: UInt64 = 2

    /// One region file's data run: `[offset, offset + length)` of `files[file]`.
    struct Extent: Equatable {
        var file: Int
        var offset: UInt64
        var length: UInt64
    }

    private let stopRequested = Atomic<Bool>(false)
    private let result = Mutex<Outcome?>(nil)
    private let ended = DispatchSemaphore(value: 0)

    private init() {}

    /// Starts the thread over the image in `directory` (its committed region
    /// files). `memAvailable` is read once, at the start; `beforeChunk` (tests)
    /// runs before each call with its index.
    public static func start(directory: String, memAvailable: UInt64? = ProcFS.memAvailableBytes(),
                             log: @escaping @Sendable (String) -> Void) -> ImageReadahead {
        start(directory: directory, memAvailable: memAvailable, beforeChunk: nil, log: log)
    }

    static func start(directory: String, memAvailable: UInt64?, beforeChunk: (@Sendable (Int) -> Void)?,
                      log: @escaping @Sendable (String) -> Void) -> ImageReadahead {
        let readahead = ImageReadahead()
        let faults = Syscall.currentFaults
        Thread.detachNewThread {
            nameCurrentThread("mh-readahead")
            let outcome = Syscall.withFaults(faults) {
                readahead.run(directory: directory, memAvailable: memAvailable, beforeChunk: beforeChunk)
            }
            readahead.result.withLock { $0 = outcome }
            log(describe(outcome, directory: directory))
            readahead.ended.signal()
        }
        return readahead
    }

    /// Stops it between two calls and waits for the thread; what it did.
    /// Idempotent.
    @discardableResult
    public func stop() -> Outcome {
        requestStop()
        if let done = result.withLock({ $0 }) { return done }
        ended.wait()
        ended.signal()  // for a later stop()
        return result.withLock { $0! }
    }

    /// Asks the thread to stop before its next call, without waiting.
    func requestStop() { stopRequested.store(true, ordering: .relaxed) }

    /// Waits until it ended by itself (tests, benches).
    public func wait() -> Outcome {
        ended.wait()
        ended.signal()
        return result.withLock { $0! }
    }

    private func run(directory: String, memAvailable: UInt64?, beforeChunk: (@Sendable (Int) -> Void)?) -> Outcome {
        let start = MonotonicClock.seconds()
        var outcome = Outcome()
        read(directory: directory, memAvailable: memAvailable, beforeChunk: beforeChunk, into: &outcome)
        outcome.seconds = MonotonicClock.seconds() - start
        return outcome
    }

    private func read(directory: String, memAvailable: UInt64?, beforeChunk: (@Sendable (Int) -> Void)?, into outcome: inout Outcome) {
        let files: [FileDescriptor]
        let extents: [Extent]
        do {
            (files, extents) = try Self.extents(directory: directory)
        } catch {
            outcome.note = "\(error)"
            return
        }
        outcome.imageBytes = extents.reduce(0) { $0 + $1.length }
        if let available = memAvailable, outcome.imageBytes > available / Self.memoryDivisor {
            outcome.note = "\(outcome.imageBytes >> 20) MiB of data is more than 1/\(Self.memoryDivisor) of MemAvailable (\(available >> 20) MiB)"
            return
        }
        var calls = 0
        for extent in extents {
            var done: UInt64 = 0
            while done < extent.length {
                beforeChunk?(calls)
                calls += 1
                if stopRequested.load(ordering: .relaxed) { outcome.note = "stopped"; return }
                let n = min(Self.chunkBytes, extent.length - done)
                do {
                    try files[extent.file].readAhead(offset: extent.offset + done, count: n)
                } catch {
                    outcome.note = "\(error)"
                    return
                }
                done += n
                outcome.bytes += n
            }
        }
        outcome.finished = true
    }

    /// The data extents of the image's committed segments, in address order
    /// (`lseek(SEEK_DATA/SEEK_HOLE)`, no reads), and the files they lie in.
    static func extents(directory: String) throws -> ([FileDescriptor], [Extent]) {
        let reader = try ImageReader.open(directory: directory)
        defer { reader.close() }
        let map = try reader.regionFileMap()
        var files: [FileDescriptor] = []
        var index: [UInt32: Int] = [:]
        var extents: [Extent] = []
        for segment in map.segments.sorted(by: { $0.start < $1.start }) {
            guard let file = map.files[segment.fileID] else { continue }  // the reader checked the manifest
            if index[segment.fileID] == nil {
                index[segment.fileID] = files.count
                files.append(try FileDescriptor.open(file.path, O_RDONLY))
            }
            let k = index[segment.fileID]!
            var pos = segment.start - file.base
            let end = segment.end - file.base
            while pos < end, let data = try files[k].nextData(pos), data < end {
                let hole = min(try files[k].nextHole(data), end)
                guard hole > data else { break }
                extents.append(Extent(file: k, offset: data, length: hole - data))
                pos = hole
            }
        }
        return (files, extents)
    }

    /// The log line for `outcome`.
    static func describe(_ outcome: Outcome, directory: String) -> String {
        let ms = Int(outcome.seconds * 1000)
        if outcome.finished { return "receiver: read ahead \(outcome.bytes >> 20) MiB of \(directory) in \(ms) ms" }
        if outcome.bytes == 0, let note = outcome.note { return "receiver: no readahead of \(directory): \(note)" }
        return "receiver: readahead of \(directory) ended after \(outcome.bytes >> 20) of \(outcome.imageBytes >> 20) MiB, \(ms) ms: \(outcome.note ?? "?")"
    }

    /// Bench only (`memhaul receive --bench-cold-image`): flushes the region
    /// files and drops them from the page cache (`fdatasync`, then
    /// `posix_fadvise(DONTNEED)`), as if other work had evicted them.
    public static func dropFromCache(directory: String) throws {
        let (files, _) = try extents(directory: directory)
        for f in files {
            try f.fdatasync()
            try f.dropCachedPages()
        }
    }
}

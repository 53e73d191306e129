/// How a batch payload is encoded on the wire.
public enum BatchEncoding: UInt8, Sendable, CustomStringConvertible {
    /// The pages themselves.
    case raw = 0
    /// One zstd frame of the pages.
    case zstd = 1

    public var description: String { self == .raw ? "raw" : "zstd" }
}

/// Counters of what a ``BatchEncoder`` did.
public struct BatchStatistics: Equatable, Sendable {
    public var batches = 0
    /// Batches sent raw because compression did not pay.
    public var rawBatches = 0
    /// Of those, batches sent raw on the sample alone, without compressing the batch.
    public var sampledRawBatches = 0
    public var bytesIn = 0
    public var bytesOut = 0
    public init() {}
    /// bytesOut / bytesIn (1 when nothing was encoded).
    public var ratio: Double { bytesIn == 0 ? 1 : Double(bytesOut) / Double(bytesIn) }
}

/// Encodes a batch of non-zero pages as zstd, or raw when zstd does not pay.
///
/// The rule, per batch of `n` bytes: compress into room for `rawThreshold * n`
/// bytes (97%); if zstd runs out of room, send the batch raw. So a payload is
/// either raw or at most 97% of the pages, and the receiver never sees
/// expansion. zstd detects incompressible blocks itself, so the failed attempt
/// is cheap: on random pages level 1 runs at ~2.7 GB/s (vs ~0.3 GB/s on text).
///
/// Optional sampling (`samplePages > 0`, off by default): before compressing a
/// batch of at least `sampleThreshold` bytes, compress `samplePages` pages
/// spread evenly through it and send the batch raw if the sample does not
/// shrink below 97%. Measured on 64 MiB of 30% zero / 40% text / 30% random
/// pages in 64-page batches (`CompressionBenchmark`, release, 2 shared cores):
/// it makes all-random memory ~1.5x faster to encode (4.1 vs 2.7 GB/s) but
/// sends ~5% of mixed batches raw that would have compressed (ratio 0.453 vs
/// 0.440 at level -1), and both speeds exceed the network, so it stays off.
///
/// Reuses one zstd context and scratch buffer: no per-batch allocation.
/// Not thread-safe: one encoder per sending thread.
public final class BatchEncoder {
    public let compressor: ZstdCompressor
    /// A payload at or above this fraction of the input is sent raw.
    public let rawThreshold: Double
    /// Pages compressed as a sample before deciding to compress a whole batch.
    public let samplePages: Int
    /// Batches smaller than this are compressed without sampling.
    public let sampleThreshold: Int
    public private(set) var statistics = BatchStatistics()

    private var scratch: UnsafeMutableRawBufferPointer
    private let sample: UnsafeMutableRawBufferPointer
    private let sampleOut: UnsafeMutableRawBufferPointer

    /// - Parameters:
    ///   - level: zstd level (see ``ZstdCompressor/supportedLevels``).
    ///   - maxBatchBytes: scratch size reserved up front; larger batches grow it once.
    ///   - samplePages: pages sampled before compressing; 0 (the default) compresses every batch.
    public init(
        level: Int32, maxBatchBytes: Int = 4 << 20, rawThreshold: Double = 0.97,
        samplePages: Int = 0, sampleThreshold: Int = 16 * PageClassifier.pageSize
    ) {
        self.compressor = ZstdCompressor(level: level)
        self.rawThreshold = rawThreshold
        self.samplePages = samplePages
        self.sampleThreshold = sampleThreshold
        self.scratch = .allocate(byteCount: max(maxBatchBytes, 1), alignment: 64)
        self.sample = .allocate(byteCount: max(samplePages, 1) * PageClassifier.pageSize, alignment: 64)
        self.sampleOut = .allocate(byteCount: ZstdCompressor.bound(sample.count), alignment: 64)
    }

    deinit {
        scratch.deallocate()
        sample.deallocate()
        sampleOut.deallocate()
    }

    /// Resets ``statistics``.
    public func resetStatistics() { statistics = BatchStatistics() }

    /// Encodes `pages` and hands the payload to `body`. A raw payload is
    /// `pages` itself; a zstd one lives in the encoder's scratch buffer and is
    /// valid only inside `body`.
    public func encode<R>(
        _ pages: UnsafeRawBufferPointer, _ body: (BatchEncoding, UnsafeRawBufferPointer) throws -> R
    ) throws -> R {
        if scratch.count < pages.count {
            scratch.deallocate()
            scratch = .allocate(byteCount: pages.count, alignment: 64)
        }
        if let n = try compressIfWorthIt(pages, into: scratch) {
            return try body(.zstd, UnsafeRawBufferPointer(start: scratch.baseAddress, count: n))
        }
        return try body(.raw, pages)
    }

    /// Encodes `pages` into `dst`, which must hold at least `pages.count`
    /// bytes (a raw payload is copied there). Returns the encoding and size.
    public func encode(
        _ pages: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer
    ) throws(CompressionError) -> (encoding: BatchEncoding, count: Int) {
        guard dst.count >= pages.count else {
            throw .destinationTooSmall(needed: pages.count, capacity: dst.count)
        }
        if let n = try compressIfWorthIt(pages, into: dst) { return (.zstd, n) }
        if pages.count > 0 { dst.baseAddress!.copyMemory(from: pages.baseAddress!, byteCount: pages.count) }
        return (.raw, pages.count)
    }

    /// The size of the zstd frame written to `dst`, or nil to send raw.
    private func compressIfWorthIt(
        _ pages: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer
    ) throws(CompressionError) -> Int? {
        statistics.batches += 1
        statistics.bytesIn += pages.count
        let limit = Int(Double(pages.count) * rawThreshold)
        var decided: Int?
        if sampleLooksIncompressible(pages) {
            statistics.sampledRawBatches += 1
        } else {
            do {
                let n = try compressor.compress(pages, into: UnsafeMutableRawBufferPointer(rebasing: dst[0..<min(limit, dst.count)]))
                decided = n < limit ? n : nil
            } catch .destinationTooSmall {
                decided = nil
            }
        }
        if let n = decided {
            statistics.bytesOut += n
            return n
        }
        statistics.rawBatches += 1
        statistics.bytesOut += pages.count
        return nil
    }

    private func sampleLooksIncompressible(_ pages: UnsafeRawBufferPointer) -> Bool {
        let pageSize = PageClassifier.pageSize
        let pageCount = pages.count / pageSize
        guard samplePages > 0, pages.count >= sampleThreshold, pageCount >= samplePages else { return false }
        let stride = pageCount / samplePages
        for i in 0..<samplePages {
            (sample.baseAddress! + i * pageSize).copyMemory(from: pages.baseAddress! + i * stride * pageSize, byteCount: pageSize)
        }
        let sampleBytes = samplePages * pageSize
        guard let n = try? compressor.compress(
            UnsafeRawBufferPointer(start: sample.baseAddress, count: sampleBytes), into: sampleOut)
        else { return false }
        return Double(n) >= Double(sampleBytes) * rawThreshold
    }
}

/// Decodes batch payloads produced by ``BatchEncoder``, for untrusted input.
public final class BatchDecoder {
    public let decompressor = ZstdDecompressor()

    public init() {}

    /// Decodes `payload` into the first `expectedSize` bytes of `dst` (the size
    /// declared on the wire); throws unless it is exactly that size.
    public func decode(
        _ encoding: BatchEncoding, payload: UnsafeRawBufferPointer,
        into dst: UnsafeMutableRawBufferPointer, expectedSize: Int
    ) throws(CompressionError) -> Int {
        switch encoding {
        case .zstd:
            return try decompressor.decompress(payload, into: dst, expectedSize: expectedSize)
        case .raw:
            guard payload.count == expectedSize else {
                throw .sizeMismatch(expected: expectedSize, actual: payload.count)
            }
            guard dst.count >= expectedSize else {
                throw .destinationTooSmall(needed: expectedSize, capacity: dst.count)
            }
            if expectedSize > 0 { dst.baseAddress!.copyMemory(from: payload.baseAddress!, byteCount: expectedSize) }
            return expectedSize
        }
    }
}

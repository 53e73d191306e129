/// Splits page batches into zero pages (sent as ranges, no payload) and
/// non-zero pages (compressed).
public enum PageClassifier {
    /// The page size memhaul works in.
    public static let pageSize = 4096

    /// True if every byte of `page` is zero. Any length works; pages are the intent.
    ///
    /// Checks the first word alone (most non-zero pages differ there), then ORs
    /// 64-byte blocks as 8 words (the compiler vectorises the OR) and stops at
    /// the first non-zero block.
    @inlinable
    public static func isZero(page: UnsafeRawBufferPointer) -> Bool {
        guard let base = page.baseAddress else { return true }
        let count = page.count
        var i = 0
        if count >= 8 {
            if base.loadUnaligned(as: UInt64.self) != 0 { return false }
        }
        while i + 64 <= count {
            let p = base + i
            let a = p.loadUnaligned(fromByteOffset: 0, as: UInt64.self) | p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            let b = p.loadUnaligned(fromByteOffset: 16, as: UInt64.self) | p.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
            let c = p.loadUnaligned(fromByteOffset: 32, as: UInt64.self) | p.loadUnaligned(fromByteOffset: 40, as: UInt64.self)
            let d = p.loadUnaligned(fromByteOffset: 48, as: UInt64.self) | p.loadUnaligned(fromByteOffset: 56, as: UInt64.self)
            if (a | b | c | d) != 0 { return false }
            i += 64
        }
        while i < count {
            if base.load(fromByteOffset: i, as: UInt8.self) != 0 { return false }
            i += 1
        }
        return true
    }

    /// Classifies each page of `batch` (a whole number of pages) into `result`,
    /// reusing its arrays' storage. Page indices are relative to the batch.
    public static func classify(
        batch: UnsafeRawBufferPointer, pageSize: Int = pageSize, into result: inout PageClassification
    ) {
        precondition(batch.count % pageSize == 0, "batch of \(batch.count) bytes is not whole \(pageSize)-byte pages")
        result.removeAll()
        let pages = batch.count / pageSize
        result.pageCount = pages
        guard let base = batch.baseAddress else { return }
        for index in 0..<pages {
            let page = UnsafeRawBufferPointer(start: base + index * pageSize, count: pageSize)
            if isZero(page: page) {
                PageClassification.append(index, to: &result.zeroRuns)
            } else {
                PageClassification.append(index, to: &result.nonZeroRuns)
                result.nonZeroCount += 1
            }
        }
    }

    /// Classifies a fresh result for `batch`.
    public static func classify(batch: UnsafeRawBufferPointer, pageSize: Int = pageSize) -> PageClassification {
        var result = PageClassification()
        classify(batch: batch, pageSize: pageSize, into: &result)
        return result
    }

    /// Classifies `batch` and moves its non-zero pages, in order, to the front
    /// of the buffer (memmove of each non-zero run), so they can be encoded as
    /// one contiguous payload. Returns the byte count of that prefix
    /// (`result.nonZeroCount * pageSize`).
    @discardableResult
    public static func classifyAndCompact(
        batch: UnsafeMutableRawBufferPointer, pageSize: Int = pageSize, into result: inout PageClassification
    ) -> Int {
        classify(batch: UnsafeRawBufferPointer(batch), pageSize: pageSize, into: &result)
        guard let base = batch.baseAddress else { return 0 }
        var out = 0
        for run in result.nonZeroRuns {
            let from = run.lowerBound * pageSize
            let bytes = run.count * pageSize
            if from != out { (base + out).copyMemory(from: base + from, byteCount: bytes) }
            out += bytes
        }
        return out
    }
}

/// Where the zero and non-zero pages of one batch are, as runs of page indices.
public struct PageClassification: Equatable, Sendable {
    /// Pages in the batch.
    public var pageCount = 0
    /// Runs of zero pages, ascending.
    public var zeroRuns: [Range<Int>] = []
    /// Runs of non-zero pages, ascending.
    public var nonZeroRuns: [Range<Int>] = []
    /// Number of non-zero pages.
    public var nonZeroCount = 0

    public init() {}

    /// Number of zero pages.
    public var zeroCount: Int { pageCount - nonZeroCount }

    mutating func removeAll() {
        pageCount = 0
        nonZeroCount = 0
        zeroRuns.removeAll(keepingCapacity: true)
        nonZeroRuns.removeAll(keepingCapacity: true)
    }

    /// Extends the last run if `index` follows it, else starts a new run.
    @inline(__always)
    static func append(_ index: Int, to runs: inout [Range<Int>]) {
        if let last = runs.last, last.upperBound == index {
            runs[runs.count - 1] = last.lowerBound..<(index + 1)
        } else {
            runs.append(index..<(index + 1))
        }
    }
}

// Little-endian load/store helpers. Loads are unaligned and bounds-checked by the caller
// (ByteReader checks before every load), so no input can make them read out of range.

extension UnsafeRawBufferPointer {
    @inline(__always)
    func le<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension Array where Element == UInt8 {
    @inline(__always)
    mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    @inline(__always)
    mutating func appendBE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }

    @inline(__always)
    mutating func appendZeros(_ count: Int) {
        append(contentsOf: repeatElement(0, count: count))
    }

    /// Appends runs as 12-byte (start u64, page count u32) records with one resize and direct
    /// stores: a 1024-run PAGE_BATCH header must cost nothing next to its 4 MiB payload.
    mutating func appendRuns(_ runs: [PageRun]) {
        let base = count
        append(contentsOf: repeatElement(0, count: runs.count &* PageRun.size))
        withUnsafeMutableBytes { buf in
            var o = base
            for run in runs {
                buf.storeBytes(of: run.start.littleEndian, toByteOffset: o, as: UInt64.self)
                buf.storeBytes(of: run.pageCount.littleEndian, toByteOffset: o &+ 8, as: UInt32.self)
                o &+= PageRun.size
            }
        }
    }

    /// Overwrites a u32 already appended at `offset` (used to patch frame lengths).
    @inline(__always)
    mutating func storeLE(_ value: UInt32, at offset: Int) {
        withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: UInt32.self) }
    }
}

extension ArraySlice where Element == UInt8 {
    /// `withUnsafeBytes` with a typed error (the stdlib one only rethrows untyped).
    @inline(__always)
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws(WireError) -> R) throws(WireError) -> R {
        let result: Result<R, WireError> = withUnsafeBytes { raw in Result { () throws(WireError) in try body(raw) } }
        return try result.get()
    }
}

/// Cursor over untrusted bytes: every read checks the remaining length first and throws
/// `truncated`, so nothing ever reads past the input.
struct ByteReader {
    let base: UnsafeRawBufferPointer
    private(set) var offset: Int = 0

    init(_ base: UnsafeRawBufferPointer) { self.base = base }

    var remaining: Int { base.count - offset }

    @inline(__always)
    func need(_ n: Int) throws(WireError) {
        // n is never negative here (callers pass sizes computed from u8/u16/u32 fields), but guard anyway.
        guard n >= 0, n <= remaining else {
            let (sum, overflow) = offset.addingReportingOverflow(max(n, 0))
            throw .truncated(needed: overflow ? Int.max : sum, available: base.count)
        }
    }

    @inline(__always)
    mutating func read<T: FixedWidthInteger>(_: T.Type) throws(WireError) -> T {
        try need(MemoryLayout<T>.size)
        let v = base.le(T.self, at: offset)
        offset &+= MemoryLayout<T>.size
        return v
    }

    @inline(__always)
    mutating func readBE<T: FixedWidthInteger>(_: T.Type) throws(WireError) -> T {
        try need(MemoryLayout<T>.size)
        let v = T(bigEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset &+= MemoryLayout<T>.size
        return v
    }

    /// Reads `count` runs, checking each with `checker`; one bounds check for the whole list.
    mutating func runs(_ count: Int, checker: inout RunChecker) throws(WireError) -> [PageRun] {
        try need(count &* PageRun.size)  // count <= 2^32 - 1: no overflow
        var runs: [PageRun] = []
        runs.reserveCapacity(count)
        var o = offset
        for _ in 0..<count {
            let run = PageRun(start: base.le(UInt64.self, at: o), pageCount: base.le(UInt32.self, at: o &+ 8))
            try checker.add(run)
            runs.append(run)
            o &+= PageRun.size
        }
        offset = o
        return runs
    }

    /// Reads `n` bytes that must all be zero.
    mutating func reserved(_ n: Int) throws(WireError) {
        try need(n)
        for i in offset..<(offset + n) where base[i] != 0 { throw .reservedNotZero }
        offset &+= n
    }

    mutating func bytes(_ n: Int) throws(WireError) -> UnsafeRawBufferPointer {
        try need(n)
        let slice = UnsafeRawBufferPointer(rebasing: base[offset..<(offset + n)])
        offset &+= n
        return slice
    }

    /// A UTF-8 string of `n` bytes (n already checked against its limit by the caller).
    mutating func string(_ n: Int) throws(WireError) -> String {
        let raw = try bytes(n)
        guard let s = String(validating: raw.assumingMemoryBound(to: UInt8.self), as: UTF8.self) else { throw .invalidUTF8 }
        return s
    }

    /// Throws `lengthMismatch` if bytes remain after the last field.
    func finish() throws(WireError) {
        guard remaining == 0 else { throw .lengthMismatch(expected: offset, actual: base.count) }
    }
}

import CZstd

/// A reusable zstd decompression context (`ZSTD_DCtx`), freed in deinit.
///
/// Built for untrusted input: the caller says how many bytes the payload must
/// produce (the size declared on the wire, itself bounded by the wire layer),
/// and zstd decompresses into exactly that much room, so a hostile frame can
/// never make the receiver allocate or write more (decompression bombs).
/// The frame must be exactly one zstd frame filling the whole payload.
///
/// Not thread-safe: a context is used by one thread at a time.
public final class ZstdDecompressor {
    private let dctx: OpaquePointer

    /// Largest window a frame may ask for: 2^23 = 8 MiB, twice the largest
    /// batch, so a frame header cannot make zstd reserve a huge window.
    public static let windowLogMax: Int32 = 23

    /// `ZSTD_createDCtx` + `ZSTD_DCtx_setParameter(ZSTD_d_windowLogMax)`.
    public init() {
        guard let dctx = ZSTD_createDCtx() else { fatalError("ZSTD_createDCtx: out of memory") }
        self.dctx = dctx
        ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, Self.windowLogMax)
    }

    deinit { ZSTD_freeDCtx(dctx) }

    /// Decompresses one zstd frame into the first `expectedSize` bytes of `dst`
    /// (`ZSTD_decompressDCtx`); returns `expectedSize`.
    ///
    /// Checks, before any decompression work: the frame header parses, the
    /// declared content size (`ZSTD_getFrameContentSize`) is not above
    /// `expectedSize`, and the frame spans the whole payload
    /// (`ZSTD_findFrameCompressedSize`). A frame without a declared size is
    /// decompressed with capacity `expectedSize` and rejected if it overflows.
    public func decompress(
        _ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer, expectedSize: Int
    ) throws(CompressionError) -> Int {
        guard expectedSize >= 0, dst.count >= expectedSize else {
            throw .destinationTooSmall(needed: expectedSize, capacity: dst.count)
        }
        guard src.count > 0 else { throw .corrupt("empty payload") }
        let declared = ZSTD_getFrameContentSize(src.baseAddress, src.count)
        switch declared {
        case UInt64.max - 1:  // ZSTD_CONTENTSIZE_ERROR
            throw .corrupt(src.count < 4 ? "truncated frame header" : "not a zstd frame (bad magic or header)")
        case UInt64.max:  // ZSTD_CONTENTSIZE_UNKNOWN (or truncated header): bounded by capacity below
            break
        default:
            if declared > UInt64(expectedSize) { throw .tooLarge(declared: declared, limit: expectedSize) }
            if declared < UInt64(expectedSize) { throw .sizeMismatch(expected: expectedSize, actual: Int(declared)) }
        }
        let frameSize = ZSTD_findFrameCompressedSize(src.baseAddress, src.count)
        if ZSTD_isError(frameSize) != 0 {
            throw .corrupt(ZSTD_getErrorCode(frameSize) == ZSTD_error_srcSize_wrong
                ? "truncated frame (\(src.count) bytes)" : zstdErrorName(frameSize))
        }
        if frameSize != src.count { throw .corrupt("\(src.count - frameSize) bytes after the frame") }

        let out = ZSTD_decompressDCtx(dctx, dst.baseAddress, expectedSize, src.baseAddress, src.count)
        if ZSTD_isError(out) != 0 {
            if ZSTD_getErrorCode(out) == ZSTD_error_dstSize_tooSmall {
                throw .tooLarge(declared: declared == UInt64.max ? nil : declared, limit: expectedSize)
            }
            throw .corrupt(zstdErrorName(out))
        }
        guard out == expectedSize else { throw .sizeMismatch(expected: expectedSize, actual: out) }
        return out
    }
}

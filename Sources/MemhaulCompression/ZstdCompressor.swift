import CZstd

/// A reusable zstd compression context (`ZSTD_CCtx`), freed in deinit.
///
/// After the first call a context allocates nothing more for inputs of the
/// same or smaller size, so one compressor per sending thread is the intent.
/// Frames carry their content size (the receiver checks it before
/// decompressing) and no checksum (TLS already authenticates the bytes).
///
/// Not thread-safe: a context is used by one thread at a time.
public final class ZstdCompressor {
    private let cctx: OpaquePointer
    /// The level in effect, clamped into ``supportedLevels``.
    public let level: Int32

    /// Levels zstd accepts: negative ones are the fast levels (-5 trades ratio
    /// for roughly twice the speed of 1), 0 means zstd's default (3).
    public static var supportedLevels: ClosedRange<Int32> { ZSTD_minCLevel()...ZSTD_maxCLevel() }

    /// `ZSTD_createCCtx` + `ZSTD_CCtx_setParameter(ZSTD_c_compressionLevel)`.
    /// A level outside ``supportedLevels`` is clamped into it.
    public convenience init(level: Int32) {
        self.init(level: level, writeContentSize: true)
    }

    /// `writeContentSize: false` makes frames without a declared size (tests of the receiver's bounds).
    init(level: Int32, writeContentSize: Bool) {
        guard let cctx = ZSTD_createCCtx() else { fatalError("ZSTD_createCCtx: out of memory") }
        self.cctx = cctx
        let range = Self.supportedLevels
        self.level = min(max(level, range.lowerBound), range.upperBound)
        let rc = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, self.level)
        precondition(ZSTD_isError(rc) == 0, "ZSTD_c_compressionLevel \(self.level): \(zstdErrorName(rc))")
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 0)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, writeContentSize ? 1 : 0)
    }

    deinit { ZSTD_freeCCtx(cctx) }

    /// The largest compressed size of `n` input bytes (`ZSTD_compressBound`).
    public static func bound(_ n: Int) -> Int { ZSTD_compressBound(n) }

    /// Compresses `src` into one zstd frame in `dst` (`ZSTD_compress2`); returns its size.
    ///
    /// With `dst.count >= bound(src.count)` this cannot run out of room; with a
    /// smaller `dst` it throws ``CompressionError/destinationTooSmall(needed:capacity:)``
    /// as soon as the frame would not fit, which is how the batch encoder caps output.
    public func compress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer) throws(CompressionError) -> Int {
        let rc = ZSTD_compress2(cctx, dst.baseAddress, dst.count, src.baseAddress, src.count)
        if ZSTD_isError(rc) != 0 {
            if ZSTD_getErrorCode(rc) == ZSTD_error_dstSize_tooSmall {
                throw .destinationTooSmall(needed: Self.bound(src.count), capacity: dst.count)
            }
            // ZSTD_compress2 resets the session itself on the next call.
            throw .compressFailed(zstdErrorName(rc))
        }
        return rc
    }
}

import CZstd

/// A compression or decompression failure; each reads as one line.
public enum CompressionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The payload is not a well-formed single zstd frame (bad magic, truncated,
    /// checksum or entropy error, trailing bytes); the string is zstd's reason.
    case corrupt(String)
    /// The payload would decompress to more than the receiver allows.
    /// `declared` is the frame's content size, or nil when the frame does not
    /// declare one and its content overflowed `limit`.
    case tooLarge(declared: UInt64?, limit: Int)
    /// The payload decompressed (or is raw) to a size other than the one declared on the wire.
    case sizeMismatch(expected: Int, actual: Int)
    /// The caller's output buffer is smaller than the work needs.
    case destinationTooSmall(needed: Int, capacity: Int)
    /// zstd refused to compress (bad parameter, out of memory): zstd's reason.
    case compressFailed(String)

    public var description: String {
        switch self {
        case .corrupt(let why): "corrupt zstd payload: \(why)"
        case .tooLarge(let declared?, let limit):
            "zstd payload declares \(declared) bytes, more than the \(limit) expected (decompression bomb?)"
        case .tooLarge(nil, let limit):
            "zstd payload decompresses to more than the \(limit) bytes expected (decompression bomb?)"
        case .sizeMismatch(let expected, let actual):
            "payload decompressed to \(actual) bytes, \(expected) declared"
        case .destinationTooSmall(let needed, let capacity):
            "output buffer too small: \(needed) bytes needed, \(capacity) available"
        case .compressFailed(let why): "zstd compression failed: \(why)"
        }
    }
}

/// zstd's name for an error code returned by a `ZSTD_*` size_t function.
@inline(__always)
func zstdErrorName(_ code: Int) -> String {
    String(cString: ZSTD_getErrorName(code))
}

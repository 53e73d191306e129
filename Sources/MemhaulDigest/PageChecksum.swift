import CXXHash

/// Checksums for page batches on the wire (a cheap integrity check of one
/// batch, independent of the whole-memory ``MemoryDigest``).
public enum PageChecksum {
    /// XXH3-64 with seed 0 (`XXH3_64bits`).
    public static func xxh3_64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        XXH3_64bits(bytes.baseAddress, bytes.count)
    }
}

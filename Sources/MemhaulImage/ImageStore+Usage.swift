/// Disk use of an image, for the receiver's per-migration cap (`--max-image-bytes`).
extension ImageStore {
    /// Bytes allocated to the image directory's files (region files, journals,
    /// manifest: `st_blocks`), as the file system counts them. A few `lstat`s.
    public var diskBytes: UInt64 { Self.diskUse(directory) }

    /// The same for an image directory given by path, not opened (the metrics' disk-use gauge).
    public static func diskBytes(ofImage directory: String) -> UInt64 { diskUse(directory) }
}

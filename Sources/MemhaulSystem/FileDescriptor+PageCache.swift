#if canImport(Glibc)
import Glibc
#endif

/// The page-cache calls on a file: where its data lies, reading it into the
/// cache ahead of a reader, and dropping it (`ImageReadahead`, the bench's cold image).
extension FileDescriptor {
    /// Next data offset at or after `offset` (`lseek(SEEK_DATA)`); nil when only a hole follows.
    public func nextData(_ offset: UInt64) throws(SystemError) -> UInt64? { try Self.nextData(of: rawValue, from: offset) }

    /// Next hole at or after `offset` (`lseek(SEEK_HOLE)`; end of file counts as a hole).
    public func nextHole(_ offset: UInt64) throws(SystemError) -> UInt64 { try Self.nextHole(of: rawValue, from: offset) }

    /// ``nextData(_:)`` on a descriptor owned elsewhere (the image store's files).
    public static func nextData(of fd: Int32, from offset: UInt64) throws(SystemError) -> UInt64? {
        do {
            return UInt64(try Syscall.run("lseek(SEEK_DATA)") { Glibc.lseek(fd, off_t(offset), 3 /* SEEK_DATA */) })
        } catch where error.errno == .ENXIO {
            return nil
        }
    }

    /// ``nextHole(_:)`` on a descriptor owned elsewhere.
    public static func nextHole(of fd: Int32, from offset: UInt64) throws(SystemError) -> UInt64 {
        do {
            return UInt64(try Syscall.run("lseek(SEEK_HOLE)") { Glibc.lseek(fd, off_t(offset), 4 /* SEEK_HOLE */) })
        } catch where error.errno == .ENXIO {
            return offset
        }
    }

    /// `posix_fadvise(POSIX_FADV_WILLNEED)`: starts reading `[offset, offset +
    /// count)` into the page cache (Linux: what `readahead(2)` does, which Glibc's
    /// module does not export); returns once the reads are queued (it blocks
    /// while the device's queue is full).
    public func readAhead(offset: UInt64, count: UInt64) throws(SystemError) {
        _ = try Syscall.runNegated("posix_fadvise(WILLNEED)") { -Glibc.posix_fadvise(rawValue, off_t(offset), off_t(count), POSIX_FADV_WILLNEED) }
    }

    /// `fdatasync(2)`.
    public func fdatasync() throws(SystemError) {
        _ = try Syscall.run("fdatasync") { Glibc.fdatasync(rawValue) }
    }

    /// `posix_fadvise(POSIX_FADV_DONTNEED)` over the whole file: drops its clean
    /// cached pages (dirty ones stay: ``fdatasync()`` first).
    public func dropCachedPages() throws(SystemError) {
        _ = try Syscall.runNegated("posix_fadvise(DONTNEED)") { -Glibc.posix_fadvise(rawValue, 0, 0, POSIX_FADV_DONTNEED) }
    }
}

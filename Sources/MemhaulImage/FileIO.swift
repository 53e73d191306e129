#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

// Constants Swift's Glibc module hides behind _GNU_SOURCE.
let fallocKeepSize: Int32 = 0x1  // FALLOC_FL_KEEP_SIZE
let fallocPunchHole: Int32 = 0x2  // FALLOC_FL_PUNCH_HOLE
let iovMax = 1024  // IOV_MAX

/// `fallocate(2)`: glibc exports it, but Swift's Glibc module does not declare it
/// (it is _GNU_SOURCE), so it is looked up once by symbol.
private typealias FallocateFunction = @convention(c) (Int32, Int32, Int64, Int64) -> Int32
private let fallocateFunction: FallocateFunction? = {
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "fallocate64") else { return nil }
    return unsafeBitCast(sym, to: FallocateFunction.self)
}()

/// `sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`: starts writeback of a
/// file's dirty pages without waiting, so the fsync at the commit point finds
/// little left to write. Looked up by symbol for the same reason as fallocate.
private typealias SyncFileRangeFunction = @convention(c) (Int32, Int64, Int64, UInt32) -> Int32
private let syncFileRangeFunction: SyncFileRangeFunction? = {
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sync_file_range") else { return nil }
    return unsafeBitCast(sym, to: SyncFileRangeFunction.self)
}()

/// Runs a system call on `file`, naming the call `call(file)` for the
/// fault-injection seam and turning a failure into `ImageError.io` naming the file.
@inline(__always)
func onFile<R: FixedWidthInteger>(_ call: String, _ file: String, _ body: () -> R) throws(ImageError) -> R {
    do {
        return try Syscall.run("\(call)(\(file))", body)
    } catch {
        throw ImageError.io(file: file, call: call, errno: error.errno)
    }
}

/// An open file of the image, with the few calls the store needs, each naming the file.
final class ImageFile {
    let path: String
    let fd: FileDescriptor

    init(path: String, flags: Int32, mode: mode_t = 0o600) throws(ImageError) {
        self.path = path
        let raw = try onFile("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
        fd = FileDescriptor(owning: raw)
    }

    var raw: Int32 { fd.rawValue }

    /// `pwrite(2)` until every byte is written.
    func pwriteAll(_ p: UnsafeRawBufferPointer, at offset: UInt64) throws(ImageError) {
        var done = 0
        while done < p.count {
            let n = try onFile("pwrite", path) {
                Glibc.pwrite(raw, p.baseAddress! + done, p.count - done, off_t(offset) + off_t(done))
            }
            done += n
        }
    }

    /// `write(2)` until every byte is written (the journal is append-only).
    func writeAll(_ p: UnsafeRawBufferPointer) throws(ImageError) {
        var done = 0
        while done < p.count {
            let n = try onFile("write", path) { Glibc.write(raw, p.baseAddress! + done, p.count - done) }
            done += n
        }
    }

    /// `write(2)` of a byte array.
    func writeAll(_ bytes: [UInt8]) throws(ImageError) {
        let result = bytes.withUnsafeBytes { (p) -> Result<Void, ImageError> in
            do throws(ImageError) {
                try writeAll(p)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// `pwritev(2)` of `count` iovecs totalling `total` bytes; finishes a short write with pwrite.
    func pwritev(_ iov: UnsafeMutablePointer<iovec>, count: Int, total: Int, at offset: UInt64) throws(ImageError) {
        var written = try onFile("pwritev", path) { Glibc.pwritev(raw, iov, Int32(count), off_t(offset)) }
        guard written < total else { return }
        // Short write (rare): finish iovec by iovec.
        var pos = offset
        for i in 0..<count {
            let len = iov[i].iov_len
            if written >= len {
                written -= len
                pos += UInt64(len)
                continue
            }
            let rest = UnsafeRawBufferPointer(start: iov[i].iov_base! + written, count: len - written)
            try pwriteAll(rest, at: pos + UInt64(written))
            pos += UInt64(len)
            written = 0
        }
    }

    /// `pread(2)` until the buffer is full or end of file; the rest is zero-filled.
    func preadFull(_ p: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(ImageError) -> Int {
        var done = 0
        while done < p.count {
            let n = try onFile("pread", path) {
                Glibc.pread(raw, p.baseAddress! + done, p.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { break }
            done += n
        }
        if done < p.count { (p.baseAddress! + done).initializeMemory(as: UInt8.self, repeating: 0, count: p.count - done) }
        return done
    }

    func fsync() throws(ImageError) { _ = try onFile("fsync", path) { Glibc.fsync(raw) } }

    /// `sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE)`: starts
    /// writeback of those bytes without waiting for it, so the fsync at the
    /// commit point finds them written or under way. Best effort: on an error
    /// (returned, for the caller to count) the fsync still writes them and
    /// reports any I/O error itself.
    @discardableResult
    func startWriteback(from offset: UInt64, count: UInt64) -> ImageError? {
        guard let function = syncFileRangeFunction, count > 0 else { return nil }
        do {
            _ = try onFile("sync_file_range", path) { function(raw, Int64(offset), Int64(count), 2) }  // SYNC_FILE_RANGE_WRITE
            return nil
        } catch {
            return error
        }
    }

    func truncate(_ size: UInt64) throws(ImageError) { _ = try onFile("ftruncate", path) { Glibc.ftruncate(raw, off_t(size)) } }

    func size() throws(ImageError) -> UInt64 {
        var st = stat()
        _ = try onFile("fstat", path) { Glibc.fstat(raw, &st) }
        return UInt64(st.st_size)
    }

    /// `fallocate(PUNCH_HOLE|KEEP_SIZE)`: the range reads as zeros and frees its blocks.
    /// Falls back to writing zeros where the file system cannot punch.
    func punchHole(at offset: UInt64, length: UInt64, zeros: UnsafeRawBufferPointer) throws(ImageError) {
        guard length > 0 else { return }
        do throws(ImageError) {
            guard let fallocateFunction else { throw ImageError.io(file: path, call: "fallocate", errno: .ENOSYS) }
            _ = try onFile("fallocate", path) {
                fallocateFunction(raw, fallocPunchHole | fallocKeepSize, Int64(offset), Int64(length))
            }
        } catch let error {
            guard case .io(_, _, let errno) = error, errno == .EOPNOTSUPP || errno == .ENOSYS else { throw error }
            var pos = offset
            let end = offset + length
            while pos < end {
                let n = Int(min(UInt64(zeros.count), end - pos))
                try pwriteAll(UnsafeRawBufferPointer(rebasing: zeros[0..<n]), at: pos)
                pos += UInt64(n)
            }
        }
    }

    /// `fallocate(KEEP_SIZE)`: reserves blocks (reading as zeros, so content is
    /// unchanged) so that applying a committed round cannot hit ENOSPC.
    /// Returns false where the file system cannot reserve.
    func reserve(at offset: UInt64, length: UInt64) throws(ImageError) -> Bool {
        guard length > 0, let fallocateFunction else { return false }
        do throws(ImageError) {
            _ = try onFile("fallocate", path) { fallocateFunction(raw, fallocKeepSize, Int64(offset), Int64(length)) }
            return true
        } catch let error {
            if case .io(_, _, let errno) = error, errno == .EOPNOTSUPP || errno == .ENOSYS { return false }
            throw error
        }
    }

    /// Next data offset at or after `offset` (`lseek(SEEK_DATA)`); nil when only a hole follows.
    func nextData(_ offset: UInt64) throws(ImageError) -> UInt64? {
        do { return try FileDescriptor.nextData(of: raw, from: offset) } catch {
            throw ImageError.io(file: path, call: "lseek(SEEK_DATA)", errno: error.errno)
        }
    }

    /// Next hole at or after `offset` (`lseek(SEEK_HOLE)`; end of file counts as a hole).
    func nextHole(_ offset: UInt64) throws(ImageError) -> UInt64 {
        do { return try FileDescriptor.nextHole(of: raw, from: offset) } catch {
            throw ImageError.io(file: path, call: "lseek(SEEK_HOLE)", errno: error.errno)
        }
    }

    /// `st_blocks * 512`.
    func diskBytes() throws(ImageError) -> UInt64 {
        var st = stat()
        _ = try onFile("fstat", path) { Glibc.fstat(raw, &st) }
        return UInt64(st.st_blocks) * 512
    }
}

/// `fsync(2)` on a directory, so renames and unlinks in it are durable.
func fsyncDirectory(_ path: String) throws(ImageError) {
    let dir = try ImageFile(path: path, flags: O_RDONLY | O_DIRECTORY)
    try dir.fsync()
}

/// Reads a whole image file (manifest, owner record): at most 256 MiB.
func readWholeFile(_ path: String) throws(ImageError) -> [UInt8] {
    do {
        return try SmallFile.read(path, limit: 256 << 20)
    } catch let e as SystemError {
        throw .io(file: path, call: e.call, errno: e.errno)
    } catch {
        throw .corrupt(file: path, reason: "\(error)")
    }
}

/// Names in a directory.
func listDirectory(_ path: String) throws(ImageError) -> [String] {
    do { return try Directory.entries(path) } catch { throw .io(file: path, call: "opendir", errno: error.errno) }
}

func unlinkIfPresent(_ path: String) throws(ImageError) {
    do {
        _ = try Syscall.run("unlink(\(path))") { Glibc.unlink(path) }
    } catch {
        if error.errno != .ENOENT { throw ImageError.io(file: path, call: "unlink", errno: error.errno) }
    }
}


#if canImport(Glibc)
import Glibc
#endif

/// An owned file descriptor, closed exactly once in `deinit` (or by ``close()``).
public final class FileDescriptor: @unchecked Sendable {
    /// The raw descriptor; -1 once closed or released.
    public private(set) var rawValue: Int32

    public init(owning rawValue: Int32) { self.rawValue = rawValue }

    /// `open(2)` with `O_CLOEXEC` added.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws(SystemError) -> FileDescriptor {
        let fd = try Syscall.run("open(\(path))") { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(owning: fd)
    }

    /// Gives up ownership without closing.
    public func release() -> Int32 {
        let fd = rawValue
        rawValue = -1
        return fd
    }

    /// `close(2)`. Not retried on EINTR: Linux always frees the descriptor.
    public func close() throws(SystemError) {
        guard rawValue >= 0 else { return }
        let fd = release()
        _ = try Syscall.run("close", retryOnInterrupt: false) { Glibc.close(fd) }
    }

    deinit {
        if rawValue >= 0 { Glibc.close(rawValue) }
    }

    /// `pread(2)` until `count` bytes or end of file; returns the bytes read.
    public func pread(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(SystemError) -> Int {
        var done = 0
        while done < buffer.count {
            let n = try Syscall.run("pread") {
                Glibc.pread(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// `write(2)` until every byte is written.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws(SystemError) {
        var done = 0
        while done < buffer.count {
            let n = try Syscall.run("write") { Glibc.write(rawValue, buffer.baseAddress! + done, buffer.count - done) }
            done += n
        }
    }

    /// `fsync(2)`.
    public func fsync() throws(SystemError) {
        _ = try Syscall.run("fsync") { Glibc.fsync(rawValue) }
    }

    /// `read(2)` once; 0 means end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> Int {
        try Syscall.run("read") { Glibc.read(rawValue, buffer.baseAddress, buffer.count) }
    }
}

/// A whole small file (configuration, PEM), read through the syscall seam.
public enum SmallFile {
    /// The file was longer than the caller's limit.
    public struct TooLarge: Error, CustomStringConvertible {
        public var path: String
        public var limit: Int
        public var description: String { "\(path) is larger than \(limit >> 20) MiB" }
    }

    /// `open` + `read` to the end; throws ``TooLarge`` past `limit` bytes.
    public static func read(_ path: String, limit: Int = 1 << 20) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, O_RDONLY | O_CLOEXEC)
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
            if n == 0 { return bytes }
            bytes += chunk[0..<n]
            if bytes.count > limit { throw TooLarge(path: path, limit: limit) }
        }
    }
}


/// A directory's entries.
public enum Directory {
    /// Entry names (without `.` and `..`); `opendir`/`readdir`.
    public static func entries(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else { throw SystemError("opendir(\(path))", .current) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

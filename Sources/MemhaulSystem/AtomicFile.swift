#if canImport(Glibc)
import Glibc
#endif

extension SmallFile {
    /// Replaces `path` with `bytes` so that a reader sees the old file or the
    /// new one, never a part: `open(PATH.tmp, O_CREAT|O_TRUNC)`, `write`,
    /// `fsync`, `rename(2)` over `path`, then `fsync` of the directory.
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws(SystemError) {
        let tmp = path + ".tmp"
        let fd = try FileDescriptor.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: mode)
        do throws(SystemError) {
            let failure: SystemError? = bytes.withUnsafeBytes { buffer in
                do throws(SystemError) { try fd.writeAll(buffer) } catch { return error }
                return nil
            }
            if let failure { throw failure }
            try fd.fsync()
            try fd.close()
            _ = try Syscall.run("rename(\(tmp))") { rename(tmp, path) }
        } catch {
            _ = try? Syscall.run("unlink(\(tmp))") { unlink(tmp) }
            throw error
        }
        let slash = path.lastIndex(of: "/")
        let parent = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let dir = try FileDescriptor.open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        try dir.fsync()
        try dir.close()
    }
}

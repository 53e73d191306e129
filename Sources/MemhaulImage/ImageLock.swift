#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// `migration.lock` (Protocol/image.md, "Directory"): one writer holds
/// `flock(LOCK_EX|LOCK_NB)`; readers (``ImageReader``) hold `flock(LOCK_SH|LOCK_NB)`
/// when no writer does. Neither ever waits. The lock dies with its holder.
final class ImageLock {
    let path: String
    private let file: ImageFile

    private init(path: String, file: ImageFile) {
        self.path = path
        self.file = file
    }

    /// The writer's lock: creates `migration.lock` if missing; `locked` if
    /// anyone (a writer or a reader) holds it.
    static func exclusive(_ paths: ImagePaths) throws(ImageError) -> ImageLock {
        let path = paths.lock
        let file: ImageFile
        do {
            file = try ImageFile(path: path, flags: O_RDWR | O_CREAT)
        } catch {
            if case .io(_, _, .ENOENT) = error { throw .notAnImage(directory: paths.directory) }
            throw error
        }
        do {
            _ = try Syscall.run("flock(\(path))") { flock(file.raw, LOCK_EX | LOCK_NB) }
        } catch {
            if error.errno == .EAGAIN { throw .locked(directory: paths.directory) }
            throw .io(file: path, call: "flock", errno: error.errno)
        }
        return ImageLock(path: path, file: file)
    }

    /// A reader's lock: opens `migration.lock` read-only (never creates it, so it
    /// works on a read-only file system) and takes the shared lock. nil when a
    /// writer holds the image (the reader then reads without a lock) or the
    /// image has no lock file (nobody ever wrote it here, e.g. a copy).
    static func shared(_ paths: ImagePaths) throws(ImageError) -> ImageLock? {
        let path = paths.lock
        let file: ImageFile
        do {
            file = try ImageFile(path: path, flags: O_RDONLY)
        } catch {
            if case .io(_, _, .ENOENT) = error { return nil }
            throw error
        }
        do {
            _ = try Syscall.run("flock(\(path))") { flock(file.raw, LOCK_SH | LOCK_NB) }
        } catch {
            if error.errno == .EAGAIN { return nil }
            throw .io(file: path, call: "flock", errno: error.errno)
        }
        return ImageLock(path: path, file: file)
    }

    /// Releases the flock explicitly before closing: a child forked meanwhile
    /// (not yet at exec, where O_CLOEXEC acts) shares the open file description
    /// and would otherwise keep the image locked.
    func release() {
        guard file.raw >= 0 else { return }
        _ = try? Syscall.run("flock(\(path))") { flock(file.raw, LOCK_UN) }
        try? file.fd.close()
    }
}

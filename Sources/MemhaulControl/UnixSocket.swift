#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulSystem

/// Unix stream sockets for the control interface.
package enum UnixSocket {
    static func address(_ path: String) throws(ControlError) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw ControlError(.badRequest, "control socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        return addr
    }

    /// `socket(AF_UNIX)` + `bind` + `listen`, mode 0600, in a 0700 directory.
    package static func listen(path: String) throws -> FileDescriptor {
        let dir = path.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !dir.isEmpty, access(dir, F_OK) != 0 {
            _ = try Syscall.run("mkdir(\(dir))") { mkdir(dir, 0o700) }
            // Explicitly: the umask may have narrowed or widened it.
            _ = try Syscall.run("chmod(\(dir))") { chmod(dir, 0o700) }
        }
        // A socket file nobody listens on is stale; a live one means another
        // agent. Anything else at the path (a file, a symbolic link, a
        // directory) is not ours to remove: refuse to start.
        var st = stat()
        if lstat(path, &st) == 0 {
            switch st.st_mode & S_IFMT {
            case S_IFSOCK:
                if let probe = try? connect(path: path) {
                    _ = probe
                    throw ControlError(.conflict, "another agent is already listening on \(path)")
                }
                unlink(path)
            case S_IFLNK:
                throw ControlError(.conflict, "control socket path \(path) is a symbolic link; refusing to replace it")
            default:
                throw ControlError(.conflict, "control socket path \(path) exists and is not a socket; refusing to replace it")
            }
        }
        let fd = FileDescriptor(owning: try Syscall.run("socket(AF_UNIX)") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        var addr = try address(path)
        // No umask games (process-wide, racy with other threads): the socket
        // lives in a 0700 directory and is set to 0600 right after bind.
        _ = try Syscall.run("bind(\(path))") {
            withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        }
        _ = try Syscall.run("chmod(\(path))") { chmod(path, 0o600) }
        _ = try Syscall.run("listen") { Glibc.listen(fd.rawValue, 64) }
        return fd
    }

    package static func connect(path: String) throws -> FileDescriptor {
        let fd = FileDescriptor(owning: try Syscall.run("socket(AF_UNIX)") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) })
        var addr = try address(path)
        _ = try Syscall.run("connect(\(path))") {
            withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        }
        return fd
    }

    /// `send(2)` with MSG_NOSIGNAL until every byte is out: a peer that has
    /// hung up is EPIPE, never SIGPIPE (which would end the agent).
    package static func sendAll(_ fd: Int32, _ data: Data) throws {
        try data.withUnsafeBytes { (buffer: UnsafeRawBufferPointer) in
            var done = 0
            while done < buffer.count {
                done += try Syscall.run("send") { Glibc.send(fd, buffer.baseAddress! + done, buffer.count - done, Int32(MSG_NOSIGNAL)) }
            }
        }
    }

    package static func setTimeout(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}

/// Reads newline-terminated lines from a descriptor, refusing over-long ones.
struct LineReader {
    let fd: Int32
    let limit: Int
    private var buffer: [UInt8] = []

    init(fd: Int32, limit: Int) {
        self.fd = fd
        self.limit = limit
    }

    enum Line { case line([UInt8]), tooLong, eof, timedOut }

    /// The next line; with a `deadline`, `.timedOut` if it is not complete by
    /// then, however the bytes trickle in.
    mutating func next(deadline: ContinuousClock.Instant? = nil) -> Line {
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                if nl > limit { return .tooLong }
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                return .line(line)
            }
            if buffer.count > limit { return .tooLong }
            if let deadline {
                let remaining = ContinuousClock.now.duration(to: deadline)
                if remaining <= .zero { return .timedOut }
                let ms = min(remaining.components.seconds, 3600) * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000 + 1
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&p, 1, Int32(ms))
                if ready < 0 && errno == EINTR { continue }
                if ready == 0 { return .timedOut }
            }
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return buffer.isEmpty ? .eof : .line(buffer.splice()) }
            buffer.append(contentsOf: chunk[..<n])
        }
    }
}

private extension Array where Element == UInt8 {
    mutating func splice() -> [UInt8] {
        defer { removeAll() }
        return self
    }
}

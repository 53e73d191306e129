#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The sd_notify protocol without libsystemd: one datagram of `KEY=VALUE` lines
/// to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the
/// abstract namespace). `Type=notify` units use it to learn when an agent is
/// ready: after its listener and control socket accept connections, not when
/// the process merely exists.
///
/// Without `$NOTIFY_SOCKET` (not started by systemd) every call is a no-op.
/// A failure to notify is logged, never fatal: the agent works either way, and
/// systemd reports the missing READY=1 itself (start timeout).
enum SystemdNotify {
    /// `READY=1` plus a `STATUS=` line for `systemctl status`.
    static func ready(status: String) { send("READY=1\nSTATUS=\(status)") }

    /// `STOPPING=1`: the agent is shutting down on request.
    static func stopping() { send("STOPPING=1") }

    /// Sends `state` to `$NOTIFY_SOCKET`; returns false if it is unset or the send failed.
    @discardableResult
    static func send(_ state: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        guard let target = environment["NOTIFY_SOCKET"], !target.isEmpty else { return false }
        guard let (peer, length) = address(target) else {
            Log.line("sd_notify: unsupported NOTIFY_SOCKET \(target) (need an absolute path or @abstract name)")
            return false
        }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else {
            Log.line("sd_notify: socket: \(String(cString: strerror(errno)))")
            return false
        }
        defer { close(fd) }
        let bytes = Array(state.utf8)
        var addr = peer
        let sent = withUnsafePointer(to: &addr) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
        guard sent == bytes.count else {
            Log.line("sd_notify: sendto \(target): \(sent < 0 ? String(cString: strerror(errno)) : "short write")")
            return false
        }
        return true
    }

    /// `sockaddr_un` for a path (NUL-terminated) or `@name` (abstract: a
    /// leading NUL, the length covers exactly the name); nil if unusable.
    static func address(_ target: String) -> (sockaddr_un, socklen_t)? {
        var bytes = Array(target.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 } else if bytes.first != UInt8(ascii: "/") { return nil }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        // A path needs room for its terminating NUL; an abstract name does not have one.
        guard bytes.count > 1, bytes.count + (abstract ? 0 : 1) <= capacity else { return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let header = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)!
        return (addr, socklen_t(header + bytes.count + (abstract ? 0 : 1)))
    }
}

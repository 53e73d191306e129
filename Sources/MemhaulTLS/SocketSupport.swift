#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// Resolved stream-socket addresses of a host and port (`getaddrinfo`).
struct ResolvedAddress {
    var family: Int32
    var storage: sockaddr_storage
    var length: socklen_t

    /// `getaddrinfo(host, port, SOCK_STREAM)`; `host` nil or empty with `passive` is the wildcard.
    static func resolve(host: String?, port: UInt16, passive: Bool) throws -> [ResolvedAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = passive ? AI_PASSIVE : 0
        var list: UnsafeMutablePointer<addrinfo>?
        let h = (host?.isEmpty ?? true) ? nil : host
        let rc = getaddrinfo(h, String(port), &hints, &list)
        guard rc == 0 else {
            throw NetworkError.resolve(host: host ?? "*", port: port, reason: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(list) }
        var out: [ResolvedAddress] = []
        var p = list
        while let ai = p {
            var storage = sockaddr_storage()
            withUnsafeMutableBytes(of: &storage) { dst in
                dst.copyMemory(from: UnsafeRawBufferPointer(start: ai.pointee.ai_addr, count: Int(ai.pointee.ai_addrlen)))
            }
            out.append(ResolvedAddress(family: ai.pointee.ai_family, storage: storage, length: ai.pointee.ai_addrlen))
            p = ai.pointee.ai_next
        }
        // A wildcard listener prefers IPv6 `::` (dual-stack) over 0.0.0.0.
        if passive && h == nil { out.sort { $0.family == AF_INET6 && $1.family != AF_INET6 } }
        return out
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        try withUnsafeBytes(of: storage) { try body($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), length) }
    }

    var description: String {
        withSockaddr { SocketAddressText.format($0, $1) }
    }
}

enum SocketAddressText {
    /// `127.0.0.1:7070` or `[::1]:7070` (`getnameinfo` NI_NUMERICHOST|NI_NUMERICSERV).
    static func format(_ addr: UnsafePointer<sockaddr>, _ len: socklen_t) -> String {
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var serv = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        guard getnameinfo(addr, len, &host, socklen_t(host.count), &serv, socklen_t(serv.count), NI_NUMERICHOST | NI_NUMERICSERV) == 0
        else { return "?" }
        let h = host.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        let s = serv.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return addr.pointee.sa_family == sa_family_t(AF_INET6) ? "[\(h)]:\(s)" : "\(h):\(s)"
    }

    /// `getpeername` / `getsockname` of `fd`, formatted.
    static func name(of fd: Int32, peer: Bool) -> String {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                peer ? getpeername(fd, $0, &len) : getsockname(fd, $0, &len)
            }
        }
        guard rc == 0 else { return "?" }
        return withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { format($0, len) } }
    }

    /// The port of `fd`'s local address.
    static func localPort(of fd: Int32) -> UInt16 {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return withUnsafePointer(to: &storage) { p -> UInt16 in
            if Int32(p.pointee.ss_family) == AF_INET6 {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
    }

    /// True for an IPv4 or IPv6 literal (`inet_pton`).
    static func isIPLiteral(_ host: String) -> Bool {
        var buf = in6_addr()
        return inet_pton(AF_INET, host, &buf) == 1 || inet_pton(AF_INET6, host, &buf) == 1
    }
}

extension Duration {
    /// As a `timeval` for SO_RCVTIMEO / SO_SNDTIMEO; nil (no timeout) is zero.
    static func timeval(_ d: Duration?) -> timeval {
        guard let d else { return Glibc.timeval(tv_sec: 0, tv_usec: 0) }
        let (s, atto) = d.components
        var tv = Glibc.timeval(tv_sec: Int(s), tv_usec: Int(atto / 1_000_000_000_000))
        if tv.tv_sec == 0 && tv.tv_usec == 0 { tv.tv_usec = 1 }  // 0 would mean "forever"
        return tv
    }

    /// Whole milliseconds, rounded down.
    var milliseconds: Int64 {
        let (s, atto) = components
        return s * 1000 + atto / 1_000_000_000_000_000
    }

    /// Milliseconds for poll(2), rounded up; nil is -1 (forever).
    static func pollMilliseconds(_ d: Duration?) -> Int32 {
        guard let d else { return -1 }
        let (s, atto) = d.components
        let ms = s * 1000 + (atto + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: max(ms, 0))
    }
}

/// `setsockopt` of a value through the syscall seam.
func setSocketOption<T: BitwiseCopyable>(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: T, _ call: String) throws {
    var v = value
    _ = try Syscall.run(call) { setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<T>.size)) }
}

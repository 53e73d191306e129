#if canImport(Glibc)
import Glibc
#endif
import CMemhaulTLS
import MemhaulSystem

/// A listening TCP socket (`socket`, SO_REUSEADDR, `bind`, `listen`).
public final class TCPListener: @unchecked Sendable {
    // @unchecked: owns the fd; accept(2) on one socket from several threads is safe.
    private let descriptor: FileDescriptor
    /// The bound port (the kernel's pick when asked for port 0).
    public let port: UInt16
    /// The bound address, `host:port`.
    public let localDescription: String
    /// Applied to every accepted stream.
    public var options: TCPOptions

    /// Binds `host` (an IPv4/IPv6 literal, a name such as `localhost`, or
    /// nil/`""` for every address, dual-stack) and `port` (0 = ephemeral).
    /// The first resolved address that binds wins.
    public init(host: String?, port: UInt16, backlog: Int32 = 16, options: TCPOptions = TCPOptions()) throws {
        let addresses = try ResolvedAddress.resolve(host: host, port: port, passive: true)
        var lastError: Error = NetworkError.resolve(host: host ?? "*", port: port, reason: "no addresses")
        for address in addresses {
            let target = address.description
            do {
                let fd = try Syscall.run("socket") {
                    socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                }
                let owned = FileDescriptor(owning: fd)
                try setSocketOption(fd, SOL_SOCKET, SO_REUSEADDR, Int32(1), "setsockopt(SO_REUSEADDR)")
                if address.family == AF_INET6 {
                    // Only the wildcard listens on both families; a v6 literal stays v6.
                    let v6only: Int32 = (host?.isEmpty ?? true) ? 0 : 1
                    try setSocketOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, v6only, "setsockopt(IPV6_V6ONLY)")
                }
                _ = try Syscall.run("bind(\(target))") { address.withSockaddr { bind(fd, $0, $1) } }
                _ = try Syscall.run("listen(\(target))") { listen(fd, backlog) }
                self.descriptor = owned
                self.port = SocketAddressText.localPort(of: fd)
                self.localDescription = SocketAddressText.name(of: fd, peer: false)
                self.options = options
                return
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    /// The listening descriptor (for poll); owned by this listener.
    public var fileDescriptor: Int32 { descriptor.rawValue }

    /// Waits for a connection (`poll`, at most `timeout`; nil waits forever)
    /// and accepts it (`accept4`, SOCK_CLOEXEC) with ``options`` applied.
    public func accept(timeout: Duration? = nil) throws -> TCPStream {
        if let timeout {
            var pfd = pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0)
            let ready = try Syscall.run("poll") { poll(&pfd, 1, Duration.pollMilliseconds(timeout)) }
            if ready == 0 { throw NetworkError.timedOut(operation: "accept on", peer: localDescription, after: timeout) }
        }
        let fd = try Syscall.run("accept4(\(localDescription))") {
            cmh_accept4_cloexec(descriptor.rawValue)
        }
        return try TCPStream(adopting: fd, options: options)
    }

    /// Stops listening; idempotent. A thread blocked in ``accept(timeout:)``
    /// should use a timeout: close does not wake it on Linux.
    public func close() {
        if descriptor.rawValue >= 0 { _ = Glibc.shutdown(descriptor.rawValue, Int32(SHUT_RDWR)) }
        try? descriptor.close()
    }
}

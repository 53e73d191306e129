#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// Socket options applied to every ``TCPStream``.
public struct TCPOptions: Sendable, Equatable {
    /// TCP_NODELAY: batches are written whole, so Nagle only adds latency to acks.
    public var noDelay = true
    /// SO_SNDBUF and SO_RCVBUF, or nil to leave them to the kernel. Setting
    /// them turns off Linux buffer autotuning (which grows to tcp_rmem[2],
    /// often 6-32 MiB) and is capped at net.core.[rw]mem_max, so nil is best
    /// unless a path needs a fixed buffer.
    public var socketBufferBytes: Int? = nil
    /// SO_KEEPALIVE, so a vanished peer is noticed on an idle connection.
    public var keepAlive = true
    /// How long the peer may leave our data (or keepalive probes) unacknowledged
    /// before the connection counts as broken: `TCP_USER_TIMEOUT`, with keepalive
    /// probes every third of it when idle. A link cut or a black-holed path then
    /// fails a blocked `send`/`recv` with ETIMEDOUT after this long, instead of
    /// after ~15 minutes of retransmissions or 2 hours of keepalive. A peer that
    /// is slow but alive keeps acknowledging and is not affected. nil: kernel defaults.
    public var deadPeerTimeout: Duration? = .seconds(20)
    /// SO_RCVTIMEO: a read with no byte for this long fails; nil waits forever.
    public var readTimeout: Duration? = nil
    /// SO_SNDTIMEO: a write that cannot progress for this long fails; nil waits forever.
    public var writeTimeout: Duration? = nil

    public init(
        noDelay: Bool = true, socketBufferBytes: Int? = nil, keepAlive: Bool = true,
        deadPeerTimeout: Duration? = .seconds(20),
        readTimeout: Duration? = nil, writeTimeout: Duration? = nil
    ) {
        self.noDelay = noDelay
        self.socketBufferBytes = socketBufferBytes
        self.keepAlive = keepAlive
        self.deadPeerTimeout = deadPeerTimeout
        self.readTimeout = readTimeout
        self.writeTimeout = writeTimeout
    }
}

/// A connected TCP socket (blocking), plaintext.
///
/// Used alone it is the engine's `--insecure` transport: no encryption, no
/// authentication, for trusted networks and tests only. ``TLSStream`` runs
/// over it otherwise. Reads and writes go through `Syscall.run("recv")` /
/// `Syscall.run("send")` (MSG_NOSIGNAL: a vanished peer is EPIPE, not SIGPIPE).
public final class TCPStream: ByteStream, @unchecked Sendable {
    // @unchecked: owns the fd; one thread uses a stream at a time (ByteStream contract).
    private let descriptor: FileDescriptor
    public let peerDescription: String
    public private(set) var options: TCPOptions

    init(adopting fd: Int32, options: TCPOptions) throws {
        self.descriptor = FileDescriptor(owning: fd)
        self.peerDescription = SocketAddressText.name(of: fd, peer: true)
        self.options = options
        try apply(options)
    }

    /// The socket descriptor (for poll); owned by this stream.
    public var fileDescriptor: Int32 { descriptor.rawValue }

    /// Our side's address, `host:port`.
    public var localDescription: String { SocketAddressText.name(of: descriptor.rawValue, peer: false) }

    /// Resolves `host` and connects to the first address that accepts
    /// (`socket`, non-blocking `connect`, `poll` for at most `timeout` per
    /// address, then blocking mode). IPv4/IPv6 literals and names work.
    public static func connect(
        host: String, port: UInt16, timeout: Duration = .seconds(10), options: TCPOptions = TCPOptions()
    ) throws -> TCPStream {
        let addresses = try ResolvedAddress.resolve(host: host, port: port, passive: false)
        var lastError: Error = NetworkError.resolve(host: host, port: port, reason: "no addresses")
        for address in addresses {
            do {
                return try connect(to: address, timeout: timeout, options: options)
            } catch {
                lastError = error
            }
        }
        throw lastError
    }

    private static func connect(to address: ResolvedAddress, timeout: Duration, options: TCPOptions) throws -> TCPStream {
        let target = address.description
        let fd = try Syscall.run("socket") {
            socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        }
        let owned = FileDescriptor(owning: fd)
        if try !startConnect(fd, address, target) {
            try finishConnect(fd, target, timeout)
        }
        let flags = try Syscall.run("fcntl(F_GETFL)") { fcntl(fd, F_GETFL) }
        _ = try Syscall.run("fcntl(F_SETFL)") { fcntl(fd, F_SETFL, flags & ~Int32(O_NONBLOCK)) }
        return try TCPStream(adopting: owned.release(), options: options)
    }

    /// Non-blocking `connect`; false while in progress (EINPROGRESS).
    private static func startConnect(_ fd: Int32, _ address: ResolvedAddress, _ target: String) throws -> Bool {
        let result: Result<Int32, SystemError> = Result { () throws(SystemError) -> Int32 in
            var storage = address.storage
            let length = address.length
            return try Syscall.run("connect(\(target))") {
                withUnsafePointer(to: &storage) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) }
                }
            }
        }
        switch result {
        case .success: return true
        case .failure(let error) where error.errno == .EINPROGRESS: return false
        case .failure(let error): throw error
        }
    }

    /// Waits for an in-progress connect (`poll(POLLOUT)`, then SO_ERROR).
    private static func finishConnect(_ fd: Int32, _ target: String, _ timeout: Duration) throws {
        var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let ready = try Syscall.run("poll") { poll(&pfd, 1, Duration.pollMilliseconds(timeout)) }
        if ready == 0 { throw NetworkError.timedOut(operation: "connect to", peer: target, after: timeout) }
        var soError: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        _ = try Syscall.run("getsockopt(SO_ERROR)") { getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len) }
        if soError != 0 { throw SystemError("connect(\(target))", Errno(rawValue: soError)) }
    }

    private func apply(_ options: TCPOptions) throws {
        let fd = descriptor.rawValue
        if options.noDelay { try setSocketOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, Int32(1), "setsockopt(TCP_NODELAY)") }
        if options.keepAlive { try setSocketOption(fd, SOL_SOCKET, SO_KEEPALIVE, Int32(1), "setsockopt(SO_KEEPALIVE)") }
        if let dead = options.deadPeerTimeout {
            let ms = max(1000, dead.milliseconds)
            try setSocketOption(fd, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, UInt32(clamping: ms), "setsockopt(TCP_USER_TIMEOUT)")
            if options.keepAlive {
                // Probe idle connections often enough that TCP_USER_TIMEOUT can judge them.
                let third = Int32(clamping: max(1, ms / 3000))
                try setSocketOption(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, third, "setsockopt(TCP_KEEPIDLE)")
                try setSocketOption(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, max(1, third / 2), "setsockopt(TCP_KEEPINTVL)")
            }
        }
        if let bytes = options.socketBufferBytes {
            try setSocketOption(fd, SOL_SOCKET, SO_SNDBUF, Int32(clamping: bytes), "setsockopt(SO_SNDBUF)")
            try setSocketOption(fd, SOL_SOCKET, SO_RCVBUF, Int32(clamping: bytes), "setsockopt(SO_RCVBUF)")
        }
        try setTimeouts(read: options.readTimeout, write: options.writeTimeout)
    }

    /// Sets SO_RCVTIMEO / SO_SNDTIMEO; nil waits forever.
    public func setTimeouts(read: Duration?, write: Duration?) throws {
        let fd = descriptor.rawValue
        try setSocketOption(fd, SOL_SOCKET, SO_RCVTIMEO, Duration.timeval(read), "setsockopt(SO_RCVTIMEO)")
        try setSocketOption(fd, SOL_SOCKET, SO_SNDTIMEO, Duration.timeval(write), "setsockopt(SO_SNDTIMEO)")
        options.readTimeout = read
        options.writeTimeout = write
    }

    /// `recv(2)` once; 0 at end of stream. A read timeout is ``NetworkError/timedOut(operation:peer:after:)``.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard buffer.count > 0 else { return 0 }
        do {
            return try Syscall.run("recv") { recv(descriptor.rawValue, buffer.baseAddress, buffer.count, 0) }
        } catch {
            throw translate(error, operation: "read from", timeout: options.readTimeout)
        }
    }

    /// `send(2)` with MSG_NOSIGNAL until every byte is written.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            do {
                done += try Syscall.run("send") {
                    send(descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done, Int32(MSG_NOSIGNAL))
                }
            } catch {
                throw translate(error, operation: "write to", timeout: options.writeTimeout)
            }
        }
    }

    /// Waits until a read would not block (data, end of stream or error), at
    /// most `timeout` (nil: forever). `poll(POLLIN)`.
    public func waitReadable(timeout: Duration?) throws -> Bool {
        var pfd = pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0)
        return try Syscall.run("poll") { poll(&pfd, 1, Duration.pollMilliseconds(timeout)) } > 0
    }

    /// Peeks at up to `buffer.count` bytes without consuming them (`recv(MSG_PEEK)`).
    func peek(into buffer: UnsafeMutableRawBufferPointer, timeout: Duration?) throws -> Int {
        do {
            return try Syscall.run("recv") { recv(descriptor.rawValue, buffer.baseAddress, buffer.count, Int32(MSG_PEEK)) }
        } catch {
            throw translate(error, operation: "read from", timeout: timeout)
        }
    }

    /// Names the peer in the error; EAGAIN from SO_RCVTIMEO/SO_SNDTIMEO is a timeout.
    private func translate(_ error: Error, operation: String, timeout: Duration?) -> Error {
        guard let error = error as? SystemError else { return error }
        if error.errno == .EAGAIN {
            return NetworkError.timedOut(operation: operation, peer: peerDescription, after: timeout ?? .zero)
        }
        return SystemError("\(error.call)(\(peerDescription))", error.errno)
    }

    /// `shutdown(SHUT_WR)`: the peer reads end of stream; we can still read.
    public func shutdown() {
        if descriptor.rawValue >= 0 { _ = Glibc.shutdown(descriptor.rawValue, Int32(SHUT_WR)) }
    }

    /// `shutdown(SHUT_RDWR)`: blocked reads and writes in other threads fail at once.
    public func abort() {
        if descriptor.rawValue >= 0 { _ = Glibc.shutdown(descriptor.rawValue, Int32(SHUT_RDWR)) }
    }

    /// A plain stream has no verified peer.
    public var peerIdentity: PeerIdentity? { nil }

    /// `close(2)`; idempotent.
    public func close() {
        try? descriptor.close()
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulSystem
import Synchronization

/// Serves `Protocol/control.md` on a Unix socket: one thread per connection,
/// at most ``maxConnections`` of them, newline-delimited JSON, requests
/// answered in order.
public final class ControlServer: @unchecked Sendable {  // immutable after init; fd closed once; `open` is atomic
    public typealias Handler = @Sendable (ControlRequest) throws(ControlError) -> [String: Any]

    public static let maxRequestBytes = 65536
    /// Connections served at once; more are answered `busy` and closed, so
    /// a local client cannot make the agent start threads without bound.
    public static let defaultMaxConnections = 32
    /// Seconds a connection has to send a complete request line, counted from
    /// the connect or the previous answer; then it is closed, so an idle (or
    /// trickling) client does not hold a connection slot for ever.
    public static let defaultRequestTimeoutSeconds = 30.0

    public let path: String
    public let maxConnections: Int
    public let requestTimeoutSeconds: Double
    private let listener: FileDescriptor
    private let handler: Handler
    private let open = Atomic<Int>(0)

    /// Binds `path` (mode 0600) and starts accepting on a background thread.
    public init(path: String, maxConnections: Int = ControlServer.defaultMaxConnections,
                requestTimeoutSeconds: Double = ControlServer.defaultRequestTimeoutSeconds,
                handler: @escaping Handler) throws {
        self.path = path
        self.maxConnections = maxConnections
        self.requestTimeoutSeconds = requestTimeoutSeconds
        self.listener = try UnixSocket.listen(path: path)
        self.handler = handler
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "memhaul-control"
        thread.start()
    }

    private func acceptLoop() {
        while true {
            let client: FileDescriptor
            do throws(SystemError) {
                // (accept4 needs _GNU_SOURCE, which Swift's Glibc module hides.)
                client = FileDescriptor(owning: try Syscall.run("accept(\(path))") { accept(listener.rawValue, nil, nil) })
                _ = try Syscall.run("fcntl(F_SETFD)") { fcntl(client.rawValue, F_SETFD, FD_CLOEXEC) }
            } catch {
                switch error.errno {
                case .ECONNABORTED, .EINTR:
                    continue
                case .EMFILE, .ENOMEM, Errno(rawValue: ENFILE), Errno(rawValue: ENOBUFS):
                    // Out of descriptors or memory for now: keep serving once they are back
                    // (returning here left the agent without a control socket for good).
                    usleep(100_000)
                    continue
                default:
                    return  // listener closed (EINVAL/EBADF after close())
                }
            }
            guard open.add(1, ordering: .relaxed).newValue <= maxConnections else {
                open.subtract(1, ordering: .relaxed)
                refuse(client)
                continue
            }
            let thread = Thread { [self] in
                defer { open.subtract(1, ordering: .relaxed) }
                serve(client)
            }
            thread.start()
        }
    }

    /// One `busy` line, without blocking the accept loop, then close.
    private func refuse(_ fd: FileDescriptor) {
        let line = ControlJSON.failure(id: nil, ControlError(.busy, "too many control connections (\(maxConnections) open); try again later"))
        line.withUnsafeBytes { _ = Glibc.send(fd.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        try? fd.close()
    }

    private func serve(_ fd: FileDescriptor) {
        // Writes to a client that never reads give up too.
        UnixSocket.setTimeout(fd.rawValue, seconds: max(1, Int(requestTimeoutSeconds.rounded(.up))))
        var reader = LineReader(fd: fd.rawValue, limit: ControlServer.maxRequestBytes)
        while true {
            switch reader.next(deadline: .now + .milliseconds(Int64(requestTimeoutSeconds * 1000))) {
            case .eof, .timedOut:
                return
            case .tooLong:
                send(fd, ControlJSON.failure(id: nil, ControlError(.tooLarge, "request longer than \(ControlServer.maxRequestBytes) bytes")))
                return
            case .line(let bytes):
                if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { continue }
                send(fd, respond(to: Data(bytes)))
            }
        }
    }

    /// One request line to one response line (also used by tests without a socket).
    public func respond(to line: Data) -> Data {
        let request: ControlRequest
        do {
            request = try ControlRequest.decode(line)
        } catch {
            return ControlJSON.failure(id: nil, error)
        }
        do {
            return ControlJSON.success(id: request.id, result: try handler(request))
        } catch {
            return ControlJSON.failure(id: request.id, error)
        }
    }

    /// A client gone before its answer is EPIPE here (MSG_NOSIGNAL), not SIGPIPE.
    private func send(_ fd: FileDescriptor, _ data: Data) {
        try? UnixSocket.sendAll(fd.rawValue, data)
    }

    /// Stops accepting and removes the socket file.
    public func close() {
        shutdown(listener.rawValue, Int32(SHUT_RDWR))
        try? listener.close()
        unlink(path)
    }
}

/// The client side, as used by `memhaul ctl` and tests.
public final class ControlClient {
    private let fd: FileDescriptor
    private var reader: LineReader

    public init(path: String) throws {
        fd = try UnixSocket.connect(path: path)
        reader = LineReader(fd: fd.rawValue, limit: 64 << 20)
    }

    /// Sends one request and returns the decoded response object.
    public func call(_ op: String, _ args: [String: Any] = [:]) throws -> [String: Any] {
        try send(ControlRequest(op: op, args: args).encode())
        guard case .line(let bytes) = reader.next(),
              let obj = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw ControlError(.internal, "agent closed the control connection without an answer")
        }
        return obj
    }

    /// An agent with every connection slot taken answers `busy` at once and
    /// closes: our request then meets a closed socket, and the answer to
    /// show is that line, not EPIPE.
    private func send(_ data: Data) throws {
        do {
            try UnixSocket.sendAll(fd.rawValue, data)
        } catch let error as SystemError where error.errno == .EPIPE || error.errno == .ECONNRESET {
            var peek = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
            guard poll(&peek, 1, 0) == 1 else { throw error }
        }
    }

    /// Sends raw bytes (tests of malformed input) and reads one response line.
    public func callRaw(_ bytes: Data) throws -> [String: Any]? {
        try send(bytes)
        guard case .line(let line) = reader.next() else { return nil }
        return try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]
    }
}

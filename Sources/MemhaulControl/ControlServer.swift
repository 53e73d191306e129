#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulSystem

/// Serves `Protocol/control.md` on a Unix socket: one thread per connection,
/// newline-delimited JSON, requests answered in order.
public final class ControlServer: @unchecked Sendable {  // immutable after init; fd closed once
    public typealias Handler = @Sendable (ControlRequest) throws(ControlError) -> [String: Any]

    public static let maxRequestBytes = 65536
    public static let idleTimeoutSeconds = 300

    public let path: String
    private let listener: FileDescriptor
    private let handler: Handler

    /// Binds `path` (mode 0600) and starts accepting on a background thread.
    public init(path: String, handler: @escaping Handler) throws {
        self.path = path
        self.listener = try UnixSocket.listen(path: path)
        self.handler = handler
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "memhaul-control"
        thread.start()
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener.rawValue, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return  // listener closed
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            let thread = Thread { [self] in serve(FileDescriptor(owning: client)) }
            thread.start()
        }
    }

    private func serve(_ fd: FileDescriptor) {
        UnixSocket.setTimeout(fd.rawValue, seconds: ControlServer.idleTimeoutSeconds)
        var reader = LineReader(fd: fd.rawValue, limit: ControlServer.maxRequestBytes)
        while true {
            switch reader.next() {
            case .eof:
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
        try UnixSocket.sendAll(fd.rawValue, ControlRequest(op: op, args: args).encode())
        guard case .line(let bytes) = reader.next(),
              let obj = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw ControlError(.internal, "agent closed the control connection without an answer")
        }
        return obj
    }

    /// Sends raw bytes (tests of malformed input) and reads one response line.
    public func callRaw(_ bytes: Data) throws -> [String: Any]? {
        try UnixSocket.sendAll(fd.rawValue, bytes)
        guard case .line(let line) = reader.next() else { return nil }
        return try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]
    }
}

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
            let client: FileDescriptor
            do throws(SystemError) {
                // (accept4 needs _GNU_SOURCE, which Swift's Glibc module hides.)
                client = FileDescriptor(owning: try Syscall.run("accept(\(path))") { accept(listener.rawValue, nil, nil) })
                _ = try Syscall.run("fcntl(F_SETFD)") { fcntl(client.rawValue, F_SETFD, FD_CLOEXEC) }
            } catch {
                switch error.errno {
                case .ECONNABORTED:
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
            let thread = Thread { [self] in serve(client) }
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

    private func send(_ fd: FileDescriptor, _ data: Data) {
        data.withUnsafeBytes { try? fd.writeAll($0) }
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
        let line = ControlRequest(op: op, args: args).encode()
        try line.withUnsafeBytes { try fd.writeAll($0) }
        guard case .line(let bytes) = reader.next(),
              let obj = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw ControlError(.internal, "agent closed the control connection without an answer")
        }
        return obj
    }

    /// Sends raw bytes (tests of malformed input) and reads one response line.
    public func callRaw(_ bytes: Data) throws -> [String: Any]? {
        try bytes.withUnsafeBytes { try fd.writeAll($0) }
        guard case .line(let line) = reader.next() else { return nil }
        return try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]
    }
}

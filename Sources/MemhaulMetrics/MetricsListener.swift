#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulControl
import MemhaulSystem
import MemhaulTLS
import Prometheus
import Synchronization

/// What a metrics endpoint serves: one Prometheus text exposition per scrape.
public protocol MetricsSource: Sendable {
    /// The exposition (text format 0.0.4), rendered now from the counters.
    func exposition() -> [UInt8]
}

/// Serves `GET /metrics` over HTTP/1.1 on loopback TCP or a Unix socket
/// (``MetricsAddress``). Bounded as the control socket is: at most
/// ``maxConnections`` served at once (more get 503 and are closed), a request
/// head of at most ``maxRequestBytes``, and ``deadlineSeconds`` for the whole
/// exchange; one answer per connection, then close.
public final class MetricsListener: @unchecked Sendable {  // immutable after init; `open` is atomic
    public static let maxConnections = 4
    public static let maxRequestBytes = 8192
    public static let deadlineSeconds = 5.0

    public let address: MetricsAddress
    /// Where it listens: `127.0.0.1:PORT` with the port bound, or `unix:/path`.
    public let boundDescription: String
    private let source: any MetricsSource
    private let tcp: TCPListener?
    private let unix: FileDescriptor?
    private let open = Atomic<Int>(0)
    private let closed = Atomic<Bool>(false)

    public init(address: MetricsAddress, source: any MetricsSource) throws {
        self.address = address
        self.source = source
        switch address {
        case .tcp(let host, let port):
            let listener = try TCPListener(host: host, port: port)
            tcp = listener
            unix = nil
            boundDescription = listener.localDescription
        case .unix(let path):
            tcp = nil
            unix = try UnixSocket.listen(path: path)
            boundDescription = "unix:\(path)"
        }
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "memhaul-metrics"
        thread.start()
    }

    private var listenerFD: Int32 { tcp?.fileDescriptor ?? unix!.rawValue }

    private func acceptLoop() {
        while !closed.load(ordering: .relaxed) {
            let client: FileDescriptor
            do throws(SystemError) {
                client = FileDescriptor(owning: try Syscall.run("accept(metrics)") { accept(listenerFD, nil, nil) })
                _ = try Syscall.run("fcntl(F_SETFD)") { fcntl(client.rawValue, F_SETFD, FD_CLOEXEC) }
            } catch {
                switch error.errno {
                case .ECONNABORTED, .EINTR: continue
                case .EMFILE, .ENOMEM, Errno(rawValue: ENFILE), Errno(rawValue: ENOBUFS):
                    usleep(100_000)
                    continue
                default: return  // listener closed
                }
            }
            guard open.add(1, ordering: .relaxed).newValue <= Self.maxConnections else {
                open.subtract(1, ordering: .relaxed)
                let busy = Self.response(status: "503 Service Unavailable", body: Array("too many metrics connections\n".utf8))
                busy.withUnsafeBytes { _ = Glibc.send(client.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                try? client.close()
                continue
            }
            let box = HandOff(client)
            let thread = Thread { [self] in
                // The slot is free before the client sees the close: a scraper
                // that asks again at once must not meet its own last connection.
                defer { try? box.value.close() }
                defer { open.subtract(1, ordering: .relaxed) }
                serve(box.value)
            }
            thread.start()
        }
    }

    private func serve(_ fd: FileDescriptor) {
        UnixSocket.setTimeout(fd.rawValue, seconds: Int(Self.deadlineSeconds))
        let deadline = MonotonicClock.seconds() + Self.deadlineSeconds
        guard let head = Self.readHead(fd.rawValue, deadline: deadline) else { return }
        let answer = Self.route(head: head) { source.exposition() }
        try? UnixSocket.sendAll(fd.rawValue, Data(answer))
    }

    /// Reads until the blank line that ends the request head, at most
    /// `maxRequestBytes`, before `deadline`; nil for a slow, long or vanished client.
    static func readHead(_ fd: Int32, deadline: Double) -> [UInt8]? {
        var head: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 2048)
        while true {
            let left = deadline - MonotonicClock.seconds()
            guard left > 0 else { return nil }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard (try? Syscall.run("poll(metrics)") { poll(&p, 1, Int32(left * 1000) + 1) }) == 1 else { return nil }
            guard let n = try? Syscall.run("recv(metrics)", { chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) } }), n > 0 else { return nil }
            head += chunk[..<n]
            if let end = head.firstRange(of: [0x0D, 0x0A, 0x0D, 0x0A]) ?? head.firstRange(of: [0x0A, 0x0A]) {
                return Array(head[..<end.lowerBound])
            }
            if head.count > maxRequestBytes { return Array("TOO-LARGE".utf8) }
        }
    }

    /// The answer to one request head (also used by tests without a socket).
    static func route(head: [UInt8], render: () -> [UInt8]) -> [UInt8] {
        if head == Array("TOO-LARGE".utf8) {
            return response(status: "431 Request Header Fields Too Large", body: Array("request head too large\n".utf8))
        }
        let requestLine = head.split(separator: 0x0A, maxSplits: 1).first.map { String(decoding: $0, as: UTF8.self) } ?? ""
        let parts = requestLine.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            return response(status: "400 Bad Request", body: Array("bad request\n".utf8))
        }
        guard parts[0] == "GET" || parts[0] == "HEAD" else {
            return response(status: "405 Method Not Allowed", body: Array("GET /metrics only\n".utf8))
        }
        let path = parts[1].split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard path == "/metrics" else { return response(status: "404 Not Found", body: Array("GET /metrics only\n".utf8)) }
        let body = render()
        return response(status: "200 OK", contentType: "text/plain; version=0.0.4; charset=utf-8", body: body, headOnly: parts[0] == "HEAD")
    }

    static func response(status: String, contentType: String = "text/plain; charset=utf-8", body: [UInt8], headOnly: Bool = false) -> [UInt8] {
        let head = "HTTP/1.1 \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        return Array(head.utf8) + (headOnly ? [] : body)
    }

    /// Stops accepting (connections being served finish within their deadline).
    public func close() {
        guard !closed.exchange(true, ordering: .relaxed) else { return }
        if let tcp { tcp.close() }
        if let unix {
            shutdown(unix.rawValue, Int32(SHUT_RDWR))
            try? unix.close()
            if case .unix(let path) = address { unlink(path) }
        }
    }
}

extension MetricNameDescriptor {
    /// A whole metric name (units and `_total` included, as Protocol/metrics.md lists it) and its HELP text.
    static func described(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }
}

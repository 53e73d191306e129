/// Where `--metrics-listen` serves: loopback TCP or a Unix socket, nothing
/// else. The endpoint has no TLS and no authentication, so it is reachable
/// only from the host itself (Protocol/metrics.md, "Listener").
public enum MetricsAddress: Equatable, Sendable, CustomStringConvertible {
    /// A loopback literal (`127.0.0.0/8`, `::1`) or `localhost`, and a port (0 = ephemeral).
    case tcp(host: String, port: UInt16)
    /// A Unix socket path (mode 0600, as the control socket).
    case unix(path: String)

    public struct Refused: Error, CustomStringConvertible {
        public var description: String
    }

    /// Parses `127.0.0.1:9464`, `[::1]:9464`, `localhost:9464`, `unix:/path` or `/path`.
    public init(parsing text: String) throws(Refused) {
        if text.hasPrefix("unix:") || text.hasPrefix("/") {
            let path = text.hasPrefix("unix:") ? String(text.dropFirst(5)) : text
            guard path.hasPrefix("/"), path.utf8.count < 108 else {
                throw Refused(description: "metrics socket \"\(path)\": an absolute path shorter than 108 bytes")
            }
            self = .unix(path: path)
            return
        }
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else {
            throw Refused(description: "metrics address \"\(text)\": expected HOST:PORT (loopback) or unix:/PATH")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard Self.isLoopback(host) else {
            throw Refused(description: "metrics address \"\(text)\": only loopback (127.0.0.0/8, ::1, localhost) or a Unix socket; the endpoint has no TLS, so scrape it through a local agent or a tunnel")
        }
        self = .tcp(host: host, port: port)
    }

    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts.allSatisfy({ UInt8($0) != nil }) else { return false }
        return parts[0] == "127"
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): "unix:\(path)"
        }
    }
}

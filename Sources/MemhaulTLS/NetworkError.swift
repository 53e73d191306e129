/// Socket failures that are not a single failed system call (those are
/// `SystemError`s naming the call and the peer, e.g. `connect(127.0.0.1:7070): ECONNREFUSED (...)`).
public enum NetworkError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `getaddrinfo` failed; `reason` is `gai_strerror`.
    case resolve(host: String, port: UInt16, reason: String)
    /// No byte moved within the configured timeout.
    case timedOut(operation: String, peer: String, after: Duration)
    /// The stream ended `missing` bytes short of a message.
    case unexpectedEndOfStream(peer: String, missing: Int)

    public var description: String {
        switch self {
        case .resolve(let host, let port, let reason): "cannot resolve \(host):\(port): \(reason)"
        case .timedOut(let operation, let peer, let after): "\(operation) \(peer) timed out after \(formatDuration(after))"
        case .unexpectedEndOfStream(let peer, let missing): "\(peer) closed the connection \(missing) bytes short of a message"
        }
    }
}

/// `10s`, `1.5s`, `250ms`.
func formatDuration(_ d: Duration) -> String {
    let (s, atto) = d.components
    let ms = s * 1000 + atto / 1_000_000_000_000_000
    if ms % 1000 == 0 { return "\(ms / 1000)s" }
    if ms < 1000 { return "\(ms)ms" }
    return "\(ms / 1000).\(String(ms % 1000 + 1000).dropFirst())s"
}

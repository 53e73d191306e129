/// A reliable, ordered byte stream: plaintext ``TCPStream`` or ``TLSStream``.
///
/// One thread at a time per stream (OpenSSL forbids concurrent use of one
/// `SSL`); a stream may be handed from thread to thread.
public protocol ByteStream: AnyObject, Sendable {
    /// The peer as `host:port` (`[v6]:port`), for messages.
    var peerDescription: String { get }
    /// Reads at least one byte into `buffer`; returns the count, 0 at end of stream.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
    /// Writes every byte of `buffer`.
    func writeAll(_ buffer: UnsafeRawBufferPointer) throws
    /// Writes every byte of `first`, then of `second`, sent together where the
    /// stream gathers (TLS: one flush after both).
    func writeAll(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) throws
    /// Waits at most `timeout` (nil: forever, `.zero`: just check) until a
    /// read would find data, end of stream or an error. Lets one thread
    /// interleave writing batches with reading acknowledgements. For TLS a
    /// true answer may mean part of a record: the read then waits for the rest.
    func waitReadable(timeout: Duration?) throws -> Bool
    /// Ends our direction (the peer reads end of stream); reading stays possible. Best effort.
    func shutdown()
    /// Releases the connection. Idempotent; also done in deinit.
    func close()
    /// Cuts both directions at once (`shutdown(SHUT_RDWR)`), from any thread:
    /// a read or write blocked in another thread fails at once. For cancel
    /// and watchdogs; the owner still calls `close()`.
    func abort()
    /// SO_RCVTIMEO / SO_SNDTIMEO of the socket underneath; nil waits forever.
    func setTimeouts(read: Duration?, write: Duration?) throws
    /// The verified peer certificate (TLS); nil on a plain stream (`--insecure`).
    var peerIdentity: PeerIdentity? { get }
}

extension ByteStream {
    public func writeAll(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) throws {
        try writeAll(first)
        try writeAll(second)
    }

    /// Reads exactly `buffer.count` bytes.
    ///
    /// - Returns: false on a clean end of stream before the first byte (the peer
    ///   finished between messages).
    /// - Throws: ``NetworkError/unexpectedEndOfStream(peer:missing:)`` when the
    ///   stream ends inside the buffer.
    @discardableResult
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        var done = 0
        while done < buffer.count {
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            if n == 0 {
                if done == 0 { return false }
                throw NetworkError.unexpectedEndOfStream(peer: peerDescription, missing: buffer.count - done)
            }
            done += n
        }
        return true
    }
}

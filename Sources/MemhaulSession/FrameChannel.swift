import MemhaulTLS
import MemhaulSystem
import MemhaulWire

/// One peer connection speaking `Protocol/wire.md`: frames out with sequence
/// numbers, frames in through the incremental decoder. Not thread-safe: one
/// thread sends, and the same or one other thread receives.
public final class FrameChannel: @unchecked Sendable {  // used by one thread per direction
    public let stream: ByteStream
    private var encoder = FrameEncoder()
    private var decoder: FrameDecoder
    private var out: [UInt8] = []
    public private(set) var bytesSent: UInt64 = 0
    public private(set) var bytesReceived: UInt64 = 0

    public init(stream: ByteStream, limits: WireLimits = .default) {
        self.stream = stream
        self.decoder = FrameDecoder(limits: limits, expectsPreamble: true)
        self.out.reserveCapacity(64 << 10)
    }

    public func sendPreamble() throws {
        out.removeAll(keepingCapacity: true)
        encoder.encodePreamble(into: &out)
        try flush()
    }

    public func send(_ message: Message) throws {
        out.removeAll(keepingCapacity: true)
        try encoder.encode(message, into: &out)
        try flush()
    }

    /// A PAGE_BATCH frame: headers encoded here, payload written from the caller's buffer.
    public func sendPageBatch(_ header: PageBatchHeader, payload: UnsafeRawBufferPointer) throws {
        out.removeAll(keepingCapacity: true)
        try encoder.encodePageBatchHeader(header, into: &out)
        try flush()
        try stream.writeAll(payload)
        bytesSent &+= UInt64(payload.count)
    }

    private func flush() throws {
        try out.withUnsafeBytes { try stream.writeAll($0) }
        bytesSent &+= UInt64(out.count)
    }

    /// Blocks until one whole frame has arrived; its payload is valid until the
    /// next call. End of stream before a frame is `connectionClosed`.
    public func receiveFrame() throws -> Frame {
        while true {
            if let frame = try decoder.nextFrame() { return frame }
            let want = max(decoder.bytesWanted, 64 << 10)
            let n = try decoder.fill(minimumCapacity: want) { buffer in try stream.read(into: buffer) }
            if n == 0 { throw MigrationError.connectionClosed }
            bytesReceived &+= UInt64(n)
        }
    }

    public func receive() throws -> Message {
        let frame = try receiveFrame()
        return try frame.message(limits: decoder.limits)
    }

    public func close() {
        stream.close()
    }

    /// After a failed send: an ERROR the peer sent before hanging up says why,
    /// better than our EPIPE/ECONNRESET. Waits at most `seconds` for it.
    public func peerErrorAfterFailure(seconds: Double = 2) -> ErrorMessage? {
        try? stream.setTimeouts(read: .milliseconds(Int64(seconds * 1000)), write: .milliseconds(Int64(seconds * 1000)))
        for _ in 0..<64 {
            guard let message = try? receive() else { return nil }
            if case .error(let e) = message { return e }
        }
        return nil
    }

    /// The receiver's way out after sending ERROR: stop writing, and keep
    /// reading (and dropping) what the sender still has in flight for a short
    /// while (until it hangs up, at most `seconds`), so the sender reads our
    /// ERROR at its next read instead of a connection reset.
    public func lingerAfterError(seconds: Double = 20) {
        stream.shutdown()
        try? stream.setTimeouts(read: .milliseconds(200), write: .milliseconds(200))
        let deadline = MonotonicClock.seconds() + seconds
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer { buffer.deallocate() }
        while MonotonicClock.seconds() < deadline {
            guard let n = try? stream.read(into: buffer), n > 0 else { return }
        }
    }
}

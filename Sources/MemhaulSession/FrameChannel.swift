import Dispatch
import MemhaulTLS
import MemhaulSystem
import MemhaulWire
import Synchronization

/// A bound on one wait for the peer (`Protocol/wire.md`, "Deadlines"): an
/// instant, fixed when the wait starts, that covers the whole wait — every
/// byte and every other frame (a KEEPALIVE, say) that comes in it. A peer
/// that drips bytes or answers keepalives does not move it.
public struct PeerDeadline: Sendable {
    /// What is awaited, for the error: `ROUND_ACK for round 7`.
    public var wait: String
    /// The limit, seconds.
    public var seconds: Double
    /// Monotonic seconds (``MonotonicClock``) at which the wait fails.
    public var instant: Double

    public init(_ wait: String, seconds: Double, from start: Double = MonotonicClock.seconds()) {
        self.wait = wait
        self.seconds = seconds
        self.instant = start + seconds
    }

    public var remaining: Double { instant - MonotonicClock.seconds() }
    public var error: MigrationError { .peerTimeout(wait: wait, seconds: seconds) }
}

/// One peer connection speaking `Protocol/wire.md`: frames out with sequence
/// numbers, frames in through the incremental decoder. Not thread-safe: one
/// thread sends, and the same or one other thread receives.
public final class FrameChannel: @unchecked Sendable {  // used by one thread per direction
    public let stream: ByteStream
    private var encoder = FrameEncoder()
    private var decoder: FrameDecoder
    private var out: [UInt8] = []
    /// Set when a receive failed inside a frame (``receive(by:pageBytesInto:)``): the stream is out of step.
    private var broken: Error?
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
    /// The headers go out with the payload's first 16 KiB (copied behind them: one full
    /// TLS record, not a record of their own), and the rest follows before one flush.
    public func sendPageBatch(_ header: PageBatchHeader, payload: UnsafeRawBufferPointer) throws {
        out.removeAll(keepingCapacity: true)
        try encoder.encodePageBatchHeader(header, into: &out)
        let lead = min(payload.count, max(0, Self.recordBytes - out.count))
        out.append(contentsOf: payload[0..<lead])
        try out.withUnsafeBytes { try stream.writeAll($0, UnsafeRawBufferPointer(rebasing: payload[lead...])) }
        bytesSent &+= UInt64(out.count + payload.count - lead)
    }

    /// Plaintext bytes of a full TLS record (RFC 8446, 5.1).
    static let recordBytes = 16 << 10

    private func flush() throws {
        try out.withUnsafeBytes { try stream.writeAll($0) }
        bytesSent &+= UInt64(out.count)
    }

    /// Blocks until one whole frame has arrived; its payload is valid until the
    /// next call. End of stream before a frame is `connectionClosed`.
    ///
    /// With a `deadline`, a frame not complete by its instant is
    /// ``MigrationError/peerTimeout(wait:seconds:)``, and the stream is cut if
    /// a read was under way: `waitReadable` says yes to a single byte, and a
    /// TLS read then waits for the rest of the record, which a peer dripping
    /// one byte at a time can stretch without end; a watchdog shuts the socket
    /// down at the instant so the read fails. After a timeout the channel is
    /// not to be used again.
    public func receiveFrame(by deadline: PeerDeadline? = nil) throws -> Frame {
        if let broken { throw broken }
        while true {
            if let frame = try decoder.nextFrame() { return frame }
            try receiveMore(max(decoder.bytesWanted, 64 << 10), exactly: false, by: deadline)
        }
    }

    /// Whether ``receive(by:)`` can return without waiting for the peer: a
    /// whole frame is buffered, or bytes are readable now.
    public func frameReadyWithoutWaiting() throws -> Bool {
        if decoder.hasCompleteFrame { return true }
        return try stream.waitReadable(timeout: .zero)
    }

    public func receive(by deadline: PeerDeadline? = nil) throws -> Message {
        let frame = try receiveFrame(by: deadline)
        return try frame.message(limits: decoder.limits)
    }

    /// What ``receive(by:pageBytesInto:)`` returns.
    public enum Received {
        case message(Message)
        /// A PAGE_BATCH; its `header.payloadLength` page bytes are in the buffer the sink gave.
        case pageBatch(PageBatchHeader)
    }

    /// Like ``receive(by:)``, but a PAGE_BATCH's page bytes go straight from the stream into
    /// the buffer `pageBytesInto` gives for its (validated) header, of at least
    /// `header.payloadLength` bytes: they never pass through the frame buffer, which stays
    /// small. Headers are read with reads of just their size, so at most a few bytes of page
    /// data are ever copied twice. When the sink throws, or the page bytes cannot be read,
    /// the stream is mid-frame: the channel is broken and every later receive throws that error.
    public func receive(by deadline: PeerDeadline? = nil,
                        pageBytesInto sink: (PageBatchHeader) throws -> UnsafeMutableRawBufferPointer) throws -> Received {
        if let broken { throw broken }
        while true {
            switch try decoder.nextFrameOrPageBatchHeader() {
            case .frame(let frame):
                return .message(try frame.message(limits: decoder.limits))
            case .pageBatchHeader(let header):
                do {
                    let buffer = try sink(header)
                    let count = Int(header.payloadLength)
                    precondition(buffer.count >= count, "page buffer of \(buffer.count) bytes for \(count)")
                    try receivePageBytes(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]), by: deadline)
                } catch {
                    broken = error
                    throw error
                }
                return .pageBatch(header)
            case nil:
                try receiveMore(decoder.bytesWantedBeforePageBytes, exactly: true, by: deadline)
            }
        }
    }

    /// Reads into the decoder: at least `want` bytes of room, and (`exactly`) no more than `want` asked for.
    private func receiveMore(_ want: Int, exactly: Bool, by deadline: PeerDeadline?) throws {
        let n = try read(by: deadline) {
            try decoder.fill(minimumCapacity: want) { space in
                try stream.read(into: exactly ? UnsafeMutableRawBufferPointer(rebasing: space.prefix(want)) : space)
            }
        }
        if n == 0 { throw MigrationError.connectionClosed }
        bytesReceived &+= UInt64(n)
    }

    /// Fills `buffer` with the next bytes: those the decoder holds, then the stream's.
    private func receivePageBytes(into buffer: UnsafeMutableRawBufferPointer, by deadline: PeerDeadline?) throws {
        var done = decoder.takeBuffered(into: buffer)
        while done < buffer.count {
            let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[done...])
            let n = try read(by: deadline) { try stream.read(into: rest) }
            if n == 0 { throw MigrationError.connectionClosed }
            bytesReceived &+= UInt64(n)
            done += n
        }
    }

    /// One stream read (`body`), bounded by `deadline` when there is one.
    private func read(by deadline: PeerDeadline?, _ body: () throws -> Int) throws -> Int {
        guard let deadline else { return try body() }
        let remaining = deadline.remaining
        guard remaining > 0, try stream.waitReadable(timeout: .nanoseconds(Int64(min(remaining, 1e9) * 1e9))) else {
            throw deadline.error
        }
        let watchdog = Watchdog(cutting: stream, after: deadline.remaining)
        do {
            let n = try body()
            if watchdog.disarm() { throw deadline.error }
            return n
        } catch {
            if watchdog.disarm() { throw deadline.error }
            throw error
        }
    }

    /// Shuts a stream down (``ByteStream/abort()``) at an instant unless
    /// disarmed first. The cut happens under the same lock as the disarm, so
    /// once `disarm` returns no cut can follow (and the owner may close the
    /// stream without a late shutdown hitting a reused descriptor).
    final class Watchdog: Sendable {
        private enum State { case armed, disarmed, fired }
        private let state = Mutex(State.armed)

        init(cutting stream: ByteStream, after seconds: Double) {
            DispatchQueue.global().asyncAfter(deadline: .now() + max(0, seconds)) { [weak self, weak stream] in
                self?.state.withLock { s in
                    guard s == .armed else { return }
                    s = .fired
                    stream?.abort()
                }
            }
        }

        /// True when the watchdog had fired (the stream is cut).
        func disarm() -> Bool {
            state.withLock { s in
                if s == .armed { s = .disarmed }
                return s == .fired
            }
        }
    }

    public func close() {
        stream.close()
    }

    /// After a failed send: an ERROR the peer sent before hanging up says why,
    /// better than our EPIPE/ECONNRESET. Waits at most `seconds` for it.
    /// The wait is bounded as a whole: a peer that keeps sending other frames
    /// or drips bytes cannot stretch it.
    public func peerErrorAfterFailure(seconds: Double = 2) -> ErrorMessage? {
        try? stream.setTimeouts(read: .milliseconds(Int64(seconds * 1000)), write: .milliseconds(Int64(seconds * 1000)))
        let deadline = PeerDeadline("ERROR after a failure", seconds: seconds)
        for _ in 0..<64 {
            guard let message = try? receive(by: deadline) else { return nil }
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

/// Frame type byte (wire.md, "Messages").
public enum FrameType: UInt8, CaseIterable, Hashable, Sendable {
    case hello = 0x01
    case welcome = 0x02
    case layout = 0x03
    case pageBatch = 0x04
    case zeroRanges = 0x05
    case discardRanges = 0x06
    case roundEnd = 0x07
    case roundAck = 0x08
    case error = 0x09
    case keepalive = 0x0A
    case close = 0x0B
    case restoreFile = 0x0C
    case restoreBegin = 0x0D
    case restoreDone = 0x0E

    /// The largest payload a valid frame of this type can have under `limits`; the header
    /// decoder rejects anything bigger before a byte of payload is buffered.
    public func maxPayloadLength(_ limits: WireLimits) -> UInt32 {
        let cap = UInt64(limits.maxPayloadLength)
        let n: UInt64
        switch self {
        case .hello: n = UInt64(Hello.fixedSize + WireLimits.maxMigrationIDLength + WireLimits.maxSenderNameLength)
        case .welcome: n = UInt64(Welcome.size)
        case .layout: n = cap
        case .pageBatch:
            n = UInt64(PageBatchHeader.fixedSize) + UInt64(PageRun.size) * UInt64(max(limits.maxRunsPerBatch, 0))
                + UInt64(max(limits.maxPagesPerBatch, 0)) * UInt64(limits.pageSize)
        case .zeroRanges, .discardRanges:
            n = UInt64(RangeList.fixedSize) + UInt64(PageRun.size) * UInt64(max(limits.maxRangesPerMessage, 0))
        case .roundEnd: n = UInt64(RoundEnd.fixedSize + WireDigest.size)
        case .roundAck: n = UInt64(RoundAck.fixedSize + WireDigest.size)
        case .error: n = UInt64(ErrorMessage.fixedSize) + UInt64(max(limits.maxErrorMessageLength, 0))
        case .keepalive: n = UInt64(Keepalive.size)
        case .close: n = UInt64(Close.size)
        case .restoreFile: n = UInt64(RestoreFile.fixedSize + RestoreFileName.maxLength + RestoreFile.maxChunk)
        case .restoreBegin: n = UInt64(RestoreBegin.size)
        case .restoreDone: n = UInt64(RestoreDone.size)
        }
        return UInt32(min(n, cap))
    }
}

/// The fixed 12-byte frame header: type u8, flags u8, reserved u16 (0), payload length u32,
/// sequence u32 — all little-endian.
public struct FrameHeader: Hashable, Sendable {
    public static let size = 12

    public var type: FrameType
    /// No flags are defined in 1.0; must be 0.
    public var flags: UInt8
    public var length: UInt32
    /// Per-direction frame counter: 0 for the first frame after the preamble, +1 (wrapping) per frame.
    public var sequence: UInt32

    public init(type: FrameType, flags: UInt8 = 0, length: UInt32, sequence: UInt32) {
        self.type = type
        self.flags = flags
        self.length = length
        self.sequence = sequence
    }

    public func encode(into out: inout [UInt8]) {
        out.append(type.rawValue)
        out.append(flags)
        out.appendLE(UInt16(0))
        out.appendLE(length)
        out.appendLE(sequence)
    }

    /// Decodes and validates the first 12 bytes of `bytes` (type, flags, reserved, per-type length limit).
    public static func decode(_ bytes: UnsafeRawBufferPointer, limits: WireLimits = .default) throws(WireError) -> FrameHeader {
        guard bytes.count >= size else { throw .truncated(needed: size, available: bytes.count) }
        guard let type = FrameType(rawValue: bytes[0]) else { throw .unknownFrameType(bytes[0]) }
        guard bytes[1] == 0 else { throw .invalidFlags(bytes[1]) }
        guard bytes.le(UInt16.self, at: 2) == 0 else { throw .reservedNotZero }
        let length = bytes.le(UInt32.self, at: 4)
        let limit = type.maxPayloadLength(limits)
        guard length <= limit else { throw .payloadTooLarge(length: length, limit: limit) }
        return FrameHeader(type: type, flags: 0, length: length, sequence: bytes.le(UInt32.self, at: 8))
    }
}

/// A complete frame. `payload` is a slice of the decoder's buffer (no copy); keep it only
/// until the next `append`/`fill`, or that call copies the buffer.
public struct Frame: Hashable, Sendable {
    public var header: FrameHeader
    public var payload: ArraySlice<UInt8>

    public init(header: FrameHeader, payload: ArraySlice<UInt8>) {
        self.header = header
        self.payload = payload
    }

    /// Decodes the payload; a PAGE_BATCH's page bytes stay a slice of the same buffer.
    public func message(limits: WireLimits = .default) throws(WireError) -> Message {
        try Message.decode(type: header.type, payload: payload, limits: limits)
    }
}

/// Incremental frame decoder for one direction of a stream: feed it whatever bytes arrive,
/// take frames out when complete. After the first error it is poisoned and rethrows that
/// error: a stream that lost sync cannot be trusted again.
public struct FrameDecoder: Sendable {
    public let limits: WireLimits
    public let localVersion: WireVersion
    public let checksSequence: Bool
    /// Set once the peer's preamble is decoded (stays nil when the decoder does not expect one).
    public private(set) var peerVersion: WireVersion?
    /// Sequence number the next frame must carry.
    public private(set) var expectedSequence: UInt32
    private var expectsPreamble: Bool
    private var storage: [UInt8] = []
    private var head = 0
    private var tail = 0
    private var failure: WireError?

    public init(limits: WireLimits = .default, expectsPreamble: Bool = true, localVersion: WireVersion = .current,
                checksSequence: Bool = true, firstSequence: UInt32 = 0) {
        self.limits = limits
        self.expectsPreamble = expectsPreamble
        self.localVersion = localVersion
        self.checksSequence = checksSequence
        self.expectedSequence = firstSequence
    }

    /// Bytes buffered but not yet returned as frames.
    public var bufferedByteCount: Int { tail - head }

    /// How many more bytes the current frame needs before `nextFrame` can return it (at least 1),
    /// so a reader can ask the socket for exactly that much.
    public var bytesWanted: Int {
        let have = tail - head
        if expectsPreamble { return max(Preamble.size - have, 1) }
        guard have >= FrameHeader.size else { return FrameHeader.size - have }
        let length = storage.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[head..<tail]).le(UInt32.self, at: 4) }
        let (total, _) = (FrameHeader.size).addingReportingOverflow(Int(length))
        return max(total - have, 1)
    }

    /// Whether `nextFrame` can return a frame (or consume the preamble) without more bytes.
    public var hasCompleteFrame: Bool {
        let have = tail - head
        if expectsPreamble { return have >= Preamble.size }
        guard have >= FrameHeader.size else { return false }
        let length = storage.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[head..<tail]).le(UInt32.self, at: 4) }
        return have >= FrameHeader.size + Int(length)
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        reserveSpace(bytes.count)
        storage.withUnsafeMutableBytes { dst in
            dst.baseAddress!.advanced(by: tail).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        }
        tail += bytes.count
    }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        let done: Void? = bytes.withContiguousStorageIfAvailable { append(UnsafeRawBufferPointer($0)) }
        if done == nil {
            let copy = Array(bytes)
            copy.withUnsafeBytes { append($0) }
        }
    }

    /// Lets a reader write straight into the buffer (no intermediate copy): `read` gets at least
    /// `minimumCapacity` writable bytes and returns how many it wrote (0...count).
    public mutating func fill<E: Error>(minimumCapacity: Int, _ read: (UnsafeMutableRawBufferPointer) throws(E) -> Int) throws(E) -> Int {
        reserveSpace(max(minimumCapacity, 1))
        let start = tail
        let result: Result<Int, E> = storage.withUnsafeMutableBytes { buf in
            let space = UnsafeMutableRawBufferPointer(rebasing: buf[start...])
            return Result { () throws(E) -> Int in
                let n = try read(space)
                precondition(n >= 0 && n <= space.count, "FrameDecoder.fill: reader reported \(n) bytes for \(space.count) of space")
                return n
            }
        }
        let n = try result.get()
        tail += n
        return n
    }

    /// The next complete frame, or nil when more bytes are needed.
    public mutating func nextFrame() throws(WireError) -> Frame? {
        if let failure { throw failure }
        do throws(WireError) {
            return try decodeNext()
        } catch {
            failure = error
            throw error
        }
    }

    /// What ``nextFrameOrPageBatchHeader()`` found.
    public enum Next: Sendable {
        case frame(Frame)
        /// A PAGE_BATCH whose frame header and batch header (validated) are consumed; its
        /// `header.payloadLength` page bytes come next, partly buffered (``takeBuffered(into:)``),
        /// the rest still on the stream.
        case pageBatchHeader(PageBatchHeader)
    }

    /// Like ``nextFrame()``, but a PAGE_BATCH is returned as soon as its headers are in, so
    /// the reader can put its page bytes straight into a buffer of its own (no copy through
    /// this decoder's buffer). The caller must then take exactly `payloadLength` bytes:
    /// the buffered ones with ``takeBuffered(into:)``, the rest from the stream.
    public mutating func nextFrameOrPageBatchHeader() throws(WireError) -> Next? {
        if let failure { throw failure }
        do throws(WireError) {
            if expectsPreamble || tail - head < FrameHeader.size || storage[head] != FrameType.pageBatch.rawValue {
                return try decodeNext().map(Next.frame)
            }
            return try decodePageBatchHeader().map(Next.pageBatchHeader)
        } catch {
            failure = error
            throw error
        }
    }

    /// Bytes `nextFrameOrPageBatchHeader` needs before it can return (at least 1): up to
    /// the end of a PAGE_BATCH's runs, else the rest of the frame (as ``bytesWanted``).
    public var bytesWantedBeforePageBytes: Int {
        guard let end = pageBatchHeaderEnd else { return bytesWanted }
        return max(end - (tail - head), 1)
    }

    /// Offset from `head` where a buffered PAGE_BATCH's batch header ends (never past the
    /// frame); as far as is known yet (the fixed part) while its run count is not buffered.
    /// Nil when the buffered frame is not a PAGE_BATCH (or its type is not in yet).
    private var pageBatchHeaderEnd: Int? {
        let have = tail - head
        guard !expectsPreamble, have >= FrameHeader.size, storage[head] == FrameType.pageBatch.rawValue else { return nil }
        return storage.withUnsafeBytes { (all: UnsafeRawBufferPointer) -> Int in
            let b = UnsafeRawBufferPointer(rebasing: all[head..<tail])
            let length = Int(b.le(UInt32.self, at: 4))
            let fixed = min(PageBatchHeader.fixedSize, length)
            guard have >= FrameHeader.size + fixed, length >= PageBatchHeader.fixedSize else { return FrameHeader.size + fixed }
            let runs = Int(b.le(UInt16.self, at: FrameHeader.size + PageBatchHeader.runCountOffset))
            // Over the limit: decoding the fixed part refuses it, before its runs are buffered.
            guard runs <= limits.maxRunsPerBatch else { return FrameHeader.size + fixed }
            return FrameHeader.size + min(PageBatchHeader.fixedSize + runs * PageRun.size, length)
        }
    }

    /// Moves up to `buffer.count` buffered bytes into `buffer` (consumed); returns the count.
    /// For the page bytes after ``Next/pageBatchHeader(_:)``.
    public mutating func takeBuffered(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = min(buffer.count, tail - head)
        guard n > 0 else { return 0 }
        storage.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + head, byteCount: n) }
        head += n
        return n
    }

    private mutating func decodePageBatchHeader() throws(WireError) -> PageBatchHeader? {
        let h = head
        let limits = self.limits
        let frame = try storage[h..<(h + FrameHeader.size)].withBytes { (b) throws(WireError) in
            try FrameHeader.decode(b, limits: limits)
        }
        if checksSequence, frame.sequence != expectedSequence {
            throw .sequenceMismatch(expected: expectedSequence, got: frame.sequence)
        }
        let end = h + pageBatchHeaderEnd!  // the fixed part until the run count is in, then up to the runs' end
        guard tail >= end, tail - h >= FrameHeader.size + min(PageBatchHeader.fixedSize, Int(frame.length)) else { return nil }
        let header = try storage[(h + FrameHeader.size)..<end].withBytes { (b) throws(WireError) in
            try PageBatchHeader.decode(head: b, frameLength: Int(frame.length), limits: limits)
        }
        head = end
        expectedSequence &+= 1
        return header
    }

    private mutating func decodeNext() throws(WireError) -> Frame? {
        let (h, t) = (head, tail)
        if expectsPreamble {
            guard t - h >= Preamble.size else {
                // Reject a wrong magic as soon as its bytes arrive instead of waiting for 12.
                try storage[h..<t].withBytes { (b) throws(WireError) in
                    for i in 0..<min(b.count, Preamble.magic.count) where b[i] != Preamble.magic[i] { throw .badMagic }
                }
                return nil
            }
            let local = localVersion
            let version = try storage[h..<(h + Preamble.size)].withBytes { (b) throws(WireError) in
                try Preamble.decode(b, local: local)
            }
            peerVersion = version
            expectsPreamble = false
            head += Preamble.size
            return try decodeNext()
        }
        guard t - h >= FrameHeader.size else { return nil }
        let limits = self.limits
        let header = try storage[h..<(h + FrameHeader.size)].withBytes { (b) throws(WireError) in
            try FrameHeader.decode(b, limits: limits)
        }
        if checksSequence, header.sequence != expectedSequence {
            throw .sequenceMismatch(expected: expectedSequence, got: header.sequence)
        }
        let total = FrameHeader.size + Int(header.length)  // length <= 16 MiB-ish: cannot overflow
        guard t - h >= total else { return nil }
        let payload = storage[(h + FrameHeader.size)..<(h + total)]
        head = h + total
        expectedSequence &+= 1
        return Frame(header: header, payload: payload)
    }

    /// Makes room for `n` more bytes after `tail`, compacting consumed bytes first.
    private mutating func reserveSpace(_ n: Int) {
        if head == tail { head = 0; tail = 0 }
        if storage.count - tail >= n { return }
        if head > 0 {
            let (h, live) = (head, tail - head)
            storage.withUnsafeMutableBytes { buf in
                buf.baseAddress!.copyMemory(from: buf.baseAddress!.advanced(by: h), byteCount: live)  // memmove
            }
            head = 0
            tail = live
            if storage.count - tail >= n { return }
        }
        let wanted = max(tail + n, storage.count * 2)  // readers ask for big chunks through fill(minimumCapacity:)
        storage.append(contentsOf: repeatElement(0, count: wanted - storage.count))
    }
}

/// Encodes frames for one direction, numbering them.
public struct FrameEncoder: Sendable {
    public var limits: WireLimits
    /// Sequence number the next frame gets.
    public private(set) var nextSequence: UInt32

    public init(limits: WireLimits = .default, firstSequence: UInt32 = 0) {
        self.limits = limits
        self.nextSequence = firstSequence
    }

    public func encodePreamble(_ version: WireVersion = .current, into out: inout [UInt8]) {
        Preamble.encode(version, into: &out)
    }

    /// Appends one complete frame (header + payload). On error nothing is appended.
    public mutating func encode(_ message: Message, into out: inout [UInt8]) throws(WireError) {
        try message.encodeFrame(sequence: nextSequence, into: &out, limits: limits)
        nextSequence &+= 1
    }

    /// Appends the frame header and PAGE_BATCH header only; the caller must send exactly
    /// `header.payloadLength` payload bytes next, from its own buffer.
    public mutating func encodePageBatchHeader(_ header: PageBatchHeader, into out: inout [UInt8]) throws(WireError) {
        try header.encodeFrame(sequence: nextSequence, into: &out, limits: limits)
        nextSequence &+= 1
    }
}

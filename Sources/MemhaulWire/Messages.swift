// Message payloads (wire.md, "Messages"). Each type validates on encode and on decode with the
// same rules, so an encoder never emits what a decoder rejects.

/// HELLO, sender → receiver, first frame.
public struct Hello: Hashable, Sendable {
    static let fixedSize = 28

    public var version: WireVersion
    public var capabilities: Capabilities
    public var pageSize: UInt32
    /// 1-64 bytes of `[A-Za-z0-9._-]`; names the migration on the receiver.
    public var migrationID: String
    /// Free-form UTF-8, at most 255 bytes (host name, for logs).
    public var senderName: String
    /// Resume request: the last round the sender saw acknowledged for this migration id; nil = fresh start.
    public var resumeFromRound: UInt64?

    public init(version: WireVersion = .current, capabilities: Capabilities, pageSize: UInt32 = 4096,
                migrationID: String, senderName: String, resumeFromRound: UInt64? = nil) {
        self.version = version
        self.capabilities = capabilities
        self.pageSize = pageSize
        self.migrationID = migrationID
        self.senderName = senderName
        self.resumeFromRound = resumeFromRound
    }


    static func isValidPageSize(_ s: UInt32) -> Bool { s >= 4096 && s <= 65536 && s & (s &- 1) == 0 }

    func encode(into out: inout [UInt8]) throws(WireError) {
        guard MigrationID.isValid(migrationID.utf8) else { throw .invalidMigrationID }
        let nameLength = senderName.utf8.count
        guard nameLength <= WireLimits.maxSenderNameLength else {
            throw .nameTooLong(length: nameLength, limit: WireLimits.maxSenderNameLength)
        }
        guard Hello.isValidPageSize(pageSize) else { throw .invalidPageSize(pageSize) }
        out.appendLE(version.major)
        out.appendLE(version.minor)
        out.appendLE(pageSize)
        out.appendLE(capabilities.rawValue)
        out.appendLE(resumeFromRound ?? 0)
        out.append(resumeFromRound == nil ? 0 : 1)
        out.append(UInt8(migrationID.utf8.count))
        out.append(UInt8(nameLength))
        out.append(0)
        out.append(contentsOf: migrationID.utf8)
        out.append(contentsOf: senderName.utf8)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> Hello {
        let major = try r.read(UInt16.self)
        let minor = try r.read(UInt16.self)
        let pageSize = try r.read(UInt32.self)
        let caps = try r.read(UInt64.self)
        let resume = try r.read(UInt64.self)
        let flags = try r.read(UInt8.self)
        let idLength = Int(try r.read(UInt8.self))
        let nameLength = Int(try r.read(UInt8.self))
        try r.reserved(1)
        guard flags & ~1 == 0 else { throw .invalidFlags(flags) }
        if flags == 0, resume != 0 { throw .reservedNotZero }
        guard isValidPageSize(pageSize) else { throw .invalidPageSize(pageSize) }
        let idBytes = try r.bytes(idLength)
        guard MigrationID.isValid(idBytes) else { throw .invalidMigrationID }
        let id = String(decoding: idBytes, as: UTF8.self)  // ASCII, checked above
        let name = try r.string(nameLength)
        try r.finish()
        return Hello(version: WireVersion(major: major, minor: minor), capabilities: Capabilities(rawValue: caps),
                     pageSize: pageSize, migrationID: id, senderName: name, resumeFromRound: flags == 1 ? resume : nil)
    }
}

/// WELCOME, receiver → sender, answer to HELLO.
public struct Welcome: Hashable, Sendable {
    static let size = 24

    public var version: WireVersion
    /// Capabilities both sides use: a subset of HELLO's.
    public var capabilities: Capabilities
    /// The receiver's last durably committed round for the migration id; nil when it has none.
    public var lastCommittedRound: UInt64?

    public init(version: WireVersion = .current, capabilities: Capabilities, lastCommittedRound: UInt64? = nil) {
        self.version = version
        self.capabilities = capabilities
        self.lastCommittedRound = lastCommittedRound
    }

    func encode(into out: inout [UInt8]) throws(WireError) {
        if lastCommittedRound == 0 { throw .invalidRound }
        out.appendLE(version.major)
        out.appendLE(version.minor)
        out.append(lastCommittedRound == nil ? 0 : 1)
        out.appendZeros(3)
        out.appendLE(capabilities.rawValue)
        out.appendLE(lastCommittedRound ?? 0)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> Welcome {
        let major = try r.read(UInt16.self)
        let minor = try r.read(UInt16.self)
        let flags = try r.read(UInt8.self)
        try r.reserved(3)
        let caps = try r.read(UInt64.self)
        let round = try r.read(UInt64.self)
        try r.finish()
        guard flags & ~1 == 0 else { throw .invalidFlags(flags) }
        if flags == 0, round != 0 { throw .reservedNotZero }
        if flags == 1, round == 0 { throw .invalidRound }
        return Welcome(version: WireVersion(major: major, minor: minor), capabilities: Capabilities(rawValue: caps),
                       lastCommittedRound: flags == 1 ? round : nil)
    }
}

/// LAYOUT, sender → receiver: the regions of the source process for a round (first frame(s) of a round).
public struct Layout: Hashable, Sendable {
    static let fixedSize = 16

    public var round: UInt64
    /// More LAYOUT frames of the same round follow (a layout too big for one frame).
    public var continued: Bool
    /// Ascending, non-overlapping, page aligned.
    public var regions: [RegionDescriptor]

    public init(round: UInt64, continued: Bool = false, regions: [RegionDescriptor]) {
        self.round = round
        self.continued = continued
        self.regions = regions
    }

    func encode(into out: inout [UInt8], limits: WireLimits) throws(WireError) {
        guard round != 0 else { throw .invalidRound }
        let regionLimit = min(limits.maxRegionsPerLayout, Int(UInt32.max))  // u32 count field
        guard regions.count <= regionLimit else { throw .countTooLarge(count: regions.count, limit: regionLimit) }
        var previousEnd: UInt64 = 0
        var size = Layout.fixedSize
        for region in regions {
            try Layout.validate(region, previousEnd: previousEnd, nameLength: region.name.utf8.count, limits: limits)
            previousEnd = region.end
            size &+= RegionDescriptor.fixedSize &+ region.name.utf8.count
        }
        guard size <= Int(limits.maxPayloadLength) else {
            throw .payloadTooLarge(length: UInt32(clamping: size), limit: limits.maxPayloadLength)
        }
        out.reserveCapacity(out.count + size)
        out.appendLE(round)
        out.append(continued ? 1 : 0)
        out.appendZeros(3)
        out.appendLE(UInt32(regions.count))
        for region in regions {
            out.appendLE(region.start)
            out.appendLE(region.end)
            out.append(region.protection.rawValue)
            out.append(region.flags.rawValue)
            out.appendLE(UInt16(region.name.utf8.count))
            out.append(contentsOf: region.name.utf8)
        }
    }

    static func validate(_ region: RegionDescriptor, previousEnd: UInt64, nameLength: Int, limits: WireLimits) throws(WireError) {
        let mask = UInt64(limits.pageSize) &- 1
        guard region.start & mask == 0 else { throw .unalignedAddress(region.start) }
        guard region.end & mask == 0 else { throw .unalignedAddress(region.end) }
        guard region.end > region.start else { throw .emptyRange(start: region.start) }
        guard region.start >= previousEnd else { throw .rangesUnsorted(start: region.start) }
        guard region.protection.isSubset(of: .defined) else { throw .invalidFlags(region.protection.rawValue) }
        guard region.flags.isSubset(of: .defined) else { throw .invalidFlags(region.flags.rawValue) }
        let nameLimit = min(limits.maxRegionNameLength, Int(UInt16.max))  // u16 length field
        guard nameLength <= nameLimit else { throw .nameTooLong(length: nameLength, limit: nameLimit) }
    }

    static func decode(_ r: inout ByteReader, limits: WireLimits) throws(WireError) -> Layout {
        let round = try r.read(UInt64.self)
        let flags = try r.read(UInt8.self)
        try r.reserved(3)
        let count = Int(try r.read(UInt32.self))
        guard round != 0 else { throw .invalidRound }
        guard flags & ~1 == 0 else { throw .invalidFlags(flags) }
        guard count <= limits.maxRegionsPerLayout else { throw .countTooLarge(count: count, limit: limits.maxRegionsPerLayout) }
        try r.need(count * RegionDescriptor.fixedSize)  // before allocating: each region takes >= 20 bytes
        var regions: [RegionDescriptor] = []
        regions.reserveCapacity(count)
        var previousEnd: UInt64 = 0
        for _ in 0..<count {
            let start = try r.read(UInt64.self)
            let end = try r.read(UInt64.self)
            let protection = Protection(rawValue: try r.read(UInt8.self))
            let regionFlags = RegionFlags(rawValue: try r.read(UInt8.self))
            let nameLength = Int(try r.read(UInt16.self))
            let region = RegionDescriptor(start: start, end: end, protection: protection, flags: regionFlags, name: "")
            try validate(region, previousEnd: previousEnd, nameLength: nameLength, limits: limits)
            var named = region
            named.name = try r.string(nameLength)
            regions.append(named)
            previousEnd = end
        }
        try r.finish()
        return Layout(round: round, continued: flags == 1, regions: regions)
    }
}

/// The fixed part of a PAGE_BATCH: everything but the page bytes. Encoded separately so the
/// engine can send the (possibly 4 MiB) payload from its own buffer without copying it.
public struct PageBatchHeader: Hashable, Sendable {
    static let fixedSize = 24

    public var round: UInt64
    public var encoding: PageEncoding
    /// Ascending, non-overlapping; the payload holds their pages in this order.
    public var runs: [PageRun]
    /// Total pages of `runs` × page size.
    public var uncompressedLength: UInt32
    /// XXH3-64 of the uncompressed bytes (computed and checked by the engine, carried here).
    public var checksum: UInt64
    /// Bytes of payload that follow the header: = uncompressedLength for raw, 1...uncompressedLength for zstd,
    /// 2 × pages...uncompressedLength for delta.
    public var payloadLength: UInt32

    public init(round: UInt64, encoding: PageEncoding, runs: [PageRun], uncompressedLength: UInt32, checksum: UInt64, payloadLength: UInt32) {
        self.round = round
        self.encoding = encoding
        self.runs = runs
        self.uncompressedLength = uncompressedLength
        self.checksum = checksum
        self.payloadLength = payloadLength
    }

    /// Bytes of the PAGE_BATCH header inside the frame payload (before the page bytes).
    public var encodedSize: Int { PageBatchHeader.fixedSize + PageRun.size * runs.count }

    /// Total pages of the runs (valid headers only: unchecked sum otherwise).
    public var pageCount: Int { runs.reduce(0) { $0 &+ Int($1.pageCount) } }

    func validate(limits: WireLimits) throws(WireError) {
        guard round != 0 else { throw .invalidRound }
        guard !runs.isEmpty else { throw .emptyList }
        let runLimit = min(limits.maxRunsPerBatch, Int(UInt16.max))  // u16 count field
        guard runs.count <= runLimit else { throw .countTooLarge(count: runs.count, limit: runLimit) }
        let pages = try RunChecker.check(runs, pageSize: limits.pageSize)
        try PageBatchHeader.checkLengths(pages: pages, encoding: encoding, uncompressed: uncompressedLength,
                                         payload: Int(payloadLength), limits: limits)
    }

    static func checkLengths(pages: Int, encoding: PageEncoding, uncompressed: UInt32, payload: Int, limits: WireLimits) throws(WireError) {
        guard pages <= limits.maxPagesPerBatch else { throw .countTooLarge(count: pages, limit: limits.maxPagesPerBatch) }
        let (expected, overflow) = pages.multipliedReportingOverflow(by: Int(limits.pageSize))
        guard !overflow, Int(uncompressed) == expected else { throw .lengthMismatch(expected: expected, actual: Int(uncompressed)) }
        switch encoding {
        case .raw:
            guard payload == expected else { throw .lengthMismatch(expected: expected, actual: payload) }
        case .zstd:
            guard payload >= 1, payload <= expected else { throw .compressedTooLarge(length: payload, uncompressed: expected) }
        case .delta:
            // At least every page's tag; never more than the pages raw (the sender sends raw instead).
            guard payload >= 2 * pages, payload <= expected else { throw .compressedTooLarge(length: payload, uncompressed: expected) }
        }
    }

    /// Appends the 12-byte frame header and this header; the frame length counts `payloadLength`
    /// bytes the caller sends next. On error nothing is appended.
    public func encodeFrame(sequence: UInt32, into out: inout [UInt8], limits: WireLimits = .default) throws(WireError) {
        try validate(limits: limits)
        let length = UInt64(encodedSize) + UInt64(payloadLength)
        let limit = FrameType.pageBatch.maxPayloadLength(limits)
        guard length <= UInt64(limit) else { throw .payloadTooLarge(length: UInt32(clamping: length), limit: limit) }
        out.reserveCapacity(out.count + FrameHeader.size + encodedSize)
        FrameHeader(type: .pageBatch, length: UInt32(length), sequence: sequence).encode(into: &out)
        encodeFields(into: &out)
    }

    func encodeFields(into out: inout [UInt8]) {
        out.appendLE(round)
        out.append(encoding.rawValue)
        out.append(0)
        out.appendLE(UInt16(runs.count))
        out.appendLE(uncompressedLength)
        out.appendLE(checksum)
        out.appendRuns(runs)
    }

    /// Decodes a PAGE_BATCH frame payload in place: the header, and the offset in `payload`
    /// where the page bytes start (they run to the end of `payload`).
    public static func decode(_ payload: UnsafeRawBufferPointer, limits: WireLimits = .default) throws(WireError) -> (header: PageBatchHeader, payloadOffset: Int) {
        var r = ByteReader(payload)
        let header = try decode(&r, limits: limits)
        return (header, r.offset)
    }

    /// Decodes the batch header at the start of a PAGE_BATCH frame payload of `frameLength`
    /// bytes from `head` (at least its first `min(fixedSize, frameLength)` bytes, at most up to
    /// the end of its runs); the page bytes, not in `head`, are the rest of the frame.
    /// Validates as whole-frame decoding does, with the same errors.
    public static func decode(head: UnsafeRawBufferPointer, frameLength: Int, limits: WireLimits = .default) throws(WireError) -> PageBatchHeader {
        var r = ByteReader(head)
        return try decode(&r, limits: limits, frameLength: frameLength)
    }

    /// Offset of the u16 run count in the batch header.
    static let runCountOffset = 10

    /// `frameLength`: the whole frame payload's length when `r` holds only its head (the page
    /// bytes, beyond the runs, are elsewhere); nil when `r` holds the whole payload.
    static func decode(_ r: inout ByteReader, limits: WireLimits, frameLength: Int? = nil) throws(WireError) -> PageBatchHeader {
        let round = try r.read(UInt64.self)
        let encodingByte = try r.read(UInt8.self)
        try r.reserved(1)
        let count = Int(try r.read(UInt16.self))
        let uncompressed = try r.read(UInt32.self)
        let checksum = try r.read(UInt64.self)
        guard round != 0 else { throw .invalidRound }
        guard let encoding = PageEncoding(rawValue: encodingByte) else { throw .unknownEncoding(encodingByte) }
        guard count > 0 else { throw .emptyList }
        guard count <= limits.maxRunsPerBatch else { throw .countTooLarge(count: count, limit: limits.maxRunsPerBatch) }
        var checker = RunChecker(pageSize: limits.pageSize)
        let runs = try r.runs(count, checker: &checker)
        let payloadLength = frameLength.map { $0 - r.offset } ?? r.remaining
        guard payloadLength >= 0 else { throw .truncated(needed: r.offset, available: frameLength ?? 0) }
        try checkLengths(pages: checker.totalPages, encoding: encoding, uncompressed: uncompressed, payload: payloadLength, limits: limits)
        return PageBatchHeader(round: round, encoding: encoding, runs: runs, uncompressedLength: uncompressed,
                               checksum: checksum, payloadLength: UInt32(payloadLength))
    }
}

/// PAGE_BATCH, sender → receiver: page contents of some runs, raw or zstd-compressed.
public struct PageBatch: Hashable, Sendable {
    public var header: PageBatchHeader
    /// The page bytes (compressed when `header.encoding == .zstd`). Decoded batches slice the frame buffer.
    public var payload: ArraySlice<UInt8>

    public init(header: PageBatchHeader, payload: ArraySlice<UInt8>) {
        self.header = header
        self.payload = payload
    }

    /// Builds the header from the parts; `payloadLength` is taken from `payload`.
    public init(round: UInt64, encoding: PageEncoding, runs: [PageRun], uncompressedLength: UInt32, checksum: UInt64, payload: ArraySlice<UInt8>) {
        self.header = PageBatchHeader(round: round, encoding: encoding, runs: runs, uncompressedLength: uncompressedLength,
                                      checksum: checksum, payloadLength: UInt32(clamping: payload.count))
        self.payload = payload
    }
}

/// ZERO_RANGES and DISCARD_RANGES payload: a round and its page runs.
public struct RangeList: Hashable, Sendable {
    static let fixedSize = 16

    public var round: UInt64
    /// Ascending, non-overlapping, at least one.
    public var runs: [PageRun]

    public init(round: UInt64, runs: [PageRun]) {
        self.round = round
        self.runs = runs
    }

    func encode(into out: inout [UInt8], limits: WireLimits) throws(WireError) {
        guard round != 0 else { throw .invalidRound }
        guard !runs.isEmpty else { throw .emptyList }
        let rangeLimit = min(limits.maxRangesPerMessage, Int(UInt32.max))  // u32 count field
        guard runs.count <= rangeLimit else { throw .countTooLarge(count: runs.count, limit: rangeLimit) }
        _ = try RunChecker.check(runs, pageSize: limits.pageSize)
        out.reserveCapacity(out.count + RangeList.fixedSize + PageRun.size * runs.count)
        out.appendLE(round)
        out.appendLE(UInt32(runs.count))
        out.appendZeros(4)
        out.appendRuns(runs)
    }

    static func decode(_ r: inout ByteReader, limits: WireLimits) throws(WireError) -> RangeList {
        let round = try r.read(UInt64.self)
        let count = Int(try r.read(UInt32.self))
        try r.reserved(4)
        guard round != 0 else { throw .invalidRound }
        guard count > 0 else { throw .emptyList }
        guard count <= limits.maxRangesPerMessage else { throw .countTooLarge(count: count, limit: limits.maxRangesPerMessage) }
        var checker = RunChecker(pageSize: limits.pageSize)
        let runs = try r.runs(count, checker: &checker)
        try r.finish()
        return RangeList(round: round, runs: runs)
    }
}

/// What the sender sent in a round, as counted by the sender.
public struct RoundStats: Hashable, Sendable {
    /// Pages in PAGE_BATCH frames.
    public var pages: UInt64
    /// Pages in ZERO_RANGES frames.
    public var zeroPages: UInt64
    /// Pages in DISCARD_RANGES frames.
    public var discardedPages: UInt64
    /// PAGE_BATCH frames.
    public var batches: UInt64
    /// Bytes of all frames of the round (headers included) before this ROUND_END.
    public var wireBytes: UInt64

    public init(pages: UInt64 = 0, zeroPages: UInt64 = 0, discardedPages: UInt64 = 0, batches: UInt64 = 0, wireBytes: UInt64 = 0) {
        self.pages = pages
        self.zeroPages = zeroPages
        self.discardedPages = discardedPages
        self.batches = batches
        self.wireBytes = wireBytes
    }
}

/// ROUND_END, sender → receiver: closes a round; the final one carries the source memory digest.
public struct RoundEnd: Hashable, Sendable {
    static let fixedSize = 56

    public var round: UInt64
    public var stats: RoundStats
    /// Present iff this is the final round (the process is frozen): XXH3-128 of the source memory.
    public var finalDigest: WireDigest?

    public init(round: UInt64, stats: RoundStats, finalDigest: WireDigest? = nil) {
        self.round = round
        self.stats = stats
        self.finalDigest = finalDigest
    }

    public var isFinal: Bool { finalDigest != nil }

    func encode(into out: inout [UInt8]) throws(WireError) {
        guard round != 0 else { throw .invalidRound }
        out.appendLE(round)
        out.appendLE(stats.pages)
        out.appendLE(stats.zeroPages)
        out.appendLE(stats.discardedPages)
        out.appendLE(stats.batches)
        out.appendLE(stats.wireBytes)
        out.append(finalDigest == nil ? 0 : 1)
        out.appendZeros(7)
        finalDigest?.encode(into: &out)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> RoundEnd {
        let round = try r.read(UInt64.self)
        let stats = RoundStats(pages: try r.read(UInt64.self), zeroPages: try r.read(UInt64.self),
                               discardedPages: try r.read(UInt64.self), batches: try r.read(UInt64.self),
                               wireBytes: try r.read(UInt64.self))
        let flags = try r.read(UInt8.self)
        try r.reserved(7)
        guard round != 0 else { throw .invalidRound }
        guard flags & ~1 == 0 else { throw .invalidFlags(flags) }
        let digest = flags == 1 ? try WireDigest.decode(&r) : nil
        try r.finish()
        return RoundEnd(round: round, stats: stats, finalDigest: digest)
    }
}

/// How busy the receiver was while it took one commit chunk (LAYOUT → ROUND_END), each a
/// fraction of that wall time in thousandths (0...1000). Sent in a non-final ROUND_ACK
/// when capability `receiverLoad` was accepted (wire.md, ROUND_ACK).
public struct ReceiverLoad: Hashable, Sendable {
    /// The session thread (read, decrypt, frame decode): CPU time plus time spent
    /// runnable but waiting for a CPU (`/proc/thread-self/schedstat`), so a starved thread counts as busy.
    public var networkPermille: UInt16
    /// The storage stage thread (decompress, checksum, store): CPU time plus run-queue wait.
    public var storageCPUPermille: UInt16
    /// The storage stage's wall time at work (CPU, run-queue wait and blocking in writes):
    /// well above `storageCPUPermille` means the disk holds it back.
    public var storageBusyPermille: UInt16

    public init(networkPermille: UInt16, storageCPUPermille: UInt16, storageBusyPermille: UInt16) {
        self.networkPermille = networkPermille
        self.storageCPUPermille = storageCPUPermille
        self.storageBusyPermille = storageBusyPermille
    }

    /// Fractions clamped to 0...1.
    public init(network: Double, storageCPU: Double, storageBusy: Double) {
        func permille(_ f: Double) -> UInt16 { UInt16((min(max(f, 0), 1) * 1000).rounded()) }
        self.init(networkPermille: permille(network), storageCPUPermille: permille(storageCPU), storageBusyPermille: permille(storageBusy))
    }

    public var network: Double { Double(networkPermille) / 1000 }
    public var storageCPU: Double { Double(storageCPUPermille) / 1000 }
    public var storageBusy: Double { Double(storageBusyPermille) / 1000 }
}

/// ROUND_ACK, receiver → sender: the round is durably committed; the final one carries the image digest.
public struct RoundAck: Hashable, Sendable {
    static let fixedSize = 16

    public var round: UInt64
    /// Present iff the acknowledged round was final: XXH3-128 of the committed image.
    public var imageDigest: WireDigest?
    /// The receiver's load during the chunk (flag bit 1); only in non-final acks, only
    /// when `receiverLoad` was accepted.
    public var load: ReceiverLoad?

    public init(round: UInt64, imageDigest: WireDigest? = nil, load: ReceiverLoad? = nil) {
        self.round = round
        self.imageDigest = imageDigest
        self.load = load
    }

    func encode(into out: inout [UInt8]) throws(WireError) {
        guard round != 0 else { throw .invalidRound }
        precondition(load == nil || imageDigest == nil, "a final ROUND_ACK carries no load")
        out.appendLE(round)
        out.append((imageDigest == nil ? 0 : 1) | (load == nil ? 0 : 2))
        out.appendZeros(1)
        if let load {
            for v in [load.networkPermille, load.storageCPUPermille, load.storageBusyPermille] {
                precondition(v <= 1000, "ROUND_ACK load over 1000 thousandths")
                out.appendLE(v)
            }
        } else {
            out.appendZeros(6)
        }
        imageDigest?.encode(into: &out)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> RoundAck {
        let round = try r.read(UInt64.self)
        let flags = try r.read(UInt8.self)
        try r.reserved(1)
        guard round != 0 else { throw .invalidRound }
        guard flags & ~3 == 0, flags != 3 else { throw .invalidFlags(flags) }
        var load: ReceiverLoad?
        if flags & 2 != 0 {
            let network = try r.read(UInt16.self), storageCPU = try r.read(UInt16.self), storageBusy = try r.read(UInt16.self)
            for v in [network, storageCPU, storageBusy] where v > 1000 { throw .loadOutOfRange(v) }
            load = ReceiverLoad(networkPermille: network, storageCPUPermille: storageCPU, storageBusyPermille: storageBusy)
        } else {
            try r.reserved(6)
        }
        let digest = flags == 1 ? try WireDigest.decode(&r) : nil
        try r.finish()
        return RoundAck(round: round, imageDigest: digest, load: load)
    }
}

/// ERROR, either direction: the sender of it gives up on the open round and closes.
public struct ErrorMessage: Hashable, Sendable {
    static let fixedSize = 4

    public var code: ErrorCode
    /// One line of UTF-8, at most 1024 bytes.
    public var message: String

    public init(code: ErrorCode, message: String) {
        self.code = code
        self.message = message
    }

    func encode(into out: inout [UInt8], limits: WireLimits) throws(WireError) {
        let n = message.utf8.count
        let limit = min(limits.maxErrorMessageLength, Int(UInt16.max))  // u16 length field
        guard n <= limit else { throw .nameTooLong(length: n, limit: limit) }
        out.appendLE(code.rawValue)
        out.appendLE(UInt16(n))
        out.append(contentsOf: message.utf8)
    }

    static func decode(_ r: inout ByteReader, limits: WireLimits) throws(WireError) -> ErrorMessage {
        let code = try r.read(UInt16.self)
        let n = Int(try r.read(UInt16.self))
        guard n <= limits.maxErrorMessageLength else { throw .nameTooLong(length: n, limit: limits.maxErrorMessageLength) }
        let message = try r.string(n)
        try r.finish()
        return ErrorMessage(code: ErrorCode(rawValue: code), message: message)
    }
}

/// KEEPALIVE, either direction; a request is answered with a reply carrying the same nonce.
public struct Keepalive: Hashable, Sendable {
    static let size = 12

    public var nonce: UInt64
    public var isReply: Bool

    public init(nonce: UInt64, isReply: Bool = false) {
        self.nonce = nonce
        self.isReply = isReply
    }

    func encode(into out: inout [UInt8]) {
        out.appendLE(nonce)
        out.append(isReply ? 1 : 0)
        out.appendZeros(3)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> Keepalive {
        let nonce = try r.read(UInt64.self)
        let flags = try r.read(UInt8.self)
        try r.reserved(3)
        try r.finish()
        guard flags & ~1 == 0 else { throw .invalidFlags(flags) }
        return Keepalive(nonce: nonce, isReply: flags == 1)
    }
}

/// CLOSE, either direction: the last frame a side sends.
public struct Close: Hashable, Sendable {
    static let size = 4

    public var reason: CloseReason

    public init(reason: CloseReason) { self.reason = reason }

    func encode(into out: inout [UInt8]) {
        out.appendLE(reason.rawValue)
        out.appendZeros(2)
    }

    static func decode(_ r: inout ByteReader) throws(WireError) -> Close {
        let reason = try r.read(UInt16.self)
        try r.reserved(2)
        try r.finish()
        return Close(reason: CloseReason(rawValue: reason))
    }
}

/// Every message of the protocol.
public enum Message: Hashable, Sendable {
    case hello(Hello)
    case welcome(Welcome)
    case layout(Layout)
    case pageBatch(PageBatch)
    case zeroRanges(RangeList)
    case discardRanges(RangeList)
    case roundEnd(RoundEnd)
    case roundAck(RoundAck)
    case error(ErrorMessage)
    case keepalive(Keepalive)
    case close(Close)
    case restoreFile(RestoreFile)
    case restoreBegin(RestoreBegin)
    case restoreDone(RestoreDone)

    public var frameType: FrameType {
        switch self {
        case .hello: .hello
        case .welcome: .welcome
        case .layout: .layout
        case .pageBatch: .pageBatch
        case .zeroRanges: .zeroRanges
        case .discardRanges: .discardRanges
        case .roundEnd: .roundEnd
        case .roundAck: .roundAck
        case .error: .error
        case .keepalive: .keepalive
        case .close: .close
        case .restoreFile: .restoreFile
        case .restoreBegin: .restoreBegin
        case .restoreDone: .restoreDone
        }
    }

    /// Appends the payload (no frame header). Validates first; on error nothing is appended.
    public func encodePayload(into out: inout [UInt8], limits: WireLimits = .default) throws(WireError) {
        let mark = out.count
        do throws(WireError) {
            try encodeFields(into: &out, limits: limits)
        } catch {
            out.removeSubrange(mark...)
            throw error
        }
    }

    /// Appends a complete frame: header (with the payload length) + payload. On error nothing is appended.
    public func encodeFrame(sequence: UInt32, into out: inout [UInt8], limits: WireLimits = .default) throws(WireError) {
        if case let .pageBatch(batch) = self {
            guard batch.payload.count == Int(batch.header.payloadLength) else {
                throw .lengthMismatch(expected: Int(batch.header.payloadLength), actual: batch.payload.count)
            }
            try batch.header.encodeFrame(sequence: sequence, into: &out, limits: limits)
            out.append(contentsOf: batch.payload)
            return
        }
        let mark = out.count
        FrameHeader(type: frameType, length: 0, sequence: sequence).encode(into: &out)
        do throws(WireError) {
            try encodeFields(into: &out, limits: limits)
            let length = out.count - mark - FrameHeader.size
            let limit = frameType.maxPayloadLength(limits)
            guard length <= Int(limit) else { throw WireError.payloadTooLarge(length: UInt32(clamping: length), limit: limit) }
            out.storeLE(UInt32(length), at: mark + 4)
        } catch {
            out.removeSubrange(mark...)
            throw error
        }
    }

    private func encodeFields(into out: inout [UInt8], limits: WireLimits) throws(WireError) {
        switch self {
        case let .hello(m): try m.encode(into: &out)
        case let .welcome(m): try m.encode(into: &out)
        case let .layout(m): try m.encode(into: &out, limits: limits)
        case let .pageBatch(m):
            try m.header.validate(limits: limits)
            guard m.payload.count == Int(m.header.payloadLength) else {
                throw .lengthMismatch(expected: Int(m.header.payloadLength), actual: m.payload.count)
            }
            m.header.encodeFields(into: &out)
            out.append(contentsOf: m.payload)
        case let .zeroRanges(m), let .discardRanges(m): try m.encode(into: &out, limits: limits)
        case let .roundEnd(m): try m.encode(into: &out)
        case let .roundAck(m): try m.encode(into: &out)
        case let .error(m): try m.encode(into: &out, limits: limits)
        case let .keepalive(m): m.encode(into: &out)
        case let .close(m): m.encode(into: &out)
        case let .restoreFile(m): try m.encode(into: &out)
        case let .restoreBegin(m): try m.encode(into: &out)
        case let .restoreDone(m): try m.encode(into: &out)
        }
    }

    /// Decodes a frame payload. A PAGE_BATCH's page bytes are a slice of `payload` (no copy).
    public static func decode(type: FrameType, payload: ArraySlice<UInt8>, limits: WireLimits = .default) throws(WireError) -> Message {
        var (message, pageBytes) = try payload.withBytes { (raw) throws(WireError) in
            try decodeBody(type: type, raw: raw, limits: limits)
        }
        if let pageBytes, case var .pageBatch(batch) = message {
            let base = payload.startIndex
            batch.payload = payload[(base + pageBytes.lowerBound)..<(base + pageBytes.upperBound)]
            message = .pageBatch(batch)
        }
        return message
    }

    /// Decodes a frame payload from raw memory; a PAGE_BATCH's page bytes are copied out.
    public static func decode(type: FrameType, payload: UnsafeRawBufferPointer, limits: WireLimits = .default) throws(WireError) -> Message {
        var (message, pageBytes) = try decodeBody(type: type, raw: payload, limits: limits)
        if let pageBytes, case var .pageBatch(batch) = message {
            batch.payload = ArraySlice(UnsafeRawBufferPointer(rebasing: payload[pageBytes]))
            message = .pageBatch(batch)
        }
        return message
    }

    /// Decodes one complete frame (header + payload) at the start of `bytes`; returns it and the bytes it used.
    /// Fewer bytes than the frame needs gives `truncated`.
    public static func decodeFrame(_ bytes: ArraySlice<UInt8>, limits: WireLimits = .default) throws(WireError) -> (header: FrameHeader, message: Message, byteCount: Int) {
        let h = try bytes.withBytes { (raw) throws(WireError) in try FrameHeader.decode(raw, limits: limits) }
        let total = FrameHeader.size + Int(h.length)
        guard bytes.count >= total else { throw .truncated(needed: total, available: bytes.count) }
        let start = bytes.startIndex + FrameHeader.size
        let message = try decode(type: h.type, payload: bytes[start..<(bytes.startIndex + total)], limits: limits)
        return (h, message, total)
    }

    private static func decodeBody(type: FrameType, raw: UnsafeRawBufferPointer, limits: WireLimits) throws(WireError) -> (Message, Range<Int>?) {
        let limit = type.maxPayloadLength(limits)
        guard raw.count <= Int(limit) else { throw .payloadTooLarge(length: UInt32(clamping: raw.count), limit: limit) }
        var r = ByteReader(raw)
        switch type {
        case .hello: return (.hello(try Hello.decode(&r)), nil)
        case .welcome: return (.welcome(try Welcome.decode(&r)), nil)
        case .layout: return (.layout(try Layout.decode(&r, limits: limits)), nil)
        case .pageBatch:
            let header = try PageBatchHeader.decode(&r, limits: limits)
            return (.pageBatch(PageBatch(header: header, payload: [])), r.offset..<raw.count)
        case .zeroRanges: return (.zeroRanges(try RangeList.decode(&r, limits: limits)), nil)
        case .discardRanges: return (.discardRanges(try RangeList.decode(&r, limits: limits)), nil)
        case .roundEnd: return (.roundEnd(try RoundEnd.decode(&r)), nil)
        case .roundAck: return (.roundAck(try RoundAck.decode(&r)), nil)
        case .error: return (.error(try ErrorMessage.decode(&r, limits: limits)), nil)
        case .keepalive: return (.keepalive(try Keepalive.decode(&r)), nil)
        case .close: return (.close(try Close.decode(&r)), nil)
        case .restoreFile: return (.restoreFile(try RestoreFile.decode(&r)), nil)
        case .restoreBegin: return (.restoreBegin(try RestoreBegin.decode(&r)), nil)
        case .restoreDone: return (.restoreDone(try RestoreDone.decode(&r)), nil)
        }
    }
}

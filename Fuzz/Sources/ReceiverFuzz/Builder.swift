import MemhaulCompression
import MemhaulDigest
import MemhaulWire

/// Reads fields from the fuzz input; past its end every field reads as zero.
struct FieldReader {
    let bytes: [UInt8]
    var position: Int

    var done: Bool { position >= bytes.count }

    mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }
    mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    mutating func u64() -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(u8()) << (8 * UInt64(i)) }
        return v
    }
    mutating func take(_ n: Int) -> [UInt8] {
        let end = min(bytes.count, position + n)
        defer { position = max(position, end) }
        return position < end ? Array(bytes[position..<end]) : []
    }
}

/// The structure-aware input format: after the mode byte, a list of records, each an opcode
/// byte and its fields, turned into real frames by the real encoder (sequence numbers, lengths,
/// PAGE_BATCH checksums and zstd payloads right), so mutations get past the codec and the
/// checksums into the session and the image store. Every record can also go wrong on purpose
/// (flag bits: wrong round, wild addresses, bad checksum, wrong counts, mangled bytes).
///
/// The builder keeps an optimistic model (every frame accepted) to aim runs inside the
/// declared layout and to compute the right counts and the final digest.
enum Op: UInt8, CaseIterable {
    case hello = 0, layout, pageBatch, zeroRanges, discardRanges, roundEnd, keepalive, error, close
    case unexpected, rawFrame, garbage, mangle, newConnection, goodRound, truncate
}

struct StreamBuilder {
    static let base: UInt64 = 0x7f00_0000_0000
    static let ids = ["fz-a", "fz-b"]
    static let maxRecords = 400

    private var r: FieldReader
    private(set) var connections: [[UInt8]] = []
    private var out: [UInt8] = []
    private var sequence: UInt32 = 0
    private var lastFrameStart = 0

    // Optimistic sender state.
    private var models: [String: ImageModel] = [:]
    private var id = ids[0]
    private var round: UInt64 = 1
    private var layout: [RegionDescriptor] = [RegionDescriptor(start: base, end: base + 64 * 4096, protection: [.read, .write])]
    private var declared: [RegionDescriptor] = []
    private var openModel: OpenRoundModel?
    private var counts = RoundStats()
    /// Final digests the builder computes per input (each hashes up to 16 MiB: a record list of
    /// final rounds must not turn into a libFuzzer timeout of the harness itself).
    private var digestBudget = 4
    /// The digest form the current connection's HELLO asked for (flag 0x40: `digestV2`).
    private var digestVersion: DigestVersion = .v1
    private let compressor = ZstdCompressor(level: 1)
    private var scratch = [UInt8](repeating: 0, count: ZstdCompressor.bound(1024 * 4096))

    init(_ input: [UInt8], from position: Int) {
        r = FieldReader(bytes: input, position: position)
    }

    /// The byte streams of the connections, one after another against one receiver.
    mutating func build() -> [[UInt8]] {
        startConnection()
        var records = 0
        while !r.done && records < Self.maxRecords {
            records += 1
            let op = Op(rawValue: r.u8() % UInt8(Op.allCases.count))!
            record(op)
        }
        connections.append(out)
        return connections
    }

    private mutating func startConnection() {
        out = []
        Preamble.encode(into: &out)
        sequence = 0
        lastFrameStart = 0
        openModel = nil
        declared = []
        counts = RoundStats()
    }

    private mutating func emit(_ message: Message) {
        let mark = out.count
        do {
            try message.encodeFrame(sequence: sequence, into: &out)
            sequence &+= 1
            lastFrameStart = mark
        } catch {
            // The encoder refuses what a decoder would refuse: send the payload anyway, by hand.
            var payload: [UInt8] = []
            _ = try? message.encodePayload(into: &payload)
            rawFrame(type: message.frameType.rawValue, payload: payload)
        }
    }

    private mutating func rawFrame(type: UInt8, payload: [UInt8], sequence seq: UInt32? = nil) {
        lastFrameStart = out.count
        out.append(type)
        out.append(contentsOf: [0, 0, 0])
        out.append(contentsOf: withUnsafeBytes(of: UInt32(payload.count).littleEndian, Array.init))
        out.append(contentsOf: withUnsafeBytes(of: (seq ?? sequence).littleEndian, Array.init))
        out.append(contentsOf: payload)
        sequence &+= 1
    }

    private mutating func record(_ op: Op) {
        switch op {
        case .hello: hello()
        case .layout: declareLayout()
        case .pageBatch: pageBatch()
        case .zeroRanges, .discardRanges: ranges(zero: op == .zeroRanges)
        case .roundEnd: roundEnd()
        case .keepalive:
            let f = r.u8()
            emit(.keepalive(Keepalive(nonce: r.u64(), isReply: f & 1 != 0)))
        case .error:
            let code = r.u16()
            let text = String(decoding: r.take(Int(r.u8() % 32)).map { 0x20 + $0 % 0x5f }, as: UTF8.self)
            emit(.error(ErrorMessage(code: ErrorCode(rawValue: code), message: text)))
        case .close:
            emit(.close(Close(reason: CloseReason(rawValue: r.u16()))))
        case .unexpected:
            switch r.u8() % 3 {
            case 0: emit(.welcome(Welcome(capabilities: [.zstd], lastCommittedRound: round)))
            case 1: emit(.roundAck(RoundAck(round: round)))
            default: emit(.hello(Hello(capabilities: .v1_0, migrationID: id, senderName: "again")))
            }
        case .rawFrame:
            let type = r.u8() % 16
            let f = r.u8()
            let payload = r.take(Int(r.u8()))
            rawFrame(type: type, payload: payload, sequence: f & 1 != 0 ? UInt32(r.u8()) : nil)
        case .garbage:
            out += r.take(Int(r.u8()))
        case .mangle:
            let at = Int(r.u16())
            let x = r.u8() | 1
            let span = out.count - lastFrameStart
            if span > 0 { out[lastFrameStart + at % span] ^= x }
        case .newConnection:
            connections.append(out)
            startConnection()
        case .goodRound:
            goodRound()
        case .truncate:
            out.removeLast(min(out.count, Int(r.u8() % 64) + 1))
        }
    }

    private mutating func hello() {
        let f = r.u8()
        let rawResume = r.u8()
        id = Self.ids[Int(f >> 1) & 1]
        let committed = models[id]?.committedRound
        var resume: UInt64? = nil
        if f & 1 != 0 { resume = f & 0x10 != 0 ? UInt64(rawResume) : committed ?? 0 }
        let pageSize: UInt32 = f & 0x04 != 0 ? 8192 : 4096
        var caps: Capabilities = f & 0x08 != 0 ? [] : Capabilities.v1_0.union(.pageDelta)
        if f & 0x40 != 0 { caps.insert(.digestV2) }
        if f & 0x80 != 0 { caps.insert(.ledgerDigest) }
        digestVersion = f & 0x80 != 0 ? .v3 : f & 0x40 != 0 ? .v2 : .v1
        let version = f & 0x20 != 0 ? WireVersion(major: 2, minor: 0) : .current  // refused: bad-hello
        emit(.hello(Hello(version: version, capabilities: caps, pageSize: pageSize, migrationID: id, senderName: "fuzz", resumeFromRound: resume)))
        if models[id] == nil { models[id] = ImageModel() }
        round = (models[id]?.committedRound ?? 0) + 1
    }

    private mutating func declareLayout() {
        let f = r.u8()
        let n = Int(r.u8() % 4) + 1
        let number = f & 0x02 != 0 ? r.u64() : round
        var regions: [RegionDescriptor] = []
        var cursor = declared.last?.end ?? Self.base  // continued frames go on after the last region
        for _ in 0..<n {
            if f & 0x04 != 0 {
                let start = r.u64() & ~0xfff, end = r.u64() & ~0xfff
                regions.append(RegionDescriptor(start: start, end: end, protection: Protection(rawValue: r.u8() & 7)))
            } else {
                let start = cursor &+ UInt64(r.u8() % 8) &* 4096  // wraps after a wild region: the receiver refuses it
                let end = start &+ (UInt64(r.u8() % 16) + 1) &* 4096
                regions.append(RegionDescriptor(start: start, end: end, protection: Protection(rawValue: r.u8() & 7),
                                                flags: [], name: regions.isEmpty ? "[heap]" : ""))
                cursor = end
            }
        }
        let continued = f & 0x01 != 0
        emit(.layout(Layout(round: number, continued: continued, regions: regions)))
        declared += regions
        if !continued {
            layout = declared.sorted { $0.start < $1.start }
            declared = []
            openModel = OpenRoundModel(regions: layout.map { .init(start: $0.start, end: $0.end) })
            counts = RoundStats()
        }
    }

    /// Ascending, disjoint page runs inside the current layout (or wild ones).
    private mutating func runs(wild: Bool, maxPages: Int) -> [PageRun] {
        let n = Int(r.u8() % 4) + 1
        var runs: [PageRun] = []
        if wild {
            for _ in 0..<n { runs.append(PageRun(start: r.u64() & ~0xfff, pageCount: UInt32(r.u16() % 64))) }
            return runs
        }
        guard !layout.isEmpty else { return [] }
        for _ in 0..<n {
            let region = layout[Int(r.u8()) % layout.count]
            let pages = (region.end &- region.start) / 4096
            let off = UInt64(r.u8()) % max(pages, 1)
            let count = min(UInt64(r.u8() % 8) + 1, pages &- off)
            if count > 0 { runs.append(PageRun(start: region.start &+ off &* 4096, pageCount: UInt32(clamping: count))) }
        }
        runs.sort()
        var disjoint: [PageRun] = []
        var total = 0
        for run in runs {
            if let last = disjoint.last, run.start < last.end(pageSize: 4096) ?? .max { continue }
            if total + Int(run.pageCount) > maxPages { break }
            total += Int(run.pageCount)
            disjoint.append(run)
        }
        return disjoint
    }

    private mutating func pageBatch() {
        let f = r.u8()
        let number = f & 0x04 != 0 ? r.u64() : round
        let runs = runs(wild: f & 0x08 != 0, maxPages: 64)
        let pages = runs.reduce(0) { $0 + Int($1.pageCount) }
        let kind = r.u8()
        let fill = r.u8()
        let pattern = r.take(Int(kind >> 4))
        var plain = [UInt8](repeating: 0, count: min(pages, 1024) * 4096)
        if kind % 4 != 0 {
            for p in 0..<(plain.count / 4096) {
                for i in stride(from: p * 4096, to: (p + 1) * 4096, by: 1) {
                    plain[i] = pattern.isEmpty ? fill &+ UInt8(truncatingIfNeeded: p) : pattern[i % pattern.count] &+ UInt8(truncatingIfNeeded: p)
                }
                if kind % 4 == 3 && p % 2 == 1 { for i in (p * 4096)..<((p + 1) * 4096) { plain[i] = 0 } }
            }
        }
        var checksum = plain.withUnsafeBytes { PageChecksum.xxh3_64($0) }
        if f & 0x02 != 0 { checksum ^= 1 << (UInt64(fill) % 64) }
        var encoding = PageEncoding.raw
        var payload = plain[...]
        if f & 0x10 != 0 {
            // Delta against what the builder believes is committed (nil base: sent whole).
            let model = models[id] ?? ImageModel()
            var pages: [[UInt8]] = []
            var bases: [[UInt8]?] = []
            var offset = 0
            for run in runs {
                for p in 0..<UInt64(run.pageCount) where offset + 4096 <= plain.count {
                    let address = run.start &+ p &* 4096
                    pages.append(Array(plain[offset..<(offset + 4096)]))
                    bases.append(model.contains(address) ? model.pages[address] ?? [UInt8](repeating: 0, count: 4096) : nil)
                    offset += 4096
                }
            }
            if pages.count * 4096 == plain.count, let d = DeltaBatch.encode(pages: pages, bases: bases, limit: plain.count) {
                encoding = .delta
                payload = d.payload[...]
            }
        } else if f & 0x01 != 0 {
            let n = plain.withUnsafeBytes { src in
                scratch.withUnsafeMutableBytes { dst in try? compressor.compress(src, into: dst) }
            }
            if let n, n <= plain.count, n > 0 {
                encoding = .zstd
                payload = scratch[0..<n]
            }
        }
        emit(.pageBatch(PageBatch(round: number, encoding: encoding, runs: runs, uncompressedLength: UInt32(plain.count),
                                  checksum: checksum, payload: payload)))
        if number == round, f & 0x02 == 0 {
            counts.pages += UInt64(pages)
            counts.batches += 1
            var offset = 0
            for run in runs {
                for p in 0..<Int(run.pageCount) where offset + 4096 <= plain.count {
                    openModel?.ops.append(.write(run.start &+ UInt64(p) &* 4096, Array(plain[offset..<(offset + 4096)])))
                    offset += 4096
                }
            }
        }
    }

    private mutating func ranges(zero: Bool) {
        let f = r.u8()
        let number = f & 0x04 != 0 ? r.u64() : round
        let runs = runs(wild: f & 0x08 != 0, maxPages: .max)
        let list = RangeList(round: number, runs: runs)
        emit(zero ? .zeroRanges(list) : .discardRanges(list))
        if number == round {
            let pages = runs.reduce(UInt64(0)) { $0 + UInt64($1.pageCount) }
            if zero { counts.zeroPages += pages } else { counts.discardedPages += pages }
            for run in runs { openModel?.ops.append(.clear(run.start, run.start &+ UInt64(run.pageCount) &* 4096)) }
        }
    }

    private mutating func roundEnd() {
        let f = r.u8()
        let number = f & 0x04 != 0 ? r.u64() : round
        var stats = counts
        if f & 0x02 != 0 {
            stats = RoundStats(pages: UInt64(r.u8()), zeroPages: UInt64(r.u8()), discardedPages: UInt64(r.u8()), batches: UInt64(r.u8()))
        }
        stats.wireBytes = UInt64(out.count)
        var digest: WireDigest?
        var model = models[id] ?? ImageModel()
        if let open = openModel { model.commit(open, number: round, final: f & 0x01 != 0) }
        if f & 0x01 != 0 {
            let d = budgetedDigest(model) ?? MemoryDigest(high: 0, low: 0)
            digest = WireDigest(high: d.high, low: d.low)
            if f & 0x08 != 0 { digest!.low ^= 1 }
        }
        emit(.roundEnd(RoundEnd(round: number, stats: stats, finalDigest: digest)))
        if openModel != nil { models[id] = model }
        openModel = nil
        round += 1
    }

    private mutating func budgetedDigest(_ model: ImageModel) -> MemoryDigest? {
        guard digestBudget > 0 else { return nil }
        digestBudget -= 1
        return model.digest(digestVersion)
    }

    /// A whole well-formed round (same layout, a few batches), to get deep quickly.
    private mutating func goodRound() {
        let f = r.u8()
        emit(.layout(Layout(round: round, regions: layout)))
        openModel = OpenRoundModel(regions: layout.map { .init(start: $0.start, end: $0.end) })
        counts = RoundStats()
        for _ in 0..<(Int(f % 4)) {
            let runs = runs(wild: false, maxPages: 16)
            guard !runs.isEmpty else { continue }
            let pages = runs.reduce(0) { $0 + Int($1.pageCount) }
            let fill = r.u8()
            var plain = [UInt8](repeating: fill, count: pages * 4096)
            for p in 0..<pages { plain[p * 4096] = UInt8(truncatingIfNeeded: p) }
            let checksum = plain.withUnsafeBytes { PageChecksum.xxh3_64($0) }
            emit(.pageBatch(PageBatch(round: round, encoding: .raw, runs: runs, uncompressedLength: UInt32(plain.count),
                                      checksum: checksum, payload: plain[...])))
            counts.pages += UInt64(pages)
            counts.batches += 1
            var offset = 0
            for run in runs {
                for p in 0..<Int(run.pageCount) {
                    openModel!.ops.append(.write(run.start &+ UInt64(p) &* 4096, Array(plain[offset..<(offset + 4096)])))
                    offset += 4096
                }
            }
        }
        let final = f & 0x80 != 0
        var model = models[id] ?? ImageModel()
        model.commit(openModel!, number: round, final: final)
        var digest: WireDigest?
        if final {
            // The verification round: no pages, the digest of what is committed.
            if let d = budgetedDigest(model) { digest = WireDigest(high: d.high, low: d.low) }
        }
        emit(.roundEnd(RoundEnd(round: round, stats: counts, finalDigest: nil)))
        models[id] = model
        openModel = nil
        round += 1
        if final, let digest {
            emit(.layout(Layout(round: round, regions: layout)))
            emit(.roundEnd(RoundEnd(round: round, stats: RoundStats(), finalDigest: digest)))
            round += 1
        }
    }
}

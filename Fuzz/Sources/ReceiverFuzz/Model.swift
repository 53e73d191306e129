import MemhaulCompression
import MemhaulDigest
import MemhaulWire

/// What an image must hold after the rounds a receiver acknowledged, by the rules of
/// Protocol/image.md, computed without the image store: the harness's oracle.
///
/// A round's layout replaces the committed one; addresses in both keep their bytes, new
/// addresses read as zeros; the round's writes, zero and discard runs then apply in order.
struct ImageModel {
    struct Region: Equatable { var start: UInt64; var end: UInt64 }

    var regions: [Region] = []
    /// Page address -> content of pages written (others read as zeros).
    var pages: [UInt64: [UInt8]] = [:]
    var committedRound: UInt64?
    var complete = false

    /// Largest layout whose content the harness compares byte for byte (digests are linear in it).
    static let maxCheckedLayoutBytes: UInt64 = 16 << 20

    /// Total layout size, saturating (a wrapping sum let huge wild layouts look small).
    var layoutBytes: UInt64 {
        var total: UInt64 = 0
        for r in regions {
            let (sum, overflow) = total.addingReportingOverflow(r.end &- r.start)
            if overflow { return .max }
            total = sum
        }
        return total
    }

    mutating func commit(_ round: OpenRoundModel, number: UInt64, final: Bool) {
        regions = round.regions
        pages = pages.filter { page in contains(page.key) }
        for op in round.ops {
            switch op {
            case .write(let address, let bytes):
                pages[address] = bytes
            case .clear(let start, let end):
                guard start < end else { continue }  // the builder's wild runs (the decoder refuses these)
                if (end - start) / 4096 < UInt64(pages.count) {
                    var a = start
                    while a < end { pages[a] = nil; a += 4096 }
                } else {
                    pages = pages.filter { !($0.key >= start && $0.key < end) }
                }
            }
        }
        pages = pages.filter { page in contains(page.key) }
        committedRound = number
        if final { complete = true }
    }

    func contains(_ address: UInt64) -> Bool {
        regions.contains { address >= $0.start && address < $0.end }
    }

    /// The memory digest (ARCHITECTURE.md) of the modelled image, nil when the layout is
    /// too large to hash here (v1 only: v2 costs the written pages, whatever the layout).
    func digest(_ version: DigestVersion = .v1) -> MemoryDigest? {
        // Regions end at or below 2^57 (the store refuses others), so lengths fit an Int.
        guard regions.allSatisfy({ $0.start < $0.end && $0.end <= 1 << 57 }),
              version != .v1 || layoutBytes <= Self.maxCheckedLayoutBytes else { return nil }
        let d = MemoryDigester(version: version)
        let sorted = pages.keys.sorted()
        var i = 0
        for r in regions {
            d.beginRegion(start: r.start, end: r.end)
            var cursor = r.start
            while i < sorted.count && sorted[i] < r.start { i += 1 }
            while i < sorted.count && sorted[i] < r.end {
                let a = sorted[i]
                d.updateZeros(count: Int(a - cursor))
                pages[a]!.withUnsafeBytes { d.update($0) }
                cursor = a + 4096
                i += 1
            }
            d.updateZeros(count: Int(r.end - cursor))
        }
        return d.finalize()
    }
}

/// A round being received: its layout and what it wrote, in order.
struct OpenRoundModel {
    enum Op { case write(UInt64, [UInt8]); case clear(UInt64, UInt64) }
    var regions: [ImageModel.Region]
    var ops: [Op] = []
}

/// Follows one connection's sender frames like a receiver would, without an image store.
/// `process` returns false when the receiver must have refused the frame (so nothing after
/// it can be acknowledged); it never decides more than that.
struct ConnectionModel {
    var migrationID: String?
    var helloResume: UInt64??  // .some(nil): fresh HELLO
    /// The verification round's digest form: v2 when HELLO asked for it (the receiver accepts it).
    var digestVersion: DigestVersion = .v1
    private var pending: [RegionDescriptor] = []
    private(set) var open: OpenRoundModel?
    private(set) var openRound: UInt64?
    private let decoder = BatchDecoder()
    private let buffer = PageBuffer.shared
    /// HELLO offered page-delta (the receiver accepts it whenever offered).
    private var deltaAgreed = false
    /// The image as this connection's rounds commit it, from what the image held before the
    /// connection (set by the harness after HELLO): the base of delta batches.
    var shadow = ImageModel()

    /// Rounds whose ROUND_END came through, in order, with what they committed.
    private(set) var roundEnds: [(round: UInt64, model: OpenRoundModel, final: Bool, digest: WireDigest?)] = []

    mutating func process(_ message: Message) -> Bool {
        switch message {
        case .hello(let h):
            guard migrationID == nil else { return false }
            migrationID = h.migrationID
            helloResume = .some(h.resumeFromRound)
            digestVersion = h.capabilities.contains(.ledgerDigest) ? .v3 : h.capabilities.contains(.digestV2) ? .v2 : .v1
            deltaAgreed = h.capabilities.contains(.pageDelta)
        case .layout(let l):
            guard migrationID != nil, openRound == nil else { return false }
            pending += l.regions
            if !l.continued {
                let sorted = pending.sorted { $0.start < $1.start }
                open = OpenRoundModel(regions: sorted.map { .init(start: $0.start, end: $0.end) })
                openRound = l.round
                pending = []
            }
        case .pageBatch(let b):
            guard openRound == b.header.round else { return false }
            let n = Int(b.header.uncompressedLength)
            guard n <= buffer.bytes.count else { return false }
            let decoded: Int?
            if b.header.encoding == .delta {
                guard deltaAgreed else { return false }
                let addresses = b.header.runs.flatMap { run in (0..<UInt64(run.pageCount)).map { run.start + $0 * 4096 } }
                decoded = b.payload.withUnsafeBytes { payload in
                    (try? DeltaBatch.decode(payload, pageCount: addresses.count, pageSize: 4096, into: buffer.bytes) { i, page in
                        guard shadow.contains(addresses[i]) else { return false }
                        if let bytes = shadow.pages[addresses[i]] { bytes.withUnsafeBytes { page.copyMemory(from: $0) } } else { _ = page.initializeMemory(as: UInt8.self, repeating: 0) }
                        return true
                    }).map { _ in n }
                }
            } else {
                decoded = b.payload.withUnsafeBytes { payload in
                    try? decoder.decode(b.header.encoding == .zstd ? .zstd : .raw, payload: payload, into: buffer.bytes, expectedSize: n)
                }
            }
            guard decoded == n else { return false }
            let plain = UnsafeRawBufferPointer(start: buffer.bytes.baseAddress, count: n)
            guard PageChecksum.xxh3_64(plain) == b.header.checksum else { return false }
            var offset = 0
            for run in b.header.runs {
                for p in 0..<Int(run.pageCount) {
                    open!.ops.append(.write(run.start + UInt64(p) * 4096, Array(plain[offset..<(offset + 4096)])))
                    offset += 4096
                }
            }
        case .zeroRanges(let list), .discardRanges(let list):
            guard openRound == list.round else { return false }
            for run in list.runs { open!.ops.append(.clear(run.start, run.start + UInt64(run.pageCount) * 4096)) }
        case .roundEnd(let e):
            guard openRound == e.round else { return false }
            roundEnds.append((e.round, open!, e.finalDigest != nil, e.finalDigest))
            shadow.commit(open!, number: e.round, final: e.finalDigest != nil)
            open = nil
            openRound = nil
        case .keepalive:
            break
        case .restoreFile, .restoreBegin:
            return false  // the harness's receiver does not restore: unexpected-message ends the session
        case .error, .close, .welcome, .roundAck, .restoreDone:
            return false  // the session ends here (CLOSE included: nothing after it is read)
        }
        return true
    }
}

/// One 4 MiB decode buffer for the whole process (the harness is single-threaded).
final class PageBuffer: @unchecked Sendable {  // used by the single fuzzing thread only
    static let shared = PageBuffer()
    let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024 * 4096, alignment: 4096)
}

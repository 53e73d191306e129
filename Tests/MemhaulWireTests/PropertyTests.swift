import MemhaulSystem
import MemhaulWire
import Testing

/// Random valid messages (under default limits).
struct MessageGenerator {
    var rng: SplitMix64
    /// Keeps batches small so thousands of iterations stay fast.
    var maxBatchPages = 8

    init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &rng) }
    mutating func u64() -> UInt64 { rng.next() }
    mutating func bool() -> Bool { rng.next() & 1 == 0 }
    mutating func round() -> UInt64 { bool() ? UInt64(int(1...100)) : UInt64.random(in: 1...UInt64.max, using: &rng) }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) } }

    mutating func string(maxScalars: Int) -> String {
        let pool: [Character] = ["a", "Z", "0", "/", " ", "[", "]", "é", "ß", "→", "日", "🙂", "-", "."]
        return String((0..<int(0...maxScalars)).map { _ in pool[int(0...(pool.count - 1))] })
    }

    /// A valid id: `.` and `..` are not (MigrationID), so it starts with a letter.
    mutating func migrationID() -> String {
        let pool = Array("abcXYZ019._-".utf8)
        return "m" + String(decoding: (0..<int(0...63)).map { _ in pool[int(0...(pool.count - 1))] }, as: UTF8.self)
    }

    /// Sorted, non-overlapping page runs within the user address space.
    mutating func runs(count: Int, maxPages: Int) -> [PageRun] {
        var runs: [PageRun] = []
        var next: UInt64 = UInt64(int(0...1000)) << 12
        var budget = maxPages
        for _ in 0..<count where budget > 0 {
            let pages = int(1...max(1, min(budget, 300)))
            budget -= pages
            runs.append(PageRun(start: next, pageCount: UInt32(pages)))
            next += UInt64(pages) << 12 + (bool() ? 0 : UInt64(int(1...1 << 20)) << 12)
        }
        return runs
    }

    mutating func message() -> Message {
        switch int(0...10) {
        case 0:
            return .hello(Hello(version: WireVersion(major: 1, minor: UInt16(int(0...3))), capabilities: Capabilities(rawValue: u64()),
                                pageSize: UInt32(4096 << int(0...4)), migrationID: migrationID(), senderName: string(maxScalars: 60),
                                resumeFromRound: bool() ? round() : nil))
        case 1:
            return .welcome(Welcome(version: .current, capabilities: Capabilities(rawValue: u64()), lastCommittedRound: bool() ? round() : nil))
        case 2:
            var regions: [RegionDescriptor] = []
            var next: UInt64 = 0x1000
            for _ in 0..<int(0...20) {
                let start = next + (UInt64(int(0...100)) << 12)
                let end = start + (UInt64(int(1...1000)) << 12)
                regions.append(RegionDescriptor(start: start, end: end, protection: Protection(rawValue: UInt8(int(0...7))),
                                                flags: RegionFlags(rawValue: UInt8(int(0...7))), name: string(maxScalars: 40)))
                next = end
            }
            return .layout(Layout(round: round(), continued: bool(), regions: regions))
        case 3:
            let runs = runs(count: int(1...4), maxPages: int(1...maxBatchPages))
            let pages = runs.reduce(0) { $0 + Int($1.pageCount) }
            let encoding: PageEncoding = bool() ? .raw : .zstd
            let payload = bytes(encoding == .raw ? pages * 4096 : int(1...min(pages * 4096, 600)))
            return .pageBatch(PageBatch(round: round(), encoding: encoding, runs: runs, uncompressedLength: UInt32(pages * 4096),
                                        checksum: u64(), payload: payload[...]))
        case 4: return .zeroRanges(RangeList(round: round(), runs: runs(count: int(1...30), maxPages: 100_000)))
        case 5: return .discardRanges(RangeList(round: round(), runs: runs(count: int(1...30), maxPages: 100_000)))
        case 6:
            return .roundEnd(RoundEnd(round: round(), stats: RoundStats(pages: u64(), zeroPages: u64(), discardedPages: u64(), batches: u64(), wireBytes: u64()),
                                      finalDigest: bool() ? WireDigest(high: u64(), low: u64()) : nil))
        case 7:
            if bool() { return .roundAck(RoundAck(round: round(), imageDigest: WireDigest(high: u64(), low: u64()))) }
            let load = bool() ? ReceiverLoad(networkPermille: UInt16(int(0...1000)), storageCPUPermille: UInt16(int(0...1000)),
                                             storageBusyPermille: UInt16(int(0...1000))) : nil
            return .roundAck(RoundAck(round: round(), load: load))
        case 8: return .error(ErrorMessage(code: ErrorCode(rawValue: UInt16(int(0...20))), message: string(maxScalars: 200)))
        case 9: return .keepalive(Keepalive(nonce: u64(), isReply: bool()))
        default: return .close(Close(reason: CloseReason(rawValue: UInt16(int(0...6)))))
        }
    }
}

@Suite struct PropertyTests {
    @Test func randomMessagesRoundTrip() throws {
        var gen = MessageGenerator(seed: 0x6d65_6d68_6175_6c01)
        var stream: [UInt8] = []
        var messages: [Message] = []
        var encoder = FrameEncoder()
        for _ in 0..<3000 {
            let m = gen.message()
            var one: [UInt8] = []
            try m.encodeFrame(sequence: encoder.nextSequence, into: &one)
            let (header, decoded, used) = try Message.decodeFrame(one[...])
            #expect(used == one.count)
            #expect(header.sequence == encoder.nextSequence)
            #expect(decoded == m)
            try encoder.encode(m, into: &stream)
            messages.append(m)
        }
        // The whole stream through the incremental decoder, in random chunk sizes.
        var decoder = FrameDecoder(expectsPreamble: false)
        var rng = SplitMix64(seed: 7)
        var offset = 0
        var decoded: [Message] = []
        while offset < stream.count {
            let n = min(Int.random(in: 1...9000, using: &rng), stream.count - offset)
            stream[offset..<(offset + n)].withUnsafeBytes { decoder.append($0) }
            offset += n
            while let frame = try decoder.nextFrame() { decoded.append(try frame.message()) }
        }
        #expect(decoded == messages)
        #expect(decoder.bufferedByteCount == 0)
    }

    /// Every proper prefix of every frame: `truncated` from the one-shot decoder, nil from the incremental one.
    @Test func everyTruncationIsTruncated() throws {
        var frames: [[UInt8]] = try VectorTable.valid.map { try encodedFrame($0) }
        var gen = MessageGenerator(seed: 99)
        gen.maxBatchPages = 1
        for _ in 0..<60 {
            var out: [UInt8] = []
            try gen.message().encodeFrame(sequence: 0, into: &out)
            frames.append(out)
        }
        for frame in frames {
            let header = try frame.withUnsafeBytes { try FrameHeader.decode($0) }
            // All prefixes of small frames; for big ones the header, the first 300 bytes, the last 300, and a stride.
            let cuts = frame.count <= 600 ? Array(0..<frame.count)
                : Array(0..<100) + Array(stride(from: 100, to: frame.count - 100, by: 61)) + Array((frame.count - 100)..<frame.count)
            for n in cuts {
                let prefix = frame[0..<n]
                #expect(throws: WireError.truncated(needed: n < FrameHeader.size ? FrameHeader.size : frame.count, available: n)) {
                    _ = try Message.decodeFrame(prefix)
                }
                var decoder = FrameDecoder(expectsPreamble: false, checksSequence: false)
                decoder.append(prefix)
                #expect(try decoder.nextFrame() == nil)
                #expect(decoder.bytesWanted == (n < FrameHeader.size ? FrameHeader.size - n : frame.count - n))
                // A short payload handed straight to Message.decode must fail cleanly (or, for zstd,
                // decode to a shorter valid payload that re-encodes to exactly those bytes).
                if n >= FrameHeader.size {
                    let payload = frame[FrameHeader.size..<n]
                    if let m = try? Message.decode(type: header.type, payload: payload) {
                        var again: [UInt8] = []
                        try m.encodePayload(into: &again)
                        #expect(again[...] == payload)
                    }
                }
            }
        }
    }

    /// Random mutations never trap; whatever still decodes re-encodes to the same bytes (the encoding is canonical).
    @Test func randomMutationsNeverTrap() throws {
        var gen = MessageGenerator(seed: 2024)
        gen.maxBatchPages = 2
        var rng = SplitMix64(seed: 31337)
        var base: [[UInt8]] = try VectorTable.valid.filter { $0.file != "page_batch_raw.bin" }.map { try encodedFrame($0) }
        for _ in 0..<100 {
            var out: [UInt8] = []
            try gen.message().encodeFrame(sequence: 0, into: &out)
            base.append(out)
        }
        var accepted = 0
        var rejected = 0
        for _ in 0..<10_000 {
            var bytes = base[Int.random(in: 0..<base.count, using: &rng)]
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0...4, using: &rng) {
                case 0: bytes[i] = UInt8.random(in: 0...255, using: &rng)
                case 1: bytes[i] ^= 1 << UInt8.random(in: 0...7, using: &rng)
                case 2: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: i)
                case 3: if bytes.count > 1 { bytes.remove(at: i) }
                default: bytes[i] = [0, 0xFF, 0x80, 0x01][Int.random(in: 0...3, using: &rng)]
                }
            }
            do {
                let (header, message, used) = try Message.decodeFrame(bytes[...])
                var again: [UInt8] = []
                try message.encodeFrame(sequence: header.sequence, into: &again)
                #expect(again[...] == bytes[0..<used])
                accepted += 1
            } catch {
                rejected += 1
            }
            var decoder = FrameDecoder(expectsPreamble: false, checksSequence: false)
            decoder.append(bytes)
            _ = try? decoder.nextFrame().map { try $0.message() }
        }
        #expect(accepted > 0)
        #expect(rejected > 5_000)
    }

    /// Random byte soup after a valid preamble: the stream decoder never traps and stops at the first error.
    @Test func randomStreamsNeverTrap() throws {
        var rng = SplitMix64(seed: 5)
        for _ in 0..<3000 {
            var decoder = FrameDecoder()
            var bytes: [UInt8] = []
            Preamble.encode(into: &bytes)
            bytes += [UInt8(Int.random(in: 1...11, using: &rng)), 0, 0, 0]
            bytes += (0..<Int.random(in: 0...200, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            decoder.append(bytes)
            do {
                while let frame = try decoder.nextFrame() { _ = try? frame.message() }
            } catch {
                #expect(throws: error) { try decoder.nextFrame() }  // poisoned: same error again
            }
        }
    }
}

import MemhaulSystem
import Testing
@testable import MemhaulWire

/// `FrameDecoder.nextFrameOrPageBatchHeader()`: a PAGE_BATCH comes out once its
/// headers are in, the page bytes taken by the reader; it must agree with
/// whole-frame decoding on every stream, valid or not.
@Suite struct PageBatchSplitTests {
    /// Decodes `bytes` fed in chunks of `chunk()` bytes (at most what the decoder asks
    /// for when `exact`), page bytes taken as a reader of the stream would.
    /// Returns the messages, the first error, and the most page bytes the decoder held.
    func splitDecode(_ bytes: [UInt8], exact: Bool, chunk: () -> Int) -> (messages: [Message], error: WireError?, bufferedPageBytes: Int) {
        var decoder = FrameDecoder(expectsPreamble: false)
        var offset = 0
        var messages: [Message] = []
        var held = 0
        func feed(_ n: Int) {
            bytes[offset..<(offset + n)].withUnsafeBytes { decoder.append($0) }
            offset += n
        }
        do {
            while true {
                switch try decoder.nextFrameOrPageBatchHeader() {
                case .frame(let frame):
                    messages.append(try frame.message())
                case .pageBatchHeader(let header):
                    var payload = [UInt8](repeating: 0, count: Int(header.payloadLength))
                    var done = payload.withUnsafeMutableBytes { decoder.takeBuffered(into: $0) }
                    held = max(held, done)
                    let rest = min(payload.count - done, bytes.count - offset)
                    payload.withUnsafeMutableBytes { p in
                        bytes[offset..<(offset + rest)].withUnsafeBytes { (p.baseAddress! + done).copyMemory(from: $0.baseAddress!, byteCount: rest) }
                    }
                    offset += rest
                    done += rest
                    if done < payload.count { return (messages, nil, held) }  // the stream ended inside the page bytes
                    messages.append(.pageBatch(PageBatch(header: header, payload: payload[...])))
                case nil:
                    guard offset < bytes.count else { return (messages, nil, held) }
                    let want = exact ? decoder.bytesWantedBeforePageBytes : Int.max
                    feed(min(chunk(), want, bytes.count - offset))
                }
            }
        } catch {
            return (messages, error, held)
        }
    }

    /// The reference: whole frames through `nextFrame`, then `message()`.
    /// `incomplete`: it stopped at a frame whose bytes are not all there.
    func wholeDecode(_ bytes: [UInt8]) -> (messages: [Message], error: WireError?, incomplete: Bool) {
        var decoder = FrameDecoder(expectsPreamble: false)
        decoder.append(bytes)
        var messages: [Message] = []
        do {
            while let frame = try decoder.nextFrame() { messages.append(try frame.message()) }
        } catch {
            return (messages, error, false)
        }
        return (messages, nil, decoder.bufferedByteCount > 0)
    }

    func randomStream(seed: UInt64, count: Int, maxBatchPages: Int = 16) throws -> ([Message], [UInt8]) {
        var gen = MessageGenerator(seed: seed)
        gen.maxBatchPages = maxBatchPages
        var encoder = FrameEncoder()
        var out: [UInt8] = []
        var messages: [Message] = []
        for _ in 0..<count {
            let m = gen.message()
            try encoder.encode(m, into: &out)
            messages.append(m)
        }
        return (messages, out)
    }

    @Test func pageBytesSplitAtEveryChunkSizeDecodeAsWholeFrames() throws {
        let (messages, bytes) = try randomStream(seed: 41, count: 300)
        #expect(messages.contains { if case .pageBatch = $0 { true } else { false } })
        var rng = SplitMix64(seed: 3)
        for sizes in [1...1, 1...13, 1...5000, 4096...70_000] {
            for exact in [true, false] {
                let got = splitDecode(bytes, exact: exact) { Int.random(in: sizes, using: &rng) }
                #expect(got.error == nil)
                #expect(got.messages == messages, "chunks \(sizes), exact \(exact)")
                // Reading just what the headers need, no page byte lands in the decoder's buffer.
                if exact { #expect(got.bufferedPageBytes == 0) }
            }
        }
    }

    /// Every cut through a PAGE_BATCH's headers: nothing comes out before the last
    /// header byte, the header comes out exactly then.
    @Test func theHeaderComesOutAtItsLastByteAndNotBefore() throws {
        let header = PageBatchHeader(round: 3, encoding: .raw, runs: [PageRun(start: 0x1000, pageCount: 1), PageRun(start: 0x9000, pageCount: 2)],
                                     uncompressedLength: 3 * 4096, checksum: 7, payloadLength: 3 * 4096)
        var frame: [UInt8] = []
        try header.encodeFrame(sequence: 0, into: &frame)
        let headEnd = frame.count
        for cut in 0...headEnd {
            var decoder = FrameDecoder(expectsPreamble: false)
            frame[0..<cut].withUnsafeBytes { decoder.append($0) }
            let next = try decoder.nextFrameOrPageBatchHeader()
            if cut < headEnd {
                #expect(next == nil, "cut at \(cut)")
                #expect(decoder.bytesWantedBeforePageBytes == (cut < FrameHeader.size ? FrameHeader.size - cut
                    : cut < FrameHeader.size + PageBatchHeader.fixedSize ? FrameHeader.size + PageBatchHeader.fixedSize - cut : headEnd - cut))
            } else {
                guard case .pageBatchHeader(let got) = next else { Issue.record("no header at \(cut)"); continue }
                #expect(got == header)
                #expect(decoder.bufferedByteCount == 0)
                #expect(decoder.expectedSequence == 1)
            }
        }
    }

    /// Mutated frames: the split decoder rejects what the whole-frame decoder rejects, with
    /// the same error, and accepts the same messages.
    @Test func mutatedStreamsGetTheSameVerdict() throws {
        var rng = SplitMix64(seed: 77)
        // Small streams, half of them page batches.
        var gen = MessageGenerator(seed: 5)
        gen.maxBatchPages = 2
        var encoder = FrameEncoder()
        var clean: [UInt8] = []
        var batches = 0, others = 0
        while batches < 8 {
            let m = gen.message()
            if case .pageBatch = m { batches += 1 } else if others < 8, m.frameType != .layout { others += 1 } else { continue }
            try encoder.encode(m, into: &clean)
        }
        var compared = 0
        for _ in 0..<1000 {
            var bytes = clean
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0...2, using: &rng) {
                case 0: bytes[i] = UInt8.random(in: 0...255, using: &rng)
                case 1: bytes[i] ^= 1 << UInt8.random(in: 0...7, using: &rng)
                default: bytes[i] = [0, 0xFF, 0x80, 0x01, 0x04][Int.random(in: 0...4, using: &rng)]
                }
            }
            let whole = wholeDecode(bytes)
            let split = splitDecode(bytes, exact: true) { Int.random(in: 1...3000, using: &rng) }
            if let error = whole.error {
                #expect(split.error == error)
                #expect(split.messages == whole.messages)
            } else {
                // The whole-frame decoder waits for the rest of a frame whose length a
                // mutation raised; the split one judges a PAGE_BATCH's header at once (and may
                // reject it sooner): compare what both finished.
                if split.error != nil { #expect(whole.incomplete) }
                #expect(Array(split.messages.prefix(whole.messages.count)) == whole.messages)
            }
            compared += 1
        }
        #expect(compared == 1000)
    }

    /// A run count over the limit is refused once the fixed part is in, not after the runs it claims.
    @Test func tooManyRunsAreRefusedBeforeTheyAreBuffered() throws {
        let header = PageBatchHeader(round: 1, encoding: .raw, runs: [PageRun(start: 0x1000, pageCount: 1)],
                                     uncompressedLength: 4096, checksum: 0, payloadLength: 4096)
        var frame: [UInt8] = []
        try header.encodeFrame(sequence: 0, into: &frame)
        frame[FrameHeader.size + PageBatchHeader.runCountOffset] = 0xFF  // 0xFFFF runs
        frame[FrameHeader.size + PageBatchHeader.runCountOffset + 1] = 0xFF
        var decoder = FrameDecoder(expectsPreamble: false)
        frame[0..<(FrameHeader.size + PageBatchHeader.fixedSize)].withUnsafeBytes { decoder.append($0) }
        #expect(throws: WireError.countTooLarge(count: 0xFFFF, limit: WireLimits.default.maxRunsPerBatch)) {
            _ = try decoder.nextFrameOrPageBatchHeader()
        }
        frame += [UInt8](repeating: 1, count: 4096)  // the page bytes: the whole frame, for the whole-frame decoder
        #expect(wholeDecode(frame).error == .countTooLarge(count: 0xFFFF, limit: WireLimits.default.maxRunsPerBatch))
    }

    @Test func aPageBatchTooShortForItsRunsIsTruncatedAsAWholeFrame() throws {
        let header = PageBatchHeader(round: 1, encoding: .raw, runs: [PageRun(start: 0x1000, pageCount: 1)],
                                     uncompressedLength: 4096, checksum: 0, payloadLength: 4096)
        var frame: [UInt8] = []
        try header.encodeFrame(sequence: 0, into: &frame)
        // Claim 40 runs in a frame of 30 payload bytes.
        frame[FrameHeader.size + PageBatchHeader.runCountOffset] = 40
        frame.replaceSubrange(4..<8, with: [30, 0, 0, 0])
        frame = Array(frame.prefix(FrameHeader.size + 30))
        let whole = wholeDecode(frame)
        let split = splitDecode(frame, exact: true) { 1 }
        #expect(whole.error != nil)
        #expect(split.error == whole.error)
    }
}

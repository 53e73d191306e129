import Testing
@testable import MemhaulCompression
import MemhaulBench

private let pageSize = PageClassifier.pageSize

/// Compresses `bytes` with a fresh compressor into an exactly-sized array.
private func zstdFrame(_ bytes: [UInt8], level: Int32 = 3, contentSize: Bool = true) throws -> [UInt8] {
    let c = ZstdCompressor(level: level, writeContentSize: contentSize)
    var out = [UInt8](repeating: 0, count: ZstdCompressor.bound(bytes.count))
    let n = try bytes.withUnsafeBytes { src in try out.withUnsafeMutableBytes { try c.compress(src, into: $0) } }
    return Array(out[0..<n])
}

/// Decompresses `frame` expecting `expected` bytes, into a buffer exactly that large.
private func unzstd(_ frame: [UInt8], expected: Int) throws -> [UInt8] {
    var out = [UInt8](repeating: 0xAA, count: expected)
    let d = ZstdDecompressor()
    let n = try frame.withUnsafeBytes { src in
        try out.withUnsafeMutableBytes { try d.decompress(src, into: $0, expectedSize: expected) }
    }
    #expect(n == expected)
    return out
}

@Suite struct PageClassifierTests {
    @Test func zeroPageIsZero() {
        let page = [UInt8](repeating: 0, count: pageSize)
        page.withUnsafeBytes { #expect(PageClassifier.isZero(page: $0)) }
    }

    @Test(arguments: [0, 7, 8, 63, 64, 2048, 4032, 4095])
    func oneNonZeroByteAnywhereIsNotZero(at offset: Int) {
        var page = [UInt8](repeating: 0, count: pageSize)
        page[offset] = 1
        page.withUnsafeBytes { #expect(!PageClassifier.isZero(page: $0)) }
    }

    @Test func oddLengthsAreChecked() {
        var bytes = [UInt8](repeating: 0, count: 100)
        bytes.withUnsafeBytes { #expect(PageClassifier.isZero(page: $0)) }
        bytes[99] = 0x80
        bytes.withUnsafeBytes { #expect(!PageClassifier.isZero(page: $0)) }
        [UInt8]().withUnsafeBytes { #expect(PageClassifier.isZero(page: $0)) }
    }

    @Test func classifyFindsRunsAndCompactMovesLivePagesForward() {
        // pages: Z Z A B Z C Z Z   (letters are non-zero pages filled with that byte)
        let layout: [UInt8] = [0, 0, 0x41, 0x42, 0, 0x43, 0, 0]
        var batch = [UInt8]()
        for b in layout { batch += [UInt8](repeating: b, count: pageSize) }
        var result = PageClassification()
        let live = batch.withUnsafeMutableBytes { PageClassifier.classifyAndCompact(batch: $0, into: &result) }
        #expect(result.pageCount == 8)
        #expect(result.zeroRuns == [0..<2, 4..<5, 6..<8])
        #expect(result.nonZeroRuns == [2..<4, 5..<6])
        #expect(result.nonZeroCount == 3 && result.zeroCount == 5)
        #expect(live == 3 * pageSize)
        #expect(batch[0] == 0x41 && batch[pageSize] == 0x42 && batch[2 * pageSize] == 0x43)
        #expect(batch[3 * pageSize - 1] == 0x43)
        // Reusing the result clears the previous batch's runs.
        let zeros = [UInt8](repeating: 0, count: 2 * pageSize)
        zeros.withUnsafeBytes { PageClassifier.classify(batch: $0, into: &result) }
        #expect(result.zeroRuns == [0..<2] && result.nonZeroRuns.isEmpty && result.nonZeroCount == 0)
    }
}

@Suite struct BatchCodecTests {
    @Test(arguments: [Int32(-5), -1, 1, 3, 9, 19])
    func mixedPagesRoundTrip(level: Int32) throws {
        let original = MixedPages.make(pages: 96, seed: UInt64(100 + Int(level)))
        var work = original
        var classes = PageClassification()
        let live = work.withUnsafeMutableBytes { PageClassifier.classifyAndCompact(batch: $0, into: &classes) }
        #expect(classes.zeroCount > 0 && classes.nonZeroCount > 0)

        let encoder = BatchEncoder(level: level)
        let decoder = BatchDecoder()
        var decoded = [UInt8](repeating: 0, count: live)
        let encoding = try work.withUnsafeBytes { w in
            try encoder.encode(UnsafeRawBufferPointer(rebasing: w[0..<live])) { encoding, payload in
                #expect(payload.count < live)
                _ = try decoded.withUnsafeMutableBytes {
                    try decoder.decode(encoding, payload: payload, into: $0, expectedSize: live)
                }
                return encoding
            }
        }
        #expect(encoding == .zstd)
        // Rebuild the batch from the zero runs and the decoded live pages.
        var rebuilt = [UInt8](repeating: 0, count: original.count)
        var next = 0
        for run in classes.nonZeroRuns {
            for page in run {
                rebuilt.replaceSubrange(page * pageSize..<(page + 1) * pageSize, with: decoded[next..<next + pageSize])
                next += pageSize
            }
        }
        #expect(rebuilt == original)
        #expect(encoder.statistics.batches == 1 && encoder.statistics.rawBatches == 0)
    }

    @Test(arguments: [true, false])
    func randomPagesFallBackToRaw(sampling: Bool) throws {
        let random = MixedPages.make(pages: 64, mix: .init(zero: 0, text: 0, random: 1), seed: 7)
        let encoder = BatchEncoder(level: 1, samplePages: sampling ? 4 : 0)
        var dst = [UInt8](repeating: 0, count: random.count)
        let r = try random.withUnsafeBytes { src in try dst.withUnsafeMutableBytes { try encoder.encode(src, into: $0) } }
        #expect(r.encoding == .raw)
        #expect(r.count == random.count)
        #expect(dst == random)
        #expect(encoder.statistics.rawBatches == 1)
        #expect(encoder.statistics.sampledRawBatches == (sampling ? 1 : 0))
        // The raw payload decodes to itself.
        var back = [UInt8](repeating: 0, count: random.count)
        _ = try dst.withUnsafeBytes { p in
            try back.withUnsafeMutableBytes { try BatchDecoder().decode(.raw, payload: p, into: $0, expectedSize: random.count) }
        }
        #expect(back == random)
    }

    @Test func encoderRejectsTooSmallDestination() {
        let text = MixedPages.make(pages: 2, mix: .init(zero: 0, text: 1, random: 0))
        var dst = [UInt8](repeating: 0, count: 100)
        #expect(throws: CompressionError.destinationTooSmall(needed: text.count, capacity: 100)) {
            _ = try text.withUnsafeBytes { src in try dst.withUnsafeMutableBytes { try BatchEncoder(level: 1).encode(src, into: $0) } }
        }
    }

    @Test func rawPayloadOfWrongSizeIsRejected() {
        let payload = [UInt8](repeating: 1, count: 4000)
        var dst = [UInt8](repeating: 0, count: pageSize)
        #expect(throws: CompressionError.sizeMismatch(expected: pageSize, actual: 4000)) {
            _ = try payload.withUnsafeBytes { p in
                try dst.withUnsafeMutableBytes { try BatchDecoder().decode(.raw, payload: p, into: $0, expectedSize: pageSize) }
            }
        }
    }
}

@Suite struct HostileZstdTests {
    static let text = MixedPages.make(pages: 4, mix: .init(zero: 0, text: 1, random: 0), seed: 3)

    @Test func frameDeclaringMoreThanExpectedIsABomb() throws {
        // 16 MiB of zeros compress to a few hundred bytes that declare 16 MiB.
        let frame = try zstdFrame([UInt8](repeating: 0, count: 16 << 20))
        #expect(frame.count < 4096)
        #expect(throws: CompressionError.tooLarge(declared: 16 << 20, limit: 4 * pageSize)) {
            _ = try unzstd(frame, expected: 4 * pageSize)
        }
    }

    @Test func frameWithoutDeclaredSizeOverflowingIsABomb() throws {
        let frame = try zstdFrame([UInt8](repeating: 0, count: 16 << 20), contentSize: false)
        #expect(frame.count < 4096)
        #expect(throws: CompressionError.tooLarge(declared: nil, limit: 4 * pageSize)) {
            _ = try unzstd(frame, expected: 4 * pageSize)
        }
    }

    @Test func frameWithoutDeclaredSizeOfTheRightSizeIsAccepted() throws {
        let frame = try zstdFrame(Self.text, contentSize: false)
        #expect(try unzstd(frame, expected: Self.text.count) == Self.text)
    }

    @Test func frameDeclaringLessThanExpectedIsAMismatch() throws {
        let frame = try zstdFrame(Self.text)
        #expect(throws: CompressionError.sizeMismatch(expected: Self.text.count + pageSize, actual: Self.text.count)) {
            _ = try unzstd(frame, expected: Self.text.count + pageSize)
        }
    }

    @Test func corruptPayloadIsATypedError() throws {
        var frame = try zstdFrame(Self.text)
        for i in stride(from: frame.count / 3, to: frame.count - 4, by: 7) { frame[i] ^= 0x5A }
        do {
            _ = try unzstd(frame, expected: Self.text.count)
            Issue.record("corrupt frame was accepted")
        } catch {
            guard case .corrupt? = error as? CompressionError else { Issue.record("unexpected \(error)"); return }
        }
    }

    @Test func badMagicIsCorrupt() {
        let junk = Array("this is not zstd at all, just text".utf8)
        #expect(throws: CompressionError.corrupt("not a zstd frame (bad magic or header)")) {
            _ = try unzstd(junk, expected: 100)
        }
        #expect(throws: CompressionError.corrupt("empty payload")) { _ = try unzstd([], expected: 100) }
    }

    @Test(arguments: [1, 10, 100])
    func truncatedPayloadIsCorrupt(cut: Int) throws {
        let frame = try zstdFrame(Self.text)
        #expect(frame.count > 200)
        let truncated = Array(frame.dropLast(cut))
        #expect(throws: CompressionError.corrupt("truncated frame (\(truncated.count) bytes)")) {
            _ = try unzstd(truncated, expected: Self.text.count)
        }
    }

    @Test func truncatedHeaderIsCorrupt() throws {
        let frame = try zstdFrame(Self.text)
        do {
            _ = try unzstd(Array(frame.prefix(3)), expected: Self.text.count)
            Issue.record("3-byte frame was accepted")
        } catch {
            guard case .corrupt? = error as? CompressionError else { Issue.record("unexpected \(error)"); return }
        }
    }

    @Test func trailingBytesAreCorrupt() throws {
        let frame = try zstdFrame(Self.text) + [1, 2, 3]
        #expect(throws: CompressionError.corrupt("3 bytes after the frame")) {
            _ = try unzstd(frame, expected: Self.text.count)
        }
    }

    @Test func messagesAreOneReadableLine() {
        let e = CompressionError.tooLarge(declared: 1 << 30, limit: 4096)
        #expect(e.description == "zstd payload declares 1073741824 bytes, more than the 4096 expected (decompression bomb?)")
        #expect(!CompressionError.corrupt("x").description.contains("\n"))
    }
}

@Suite struct ZstdCompressorTests {
    @Test func levelsAreClampedAndNegativeLevelsWork() throws {
        #expect(ZstdCompressor(level: 1000).level == ZstdCompressor.supportedLevels.upperBound)
        #expect(ZstdCompressor(level: -5).level == -5)
        let text = MixedPages.make(pages: 8, mix: .init(zero: 0, text: 1, random: 0))
        let fast = try zstdFrame(text, level: -5)
        let strong = try zstdFrame(text, level: 19)
        #expect(strong.count < fast.count)
        #expect(try unzstd(fast, expected: text.count) == text)
    }

    @Test func tooSmallDestinationThrows() {
        let text = MixedPages.make(pages: 8, mix: .init(zero: 0, text: 1, random: 0))
        var dst = [UInt8](repeating: 0, count: 64)
        #expect(throws: CompressionError.self) {
            _ = try text.withUnsafeBytes { s in try dst.withUnsafeMutableBytes { try ZstdCompressor(level: 1).compress(s, into: $0) } }
        }
    }
}

import MemhaulWire
import Testing

private func frame(_ type: UInt8, _ payload: [UInt8], sequence: UInt32 = 0) -> [UInt8] {
    VectorTable.header(type, length: UInt32(payload.count), sequence: sequence) + payload
}

private func decode(_ bytes: [UInt8]) throws(WireError) -> Message {
    try Message.decodeFrame(bytes[...]).message
}

private let le64 = VectorTable.le64
private let le32 = VectorTable.le32

@Suite struct CodecTests {
    @Test func headerLayoutIsFixed() {
        var out: [UInt8] = []
        FrameHeader(type: .keepalive, length: 0x0403_0201, sequence: 0x0807_0605).encode(into: &out)
        #expect(out == [0x0A, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
    }

    @Test func headerRejects() {
        #expect(throws: WireError.unknownFrameType(0)) { try decode([0, 0, 0, 0] + le32(0) + le32(0)) }
        #expect(throws: WireError.unknownFrameType(0x0F)) { try decode([0x0F, 0, 0, 0] + le32(0) + le32(0)) }
        #expect(throws: WireError.invalidFlags(0x80)) { try decode([0x0A, 0x80, 0, 0] + le32(12) + le32(0)) }
        #expect(throws: WireError.reservedNotZero) { try decode([0x0A, 0, 0, 1] + le32(12) + le32(0)) }
        #expect(throws: WireError.payloadTooLarge(length: 13, limit: 12)) { try decode([0x0A, 0, 0, 0] + le32(13) + le32(0)) }
        #expect(throws: WireError.payloadTooLarge(length: 16 << 20 + 1, limit: 16 << 20)) { try decode([0x03, 0, 0, 0] + le32(16 << 20 + 1) + le32(0)) }
    }

    @Test func countsAreCheckedBeforeAllocating() {
        // 2^32-1 ranges announced in a 16-byte payload.
        #expect(throws: WireError.countTooLarge(count: Int(UInt32.max), limit: 65536)) {
            try decode(frame(0x05, le64(1) + le32(.max) + le32(0)))
        }
        // 65536 regions (at the limit) but no bytes for them.
        #expect(throws: WireError.truncated(needed: 16 + 65536 * 20, available: 16)) {
            try decode(frame(0x03, le64(1) + [0, 0, 0, 0] + le32(65536)))
        }
        #expect(throws: WireError.countTooLarge(count: 1025, limit: 1024)) {
            try decode(frame(0x04, le64(1) + [0, 0] + [0x01, 0x04] + le32(0) + le64(0)))
        }
        // Pages over the batch limit: one run of 1025 pages.
        #expect(throws: WireError.countTooLarge(count: 1025, limit: 1024)) {
            try decode(frame(0x04, le64(1) + [0, 0, 1, 0] + le32(1025 * 4096) + le64(0) + le64(0) + le32(1025)))
        }
    }

    @Test func rangeRules() {
        func zero(_ runs: [(UInt64, UInt32)]) -> [UInt8] {
            frame(0x05, le64(3) + le32(UInt32(runs.count)) + le32(0) + runs.flatMap { le64($0.0) + le32($0.1) })
        }
        #expect(throws: WireError.emptyRange(start: 0x1000)) { try decode(zero([(0x1000, 0)])) }
        #expect(throws: WireError.rangeOverflow(start: 0xFFFF_FFFF_FFFF_F000)) { try decode(zero([(0xFFFF_FFFF_FFFF_F000, 1)])) }
        #expect(throws: WireError.rangesUnsorted(start: 0x1000)) { try decode(zero([(0x5000, 1), (0x1000, 1)])) }
        #expect(throws: WireError.emptyList) { try decode(zero([])) }
        #expect(throws: WireError.invalidRound) { try decode(frame(0x05, le64(0) + le32(1) + le32(0) + le64(0) + le32(1))) }
        // Adjacent runs are allowed; the highest representable end works.
        #expect(throws: Never.self) { try decode(zero([(0x1000, 1), (0x2000, 1), (0xFFFF_FFFF_FFFF_E000, 1)])) }
    }

    @Test func pageBatchRules() {
        func batch(encoding: UInt8, pages: UInt32, uncompressed: UInt32, payload: Int) -> [UInt8] {
            frame(0x04, le64(1) + [encoding, 0, 1, 0] + le32(uncompressed) + le64(0) + le64(0x1000) + le32(pages) + [UInt8](repeating: 7, count: payload))
        }
        #expect(throws: Never.self) { try decode(batch(encoding: 0, pages: 1, uncompressed: 4096, payload: 4096)) }
        #expect(throws: Never.self) { try decode(batch(encoding: 1, pages: 2, uncompressed: 8192, payload: 1)) }
        #expect(throws: WireError.unknownEncoding(3)) { try decode(batch(encoding: 3, pages: 1, uncompressed: 4096, payload: 4096)) }
        // Delta: at least a u16 tag per page, at most the pages raw.
        #expect(throws: Never.self) { try decode(batch(encoding: 2, pages: 2, uncompressed: 8192, payload: 4)) }
        #expect(throws: WireError.compressedTooLarge(length: 3, uncompressed: 8192)) { try decode(batch(encoding: 2, pages: 2, uncompressed: 8192, payload: 3)) }
        #expect(throws: WireError.compressedTooLarge(length: 4097, uncompressed: 4096)) { try decode(batch(encoding: 2, pages: 1, uncompressed: 4096, payload: 4097)) }
        #expect(throws: WireError.lengthMismatch(expected: 8192, actual: 4096)) { try decode(batch(encoding: 0, pages: 2, uncompressed: 4096, payload: 4096)) }
        #expect(throws: WireError.compressedTooLarge(length: 4097, uncompressed: 4096)) { try decode(batch(encoding: 1, pages: 1, uncompressed: 4096, payload: 4097)) }
        #expect(throws: WireError.compressedTooLarge(length: 0, uncompressed: 4096)) { try decode(batch(encoding: 1, pages: 1, uncompressed: 4096, payload: 0)) }
    }

    @Test func stringsAndIDs() throws {
        func hello(id: [UInt8], name: [UInt8], pageSize: UInt32 = 4096, flags: UInt8 = 0, resume: UInt64 = 0) -> [UInt8] {
            frame(0x01, [1, 0, 0, 0] + le32(pageSize) + le64(1) + le64(resume) + [flags, UInt8(id.count), UInt8(name.count), 0] + id + name)
        }
        #expect(throws: Never.self) { try decode(hello(id: Array("a.b-c_D9".utf8), name: Array("é".utf8))) }
        #expect(throws: WireError.invalidMigrationID) { try decode(hello(id: [], name: [])) }
        #expect(throws: WireError.invalidMigrationID) { try decode(hello(id: Array("a/b".utf8), name: [])) }
        #expect(throws: WireError.invalidMigrationID) { try decode(hello(id: [UInt8](repeating: 0x61, count: 65), name: [])) }
        #expect(throws: WireError.invalidUTF8) { try decode(hello(id: [0x61], name: [0xC3])) }
        #expect(throws: WireError.invalidPageSize(4097)) { try decode(hello(id: [0x61], name: [], pageSize: 4097)) }
        #expect(throws: WireError.invalidPageSize(2048)) { try decode(hello(id: [0x61], name: [], pageSize: 2048)) }
        #expect(throws: WireError.reservedNotZero) { try decode(hello(id: [0x61], name: [], flags: 0, resume: 5)) }
        // Resume before any acknowledged round: resume_round 0 with the flag is valid.
        if case .hello(let h) = try decode(hello(id: [0x61], name: [], flags: 1, resume: 0)) {
            #expect(h.resumeFromRound == 0)
        } else {
            Issue.record("expected HELLO")
        }
        #expect(throws: WireError.invalidFlags(2)) { try decode(hello(id: [0x61], name: [], flags: 2)) }
        #expect(throws: WireError.nameTooLong(length: 1025, limit: 1024)) { try decode(frame(0x09, [1, 0, 0x01, 0x04] + [UInt8](repeating: 0x61, count: 10))) }
        // Trailing bytes after the last field.
        #expect(throws: WireError.lengthMismatch(expected: 16, actual: 17)) { try decode(frame(0x08, le64(1) + [UInt8](repeating: 0, count: 9))) }
        #expect(throws: WireError.payloadTooLarge(length: 5, limit: 4)) { try decode(frame(0x0B, [0, 0, 0, 0, 0])) }
    }

    @Test func layoutRules() {
        func layout(_ regions: [(UInt64, UInt64, UInt8, UInt8, [UInt8])]) -> [UInt8] {
            var payload: [UInt8] = le64(1)
            payload += [0, 0, 0, 0]
            payload += le32(UInt32(regions.count))
            for r in regions {
                payload += le64(r.0)
                payload += le64(r.1)
                payload += [r.2, r.3, UInt8(r.4.count & 0xff), UInt8(r.4.count >> 8)]
                payload += r.4
            }
            return frame(0x03, payload)
        }
        #expect(throws: Never.self) { try decode(layout([(0x1000, 0x3000, 7, 7, Array("[heap]".utf8)), (0x3000, 0x4000, 0, 0, [])])) }
        #expect(throws: WireError.unalignedAddress(0x3001)) { try decode(layout([(0x1000, 0x3001, 1, 0, [])])) }
        #expect(throws: WireError.emptyRange(start: 0x1000)) { try decode(layout([(0x1000, 0x1000, 1, 0, [])])) }
        #expect(throws: WireError.rangesUnsorted(start: 0x2000)) { try decode(layout([(0x1000, 0x3000, 1, 0, []), (0x2000, 0x4000, 1, 0, [])])) }
        #expect(throws: WireError.invalidFlags(8)) { try decode(layout([(0x1000, 0x3000, 8, 0, [])])) }
        #expect(throws: WireError.invalidFlags(0x10)) { try decode(layout([(0x1000, 0x3000, 1, 0x10, [])])) }
        #expect(throws: WireError.nameTooLong(length: 4097, limit: 4096)) { try decode(layout([(0x1000, 0x3000, 1, 0, [UInt8](repeating: 0x61, count: 4097))])) }
    }

    /// ROUND_ACK's load (capability receiver-load): only with flag bit 1, never with a digest, each ≤ 1000.
    @Test func roundAckLoadRules() throws {
        func ack(_ flags: UInt8, _ rest: [UInt8]) -> [UInt8] {
            let payload = le64(7) + [flags] + rest
            return VectorTable.header(0x08, length: UInt32(payload.count)) + payload
        }
        let load: [UInt8] = [0, 0xE8, 0x03, 0x00, 0x00, 0x01, 0x00]  // reserved, 1000, 0, 1
        guard case .roundAck(let a) = try decode(ack(2, load)) else { Issue.record("not a ROUND_ACK"); return }
        #expect(a.load == ReceiverLoad(networkPermille: 1000, storageCPUPermille: 0, storageBusyPermille: 1))
        #expect(a.imageDigest == nil)
        #expect(throws: WireError.reservedNotZero) { try decode(ack(0, load)) }  // load bytes without the flag
        #expect(throws: WireError.reservedNotZero) { try decode(ack(2, [1] + load.dropFirst())) }
        #expect(throws: WireError.invalidFlags(3)) { try decode(ack(3, load + [UInt8](repeating: 0, count: 16))) }
        #expect(throws: WireError.loadOutOfRange(1001)) { try decode(ack(2, [0, 0xE9, 0x03, 0, 0, 0, 0])) }
        #expect(ReceiverLoad(network: 1.7, storageCPU: -1, storageBusy: 0.4567) == ReceiverLoad(networkPermille: 1000, storageCPUPermille: 0, storageBusyPermille: 457))
    }

    @Test func encoderRefusesInvalidMessagesAndAppendsNothing() {
        let invalid: [(Message, WireError)] = [
            (.hello(Hello(capabilities: [], migrationID: "bad id", senderName: "")), .invalidMigrationID),
            (.hello(Hello(capabilities: [], pageSize: 1000, migrationID: "a", senderName: "")), .invalidPageSize(1000)),
            (.hello(Hello(capabilities: [], migrationID: "a", senderName: String(repeating: "x", count: 256))), .nameTooLong(length: 256, limit: 255)),
            (.zeroRanges(RangeList(round: 1, runs: [PageRun(start: 0x2000, pageCount: 1), PageRun(start: 0x1000, pageCount: 1)])), .rangesUnsorted(start: 0x1000)),
            (.discardRanges(RangeList(round: 1, runs: [PageRun(start: 0x123, pageCount: 1)])), .unalignedAddress(0x123)),
            (.roundAck(RoundAck(round: 0)), .invalidRound),
            (.pageBatch(PageBatch(round: 1, encoding: .raw, runs: [PageRun(start: 0, pageCount: 1)], uncompressedLength: 4096, checksum: 0, payload: [1, 2, 3])),
             .lengthMismatch(expected: 4096, actual: 3)),
            (.error(ErrorMessage(code: .internalError, message: String(repeating: "x", count: 1025))), .nameTooLong(length: 1025, limit: 1024)),
        ]
        for (message, error) in invalid {
            var out: [UInt8] = [9, 9, 9]
            #expect(throws: error) { try message.encodeFrame(sequence: 0, into: &out) }
            #expect(out == [9, 9, 9])
            #expect(throws: error) { try message.encodePayload(into: &out) }
            #expect(out == [9, 9, 9])
        }
    }

    @Test func tightenedLimitsApply() throws {
        var limits = WireLimits()
        limits.maxPagesPerBatch = 1
        let message = Message.pageBatch(PageBatch(round: 1, encoding: .zstd, runs: [PageRun(start: 0, pageCount: 2)], uncompressedLength: 8192, checksum: 0, payload: [1]))
        var out: [UInt8] = []
        try message.encodeFrame(sequence: 0, into: &out)
        #expect(throws: WireError.countTooLarge(count: 2, limit: 1)) { try Message.decodeFrame(out[...], limits: limits) }
        limits = WireLimits()
        limits.pageSize = 16384
        #expect(throws: WireError.unalignedAddress(0x1000)) {
            try Message.decodeFrame(frame(0x05, le64(1) + le32(1) + le32(0) + le64(0x1000) + le32(1))[...], limits: limits)
        }
    }

    @Test func digestIsCanonicalHex() {
        let d = WireDigest(high: 0x0123_4567_89ab_cdef, low: 0x0f)
        #expect(d.hex == "0123456789abcdef000000000000000f")
    }

    @Test func errorDescriptionsAreOneLine() {
        let samples: [WireError] = [.truncated(needed: 12, available: 3), .badMagic, .unsupportedVersion(WireVersion(major: 2, minor: 1)),
                                    .unalignedAddress(0x1234), .rangesUnsorted(start: 0x1000)]
        for e in samples {
            #expect(!e.description.contains("\n"))
            #expect(e.description.hasPrefix("wire: "))
        }
        #expect(WireError.unalignedAddress(0x1234).description == "wire: address 0x1234 is not page aligned")
    }

    /// Code 16 (wire.md, "Error codes"): ERROR bytes 09… 10 00, named `unauthorized`.
    @Test func unauthorizedErrorCode() throws {
        #expect(ErrorCode.unauthorized.rawValue == 16)
        #expect(ErrorCode.unauthorized.description == "unauthorized")
        let bytes = frame(0x09, [16, 0, 2, 0] + Array("no".utf8))
        guard case .error(let e) = try decode(bytes) else { Issue.record("not an ERROR"); return }
        #expect(e == ErrorMessage(code: .unauthorized, message: "no"))
    }

    /// Code 18 (wire.md, "Error codes"): ERROR bytes 09… 12 00, named `limit-exceeded`;
    /// capability bit 4 is `digestV2` (HELLO/WELCOME).
    @Test func limitExceededErrorCodeAndDigestV2Capability() throws {
        #expect(ErrorCode.limitExceeded.rawValue == 18)
        #expect(ErrorCode.limitExceeded.description == "limit-exceeded")
        let bytes = frame(0x09, [18, 0, 2, 0] + Array("no".utf8))
        guard case .error(let e) = try decode(bytes) else { Issue.record("not an ERROR"); return }
        #expect(e == ErrorMessage(code: .limitExceeded, message: "no"))
        #expect(Capabilities.digestV2.rawValue == 16)
    }

    /// Capability bit 5 is `ledgerDigest` (HELLO/WELCOME; vectors hello_ledger.bin, welcome_ledger.bin).
    @Test func ledgerDigestCapabilityIsBit5() {
        #expect(Capabilities.ledgerDigest.rawValue == 1 << 5)
    }

    /// Capability bit 9 is `finalDeltaDigest` (vector welcome_final_delta_digest.bin).
    @Test func finalDeltaDigestCapabilityIsBit9() {
        #expect(Capabilities.finalDeltaDigest.rawValue == 1 << 9)
    }
}

@Suite struct FrameDecoderTests {
    private func stream(_ messages: [Message], preamble: WireVersion? = .current, firstSequence: UInt32 = 0) throws -> [UInt8] {
        var out: [UInt8] = []
        if let preamble { Preamble.encode(preamble, into: &out) }
        var enc = FrameEncoder(firstSequence: firstSequence)
        for m in messages { try enc.encode(m, into: &out) }
        return out
    }

    @Test func rejectsBadMagicEarly() {
        var d = FrameDecoder()
        d.append(Array("MEMX".utf8))
        #expect(throws: WireError.badMagic) { try d.nextFrame() }
        #expect(throws: WireError.badMagic) { try d.nextFrame() }  // poisoned
    }

    @Test func rejectsOtherMajor() throws {
        var d = FrameDecoder()
        d.append(try stream([], preamble: WireVersion(major: 0, minor: 9)))
        #expect(throws: WireError.unsupportedVersion(WireVersion(major: 0, minor: 9))) { try d.nextFrame() }
        var newerMinor = FrameDecoder()
        newerMinor.append(try stream([.close(Close(reason: .complete))], preamble: WireVersion(major: 1, minor: 7)))
        #expect(try newerMinor.nextFrame()?.message() == .close(Close(reason: .complete)))
        #expect(newerMinor.peerVersion == WireVersion(major: 1, minor: 7))
    }

    @Test func checksSequence() throws {
        var d = FrameDecoder()
        d.append(try stream([.keepalive(Keepalive(nonce: 1))], firstSequence: 5))
        #expect(throws: WireError.sequenceMismatch(expected: 0, got: 5)) { try d.nextFrame() }
        var wrapping = FrameDecoder(firstSequence: .max)
        wrapping.append(try stream([.keepalive(Keepalive(nonce: 1)), .keepalive(Keepalive(nonce: 2))], firstSequence: .max))
        #expect(try wrapping.nextFrame() != nil)
        #expect(try wrapping.nextFrame() != nil)
        #expect(wrapping.expectedSequence == 1)
    }

    @Test func fillReadsStraightIntoTheBuffer() throws {
        var gen = MessageGenerator(seed: 11)
        gen.maxBatchPages = 64
        var messages: [Message] = []
        for _ in 0..<200 { messages.append(gen.message()) }
        let bytes = try stream(messages)
        var d = FrameDecoder()
        var offset = 0
        var got: [Message] = []
        while offset < bytes.count {
            let want = d.bytesWanted
            let n = d.fill(minimumCapacity: want) { space in
                let n = min(space.count, bytes.count - offset, 70_000)
                bytes[offset..<(offset + n)].withUnsafeBytes { space.copyMemory(from: $0) }
                return n
            }
            offset += n
            while let f = try d.nextFrame() { got.append(try f.message()) }
        }
        #expect(got == messages)
    }

    @Test func largestBatchFits() throws {
        let runs = (0..<1024).map { PageRun(start: UInt64($0) * 0x2000, pageCount: 1) }
        let payload = [UInt8](repeating: 0x5A, count: 1024 * 4096)
        let batch = PageBatch(round: 1, encoding: .raw, runs: runs, uncompressedLength: 1024 * 4096, checksum: 1, payload: payload[...])
        var out: [UInt8] = []
        try Message.pageBatch(batch).encodeFrame(sequence: 0, into: &out)
        #expect(out.count == FrameHeader.size + Int(FrameType.pageBatch.maxPayloadLength(.default)))
        #expect(try Message.decodeFrame(out[...]).message == .pageBatch(batch))
    }
}

@Suite struct RestoreMessageTests {
    @Test func namesFollowTheRule() {
        for good in ["pstree.img", "core-1.img", "pages-1.img", "a", "A_b-c.d", String(repeating: "x", count: 128)] {
            #expect(RestoreFileName.isValid(good.utf8), "\(good)")
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "../x", "x y", "é.img", String(repeating: "x", count: 129), "a\u{0}b"] {
            #expect(!RestoreFileName.isValid(bad.utf8), "\(bad)")
        }
    }

    @Test func roundTripAndRefusals() throws {
        for m: Message in [
            .restoreFile(RestoreFile(name: "mm-1.img", offset: 0, data: [])),
            .restoreFile(RestoreFile(name: "pages-1.img", offset: 1 << 20, data: ArraySlice([UInt8](repeating: 7, count: RestoreFile.maxChunk)))),
            .restoreBegin(RestoreBegin(fileCount: 0, options: [.tcpClose, .rewrite], totalBytes: 0)),
            .restoreDone(RestoreDone(pid: 1, restoreMicros: 0, completeMicros: .max)),
        ] {
            var out: [UInt8] = []
            try m.encodeFrame(sequence: 3, into: &out)
            let (header, decoded, used) = try Message.decodeFrame(out[...])
            #expect(header.sequence == 3 && used == out.count && decoded == m)
        }
        var out: [UInt8] = []
        #expect(throws: WireError.invalidFileName) { try Message.restoreFile(RestoreFile(name: "../etc/passwd", offset: 0, data: [])).encodeFrame(sequence: 0, into: &out) }
        #expect(throws: WireError.self) { try Message.restoreFile(RestoreFile(name: "x", offset: 0, data: ArraySlice([UInt8](repeating: 0, count: RestoreFile.maxChunk + 1)))).encodeFrame(sequence: 0, into: &out) }
        #expect(throws: WireError.self) { try Message.restoreBegin(RestoreBegin(fileCount: 1, options: [.tcpClose, .tcpEstablished], totalBytes: 0)).encodeFrame(sequence: 0, into: &out) }
        #expect(throws: WireError.invalidPID) { try Message.restoreDone(RestoreDone(pid: 0, restoreMicros: 0, completeMicros: 0)).encodeFrame(sequence: 0, into: &out) }
        #expect(out.isEmpty)
        // A name with a slash, by hand: the decoder refuses it.
        var payload: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]
        payload += Array("a/b".utf8)
        #expect(throws: WireError.invalidFileName) { try Message.decode(type: .restoreFile, payload: payload[...]) }
    }
}

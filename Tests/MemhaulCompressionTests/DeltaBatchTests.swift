import Testing
@testable import MemhaulCompression

/// PAGE_BATCH encoding 2 payloads (wire.md, PAGE_BATCH): per page a tag, then a delta or the page.
@Suite struct DeltaBatchTests {
    static func page(_ seed: UInt8) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) } }
    static func field(_ page: [UInt8], at offset: Int, _ value: UInt8) -> [UInt8] {
        var p = page
        for i in offset..<(offset + 8) { p[i] = value }
        return p
    }

    @Test func mixedBatchRoundTrips() throws {
        let old = [Self.page(1), Self.page(2), Self.page(3)]
        let new = [Self.field(old[0], at: 64, 0xEE), Self.page(9), Self.field(old[2], at: 4088, 0x01)]
        // Page 1 has no base (never sent): whole.
        let bases: [[UInt8]?] = [old[0], nil, old[2]]
        let (payload, deltas) = try #require(DeltaBatch.encode(pages: new, bases: bases))
        #expect(deltas == 2)
        #expect(payload.count == (2 + 10) + (2 + 4096) + (2 + 11))  // 4088 takes a 2-byte length
        #expect(Array(payload[0..<2]) == [10, 0])
        #expect(Array(payload[12..<14]) == [0xFF, 0xFF])
        #expect(try DeltaBatch.decode(payload, bases: bases) == new)
    }

    @Test func aPageThatChangedMuchGoesWhole() throws {
        let old = Self.page(1)
        let new = Self.page(200)  // every byte differs: the delta would pass half a page
        let (payload, deltas) = try #require(DeltaBatch.encode(pages: [new, new], bases: [old, old]))
        #expect(deltas == 0)
        #expect(payload.count == 2 * (2 + 4096))
        #expect(try DeltaBatch.decode(payload, bases: [old, old]) == [new, new])
    }

    @Test func encoderGivesUpAtTheLimit() throws {
        let old = Self.page(1)
        let new = Self.field(old, at: 0, 9)
        #expect(DeltaBatch.encode(pages: [new], bases: [old], limit: 12) == nil)  // 12 bytes exactly: not smaller
        #expect(DeltaBatch.encode(pages: [new], bases: [old], limit: 13)?.payload.count == 12)
        #expect(DeltaBatch.encode(pages: [new], bases: [nil], limit: 4098) == nil)
    }

    @Test func malformedPayloadsAreRefused() throws {
        let base = Self.page(1)
        #expect(throws: DeltaBatchError.truncated(page: 0)) { try DeltaBatch.decode([0x01], bases: [base]) }
        #expect(throws: DeltaBatchError.truncated(page: 0)) { try DeltaBatch.decode([0xFF, 0xFF, 1, 2], bases: [base]) }
        #expect(throws: DeltaBatchError.truncated(page: 0)) { try DeltaBatch.decode([0x05, 0x00, 0x00, 0x01], bases: [base]) }
        #expect(throws: DeltaBatchError.badTag(page: 0, tag: 2049)) { try DeltaBatch.decode([0x01, 0x08] + [UInt8](repeating: 1, count: 2049), bases: [base]) }
        #expect(throws: DeltaBatchError.noBase(page: 0)) { try DeltaBatch.decode([0x03, 0x00, 0x00, 0x01, 0x07], bases: [nil]) }
        #expect(throws: DeltaBatchError.badDelta(page: 0, .emptyRun(offset: 1))) { try DeltaBatch.decode([0x02, 0x00, 0x00, 0x00], bases: [base]) }
        #expect(throws: DeltaBatchError.trailingBytes(count: 1)) { try DeltaBatch.decode([0x00, 0x00, 0x00], bases: [base]) }
        #expect(throws: DeltaBatchError.truncated(page: 1)) { try DeltaBatch.decode([0x00, 0x00], bases: [base, base]) }
        // An empty delta: the page is unchanged.
        #expect(try DeltaBatch.decode([0x00, 0x00], bases: [base]) == [base])
    }
}

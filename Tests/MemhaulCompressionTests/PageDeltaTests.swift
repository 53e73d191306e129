import Testing
@testable import MemhaulCompression

private let pageSize = 4096

/// A seeded xorshift so a failing case reproduces.
private struct Xorshift {
    var state: UInt64
    mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func page() -> [UInt8] { (0..<pageSize).map { _ in UInt8(truncatingIfNeeded: next()) } }
}

private func roundTrip(_ old: [UInt8], _ new: [UInt8], limit: Int = PageDelta.defaultLimit) throws -> [UInt8]? {
    guard let delta = PageDelta.encode(old: old, new: new, limit: limit) else { return nil }
    #expect(delta.count <= limit)
    #expect(try PageDelta.decode(delta, old: old, limit: limit) == new)
    return delta
}

@Suite struct PageDeltaTests {
    @Test func identicalPageIsEmpty() throws {
        var rng = Xorshift(state: 1)
        let page = rng.page()
        #expect(try roundTrip(page, page) == [])
    }

    @Test func fewBytesChangedRoundTripAndAreSmall() throws {
        var rng = Xorshift(state: 2)
        for _ in 0..<200 {
            let old = rng.page()
            var new = old
            for _ in 0..<(1 + rng.below(16)) { new[rng.below(pageSize)] &+= UInt8(1 + rng.below(255)) }
            let delta = try #require(try roundTrip(old, new))
            #expect(delta.count < 16 * 5)
        }
    }

    @Test func structuredChangesRoundTrip() throws {
        var rng = Xorshift(state: 3)
        // A key-value page: 64-byte records, an 8-byte counter rewritten in each.
        let old = (0..<pageSize).map { UInt8(truncatingIfNeeded: $0 / 64) }
        var new = old
        for record in stride(from: 0, to: pageSize, by: 64) {
            for b in 0..<8 { new[record + 56 + b] = UInt8(truncatingIfNeeded: rng.next()) | 1 }
        }
        let delta = try #require(try roundTrip(old, new))
        #expect(delta.count == 64 * (2 + 8) - 0)
        // Changes at both ends of the page.
        var edges = old
        edges[0] ^= 0xFF
        edges[pageSize - 1] ^= 0xFF
        #expect(try roundTrip(old, edges) == [0, 1, 0xFF ^ old[0], 0xFE, 0x1F, 1, 0xFF ^ old[pageSize - 1]])
    }

    @Test func randomChangesRoundTripOrFallBack() throws {
        var rng = Xorshift(state: 4)
        var encoded = 0
        for _ in 0..<300 {
            let old = rng.page()
            var new = old
            let span = rng.below(pageSize)
            let start = rng.below(pageSize - span + 1)
            for i in start..<(start + span) where rng.below(3) == 0 { new[i] = UInt8(truncatingIfNeeded: rng.next()) }
            if try roundTrip(old, new, limit: pageSize) != nil { encoded += 1 }
        }
        #expect(encoded > 0)
    }

    @Test func everyByteChangedFallsBack() throws {
        let old = [UInt8](repeating: 0, count: pageSize)
        let new = [UInt8](repeating: 1, count: pageSize)
        #expect(PageDelta.encode(old: old, new: new) == nil)
        #expect(PageDelta.encode(old: old, new: new, limit: pageSize) == nil)  // 4096 + 3 bytes
        #expect(try roundTrip(old, new, limit: pageSize + 3)?.count == pageSize + 3)
    }

    @Test func decoderRefusesMalformedInput() {
        let old = [UInt8](repeating: 7, count: pageSize)
        func refusal(_ delta: [UInt8], limit: Int = PageDelta.defaultLimit) -> PageDeltaError? {
            do {
                _ = try PageDelta.decode(delta, old: old, limit: limit)
                return nil
            } catch { return error }
        }
        #expect(refusal([0]) == .truncated(offset: 1))                     // no changed length
        #expect(refusal([0x80]) == .truncated(offset: 0))                  // varint cut
        #expect(refusal([0, 3, 1, 2]) == .truncated(offset: 2))            // literal cut
        #expect(refusal([0x80, 0x00, 1, 1]) == .overlongVarint(offset: 0)) // non-shortest
        #expect(refusal([0x80, 0x80, 0x01]) == .overlongVarint(offset: 0)) // 3 bytes
        #expect(refusal([0, 0]) == .emptyRun(offset: 1))                   // empty changed run
        #expect(refusal([0, 1, 9, 0, 1, 9]) == .emptyRun(offset: 3))       // empty unchanged run after the first
        #expect(refusal([0x80, 0x20, 1, 9]) == .runPastPageEnd(offset: 0)) // unchanged run = page
        #expect(refusal([0xFF, 0x1F, 2, 9, 9]) == .runPastPageEnd(offset: 2)) // changed run past the end
        #expect(refusal([0xFF, 0x1F, 1, 9, 0]) == .trailingBytes(offset: 4))
        #expect(refusal([UInt8](repeating: 0, count: 10), limit: 9) == .tooLong(length: 10, limit: 9))
        // The whole page as one changed run is well-formed.
        #expect(refusal([0, 0x80, 0x20] + [UInt8](repeating: 1, count: pageSize), limit: pageSize + 3) == nil)
    }

    @Test func decoderRefusesEveryTruncationOfAValidDelta() throws {
        var rng = Xorshift(state: 5)
        let old = rng.page()
        var new = old
        for i in stride(from: 100, to: pageSize, by: 300) { new[i] ^= 0x5A; new[i + 1] ^= 0x5A }
        let delta = try #require(PageDelta.encode(old: old, new: new))
        for cut in 1..<delta.count {
            let prefix = Array(delta[0..<cut])
            // A prefix ending on a pair boundary is a valid (different) delta; any other must be refused.
            if let page = try? PageDelta.decode(prefix, old: old) { #expect(page != new) }
        }
    }
}

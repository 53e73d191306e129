import Testing
@testable import MemhaulDigest

/// Digest v3 (the ledger digest). Vectors computed once with libxxhash 0.8.1
/// through Python ctypes (`XXH3_128bits_withSeed(page, 4096, address)` per
/// non-zero page, summed mod 2^128; then `XXH3_128bits` of
/// `MEMHAUL-LEDGER3\0` + `'R' start end`… + `'N' pages` + `'S' sumHigh sumLow`).
@Suite struct PageLedgerTests {
    static let pattern: [UInt8] = (0..<4096).map { UInt8($0 % 251) }
    static let ab = [UInt8](repeating: 0xAB, count: 4096)
    static let zero = [UInt8](repeating: 0, count: 4096)
    static let layout: [Range<UInt64>] = [0x10000..<0x13000, 0x7f00_0000_0000..<0x7f00_0000_2000]

    @Test func emptyLedgerIsTheReferenceVector() {
        #expect(PageLedger().digest(layout: []).hex == "867d0d1849ce7d339f786c6018c96853")
        #expect(PageLedger().digest(layout: []).version == .v3)
    }

    /// Region A: pattern, a zero page, 0xAB…; region B: two zero pages.
    @Test func ledgerAndStreamedV3AgreeOnTheReferenceVector() throws {
        let ledger = PageLedger()
        try (Self.pattern + Self.zero + Self.ab).withUnsafeBytes { try ledger.record(address: 0x10000, pages: $0) }
        #expect(ledger.pageCount == 2)
        #expect(ledger.digest(layout: Self.layout).hex == "87ba3a3722d112bda2704680ba9a5531")

        let d = MemoryDigester(version: .v3)
        d.beginRegion(start: 0x10000, end: 0x13000)
        Self.pattern.withUnsafeBytes { d.update($0) }
        d.updateZeros(count: 4096)
        // Updates need not be page-aligned.
        Self.ab.withUnsafeBytes { d.update(UnsafeRawBufferPointer(rebasing: $0[0..<100])); d.update(UnsafeRawBufferPointer(rebasing: $0[100...])) }
        d.beginRegion(start: 0x7f00_0000_0000, end: 0x7f00_0000_2000)
        d.updateZeros(count: 2 * 4096)
        #expect(d.finalize().hex == "87ba3a3722d112bda2704680ba9a5531")
    }

    /// The order of changes does not matter, only the final content: an
    /// overwrite takes the old hash out, a zero page or a clear removes it.
    @Test func overwritesZeroingAndClearsFollowTheContent() throws {
        let ledger = PageLedger()
        try Self.ab.withUnsafeBytes { try ledger.record(address: 0x10000, pages: $0) }
        try Self.ab.withUnsafeBytes { try ledger.record(address: 0x11000, pages: $0) }
        try Self.ab.withUnsafeBytes { try ledger.record(address: 0x7f00_0000_0000, pages: $0) }
        try Self.pattern.withUnsafeBytes { try ledger.record(address: 0x10000, pages: $0) }  // overwrite
        try Self.zero.withUnsafeBytes { try ledger.record(address: 0x11000, pages: $0) }  // zeroed
        try Self.ab.withUnsafeBytes { try ledger.record(address: 0x12000, pages: $0) }
        ledger.clear(0x7f00_0000_0000..<0x7f00_0000_2000)  // discarded
        #expect(ledger.digest(layout: Self.layout).hex == "87ba3a3722d112bda2704680ba9a5531")
    }

    /// A layout change drops what lies outside the new layout, whether the
    /// ledger knew the old layout (it walks the removed pages) or not.
    @Test func restrictDropsPagesOutsideTheLayout() throws {
        for knowsLayout in [false, true] {
            let ledger = PageLedger()
            if knowsLayout { ledger.restrict(to: Self.layout + [0x7f00_0001_0000..<0x7f00_0001_1000]) }
            try (Self.pattern + Self.zero + Self.ab).withUnsafeBytes { try ledger.record(address: 0x10000, pages: $0) }
            try Self.ab.withUnsafeBytes { try ledger.record(address: 0x7f00_0001_0000, pages: $0) }
            #expect(ledger.pageCount == 3)
            ledger.restrict(to: Self.layout)
            #expect(ledger.pageCount == 2)
            #expect(ledger.digest(layout: Self.layout).hex == "87ba3a3722d112bda2704680ba9a5531")
        }
    }

    /// A receiver's round: staged changes count only once committed; an aborted round leaves no trace.
    @Test func stagedRoundsCommitOrVanish() throws {
        let ledger = PageLedger()
        try (Self.pattern + Self.zero + Self.ab).withUnsafeBytes { try ledger.record(address: 0x10000, pages: $0) }
        let committed = ledger.digest(layout: Self.layout)
        ledger.beginRound()
        try Self.pattern.withUnsafeBytes { try ledger.record(address: 0x11000, pages: $0) }
        ledger.clear(0x10000..<0x11000)
        #expect(ledger.digest(layout: Self.layout) == committed)
        ledger.abortRound()
        #expect(ledger.digest(layout: Self.layout) == committed)
        ledger.beginRound()
        ledger.clear(0x12000..<0x13000)
        try ledger.commitRound()
        #expect(ledger.pageCount == 1)
        #expect(ledger.digest(layout: Self.layout) != committed)
    }

    /// A rebuild from content (what a resumed receiver does from its image) yields the same ledger.
    @Test func streamedV3RecordsALedger() throws {
        let rebuilt = PageLedger()
        let d = MemoryDigester(version: .v3, recording: rebuilt)
        d.beginRegion(start: 0x10000, end: 0x13000)
        (Self.pattern + Self.zero + Self.ab).withUnsafeBytes { d.update($0) }
        d.beginRegion(start: 0x7f00_0000_0000, end: 0x7f00_0000_2000)
        d.updateZeros(count: 2 * 4096)
        #expect(d.finalize() == rebuilt.digest(layout: Self.layout))
        // Then it follows changes like any ledger.
        try Self.ab.withUnsafeBytes { try rebuilt.record(address: 0x10000, pages: $0) }
        try Self.pattern.withUnsafeBytes { try rebuilt.record(address: 0x10000, pages: $0) }
        #expect(rebuilt.digest(layout: Self.layout).hex == "87ba3a3722d112bda2704680ba9a5531")
    }

    @Test func theLedgerIsBounded() throws {
        let ledger = PageLedger(maxPages: 2)
        try (Self.pattern + Self.ab).withUnsafeBytes { try ledger.record(address: 0x10000, pages: $0) }
        #expect(throws: PageLedger.Full.self) { try Self.ab.withUnsafeBytes { try ledger.record(address: 0x20000, pages: $0) } }
        #expect(ledger.pageCount == 2)
        // Overwriting a page it holds is no growth.
        try Self.ab.withUnsafeBytes { try ledger.record(address: 0x10000, pages: $0) }
    }

    @Test func subtractingRanges() {
        let a: [Range<UInt64>] = [0..<100, 200..<300, 400..<500]
        let b: [Range<UInt64>] = [50..<250, 260..<270, 400..<500]
        #expect(PageLedger.subtracting(b, from: a) == [0..<50, 250..<260, 270..<300])
        #expect(PageLedger.subtracting([], from: a) == a)
        #expect(PageLedger.subtracting(a, from: a) == [])
    }

    @Test func sumsCarry() {
        var s = LedgerSum(high: 0, low: .max)
        s += LedgerSum(high: 0, low: 1)
        #expect(s == LedgerSum(high: 1, low: 0))
        s -= LedgerSum(high: 0, low: 1)
        #expect(s == LedgerSum(high: 0, low: .max))
    }
}

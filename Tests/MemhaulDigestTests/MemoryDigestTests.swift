import Testing
@testable import MemhaulDigest

/// Expected values computed once with python-xxhash 3.x (`xxhash.xxh3_128_hexdigest`)
/// over the canonical byte stream; see the comment on each test.
@Suite struct MemoryDigestTests {
    static let pattern: [UInt8] = (0..<4096).map { UInt8($0 % 251) }

    @Test func emptyInputIsTheReferenceVector() {
        // xxh3_128_hexdigest(b'')
        #expect(MemoryDigester().finalize().hex == "99aa06d3014798d86001c324468d497f")
    }

    @Test func shortInputMatchesReference() {
        let d = MemoryDigester()
        Array("abc".utf8).withUnsafeBytes { d.update($0) }
        // xxh3_128_hexdigest(b'abc')
        #expect(d.finalize().hex == "06b05ab6733a618578af5f94892f3950")
        Array("abc".utf8).withUnsafeBytes { #expect(PageChecksum.xxh3_64($0) == 0x78af_5f94_892f_3950) }
    }

    /// pack('<QQ',0x10000,0x11000) + pattern + pack('<QQ',0x7f0000000000,0x7f0000003000) + 3 zero pages
    @Test func canonicalFormOfTwoRegions() {
        let d = MemoryDigester()
        d.beginRegion(start: 0x10000, end: 0x11000)
        Self.pattern.withUnsafeBytes { d.update($0) }
        d.beginRegion(start: 0x7f00_0000_0000, end: 0x7f00_0000_3000)
        d.updateZeros(count: 3 * 4096)
        #expect(d.finalize().hex == "39d735adb1b5d3578472e02a41a5f57b")
        // finalize does not consume the state
        #expect(d.finalize().hex == "39d735adb1b5d3578472e02a41a5f57b")
    }

    @Test func regionFramingChangesTheDigest() {
        let d = MemoryDigester()
        d.beginRegion(start: 0x10000, end: 0x11000)
        Self.pattern.withUnsafeBytes { d.update($0) }
        d.beginRegion(start: 0x7f00_0000_0000, end: 0x7f00_0000_2000)
        d.updateZeros(count: 2 * 4096)
        d.beginRegion(start: 0x7f00_0000_2000, end: 0x7f00_0000_3000)
        d.updateZeros(count: 4096)
        let split = d.finalize()
        #expect(split.hex == "71d67fc4295ac6274e310793f70ed380")
        #expect(split != MemoryDigest(hex: "39d735adb1b5d3578472e02a41a5f57b"))
    }

    @Test func zerosAndUpdateZerosAgree() {
        // 1 MiB + 3 bytes crosses the 64 KiB zero buffer several times and ends unaligned.
        let n = (1 << 20) + 3
        let a = MemoryDigester()
        a.beginRegion(start: 0x400000, end: 0x400000 + UInt64(n))
        a.updateZeros(count: n)
        let b = MemoryDigester()
        b.beginRegion(start: 0x400000, end: 0x400000 + UInt64(n))
        [UInt8](repeating: 0, count: n).withUnsafeBytes { b.update($0) }
        // Uneven pieces through updateZeros must equal one piece.
        let c = MemoryDigester()
        c.beginRegion(start: 0x400000, end: 0x400000 + UInt64(n))
        for piece in [1, 4095, 70_000, 65_536] { c.updateZeros(count: piece) }
        c.updateZeros(count: n - (1 + 4095 + 70_000 + 65_536))
        #expect(a.finalize() == b.finalize())
        #expect(a.finalize() == c.finalize())
        #expect(a.finalize().hex == "08092af204d08f5516c17f9b62fbab57")
    }

    @Test func hexRoundTripsAndRejectsGarbage() {
        let d = MemoryDigest(high: 0x0123_4567_89ab_cdef, low: 0xfedc_ba98_7654_3210)
        #expect(d.hex == "0123456789abcdeffedcba9876543210")
        #expect(d.description == d.hex)
        #expect(MemoryDigest(hex: d.hex) == d)
        #expect(MemoryDigest(hex: "0123456789ABCDEFFEDCBA9876543210") == d)
        #expect(MemoryDigest(hex: "0123") == nil)
        #expect(MemoryDigest(hex: "0123456789abcdeffedcba987654321g") == nil)
    }

    @Test func resetStartsOver() {
        let d = MemoryDigester()
        d.updateZeros(count: 10)
        d.reset()
        #expect(d.finalize().hex == "99aa06d3014798d86001c324468d497f")
    }

    // MARK: digest v2 (ARCHITECTURE.md "Memory digest"); vectors from libxxhash's
    // XXH3_128bits (python ctypes) over the canonical stream built by hand.

    /// b'MEMHAUL-DIGEST2\0'
    @Test func v2EmptyIsItsMagic() {
        #expect(MemoryDigester(version: .v2).finalize().hex == "102208e875cb3828d2430d1020d74829")
        #expect(MemoryDigester(version: .v2).finalize().version == .v2)
    }

    /// magic + R(0x10000,0x14000) + P pattern + Z(0x11000,2) + P pattern
    ///       + R(0x7f0000000000,0x7f0000003000) + Z(0x7f0000000000,3)
    /// Page 1 is present but all zero (fed through update), page 2 is a hole
    /// (updateZeros): both are one zero run, classified by content.
    @Test func v2CanonicalFormOfTwoRegions() {
        let zeroPage = [UInt8](repeating: 0, count: 4096)
        let d = MemoryDigester(version: .v2)
        d.beginRegion(start: 0x10000, end: 0x14000)
        Self.pattern.withUnsafeBytes { d.update($0) }
        zeroPage.withUnsafeBytes { d.update($0) }
        d.updateZeros(count: 4096)
        Self.pattern.withUnsafeBytes { d.update($0) }
        d.beginRegion(start: 0x7f00_0000_0000, end: 0x7f00_0000_3000)
        d.updateZeros(count: 3 * 4096)
        #expect(d.finalize().hex == "e65f8a5d81e18341d61e97c05d270072")
        #expect(d.finalize().hex == "e65f8a5d81e18341d61e97c05d270072", "finalize does not consume the state")

        // Any split of the same bytes, pages straddling updates, gives the same digest.
        var bytes = Self.pattern + zeroPage + zeroPage + Self.pattern
        let e = MemoryDigester(version: .v2)
        e.beginRegion(start: 0x10000, end: 0x14000)
        var at = 0
        for piece in [1, 4094, 3, 5000, 100] {
            bytes.withUnsafeBytes { e.update(UnsafeRawBufferPointer(rebasing: $0[at..<at + piece])) }
            at += piece
        }
        bytes.withUnsafeBytes { e.update(UnsafeRawBufferPointer(rebasing: $0[at...])) }
        e.beginRegion(start: 0x7f00_0000_0000, end: 0x7f00_0000_3000)
        e.updateZeros(count: 10)
        e.updateZeros(count: 3 * 4096 - 10)
        #expect(e.finalize() == d.finalize())
        bytes[0] ^= 1
        #expect(MemoryDigester(version: .v2).finalize() != d.finalize())
    }

    /// 1000 regions of 8 TiB, all zero: v2 costs O(regions), not 8 PiB of hashing.
    /// magic + for i in 0..<1000: R(s, s+8TiB) + Z(s, 8TiB/4096), s = 2^44 + i * 16 TiB
    @Test func v2HugeEmptyLayoutIsConstantPerRegion() {
        let d = MemoryDigester(version: .v2)
        let t: UInt64 = 8 << 40
        for i in 0..<UInt64(1000) {
            let s = (1 << 44) + i * 2 * t
            d.beginRegion(start: s, end: s + t)
            d.updateZeros(count: Int(t))
        }
        #expect(d.finalize().hex == "bc8f3dc16bcafc65aed0cfcedae7d33a")
    }

    @Test func versionsNeverCompareEqual() {
        let a = MemoryDigest(high: 1, low: 2, version: .v1)
        #expect(a != MemoryDigest(high: 1, low: 2, version: .v2))
        #expect(MemoryDigester(version: .v2).finalize() != MemoryDigester().finalize())
    }
}

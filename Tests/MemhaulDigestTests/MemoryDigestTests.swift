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
}

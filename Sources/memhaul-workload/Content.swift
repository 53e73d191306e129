/// Page content generators: text-like pages (a small vocabulary, ~3.4x with
/// zstd -1) and random pages (xorshift, incompressible).

/// xorshift64* PRNG.
struct XorShift {
    var state: UInt64
    init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    @inline(__always) mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 2_685_821_657_736_338_717
    }
    @inline(__always) mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    @inline(__always) mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}

enum PageKind: UInt8 {
    case zero = 0, text = 1, random = 2
}

enum Content {
    static let pageSize = 4096

    static let vocabulary: [[UInt8]] = """
        the of and to in is was for on that with as by at from his her it an are were which this be or has had \
        not but first also new other after one two its their who been may year time all over more most some into \
        such state where made world between when these city during used part three both national later about \
        would under known being many
        """.split(separator: " ").map { Array($0.utf8) + [0x20] }

    /// Deterministic kind of main page `index` for a mix in percent.
    static func kind(index: Int, seed: UInt64, mix: (zero: Int, text: Int, random: Int)) -> PageKind {
        var r = XorShift(seed: seed &+ UInt64(index) &* 0x1000_0000_01B3)
        let total = mix.zero + mix.text + mix.random
        let v = r.below(total)
        if v < mix.zero { return .zero }
        if v < mix.zero + mix.text { return .text }
        return .random
    }

    /// The vocabulary flattened: word `i` is `wordBytes[wordStart[i]..<wordStart[i+1]]`.
    static let wordBytes: [UInt8] = vocabulary.flatMap { $0 }
    static let wordStart: [Int] = vocabulary.reduce(into: [0]) { $0.append($0.last! + $1.count) }

    /// Fills a page with words from the vocabulary (a fresh draw per page, so
    /// pages do not repeat each other).
    static func fillText(_ page: UnsafeMutableRawPointer, _ rng: inout XorShift) {
        let p = page.assumingMemoryBound(to: UInt8.self)
        let count = vocabulary.count
        wordBytes.withUnsafeBufferPointer { bytes in
            wordStart.withUnsafeBufferPointer { start in
                var off = 0
                var bits: UInt64 = 0
                var left = 0
                while off < pageSize {
                    if left == 0 {
                        bits = rng.next()
                        left = 8
                    }
                    let w = Int(bits & 0xff) % count
                    bits >>= 8
                    left -= 1
                    let s = start[w]
                    let n = min(start[w + 1] - s, pageSize - off)
                    (p + off).update(from: bytes.baseAddress! + s, count: n)
                    off += n
                }
            }
        }
    }

    /// Fills a page with PRNG output.
    static func fillRandom(_ page: UnsafeMutableRawPointer, _ rng: inout XorShift) {
        let p = page.assumingMemoryBound(to: UInt64.self)
        for i in 0..<(pageSize / 8) { p[i] = rng.next() }
    }

    /// A write: bumps the page's counter word and rewrites a few bytes in the
    /// page's own style (a word for text and zero pages, random bytes otherwise).
    /// A key-value update: one 8-byte field (a counter or timestamp) of one of the page's
    /// 64-byte values gets a new value; the other 4088 bytes stay as they were.
    static func updateField(_ page: UnsafeMutableRawPointer, _ rng: inout XorShift) {
        (page + rng.below(pageSize / 64) * 64).storeBytes(of: rng.next(), as: UInt64.self)
    }

    static func mutate(_ page: UnsafeMutableRawPointer, kind: PageKind, _ rng: inout XorShift) {
        let words = page.assumingMemoryBound(to: UInt64.self)
        words[0] &+= 1
        let off = 8 + rng.below(pageSize - 8 - 16)
        switch kind {
        case .random:
            (page + off).storeBytes(of: rng.next(), as: UInt64.self)
            (page + off + 8).storeBytes(of: rng.next(), as: UInt64.self)
        case .text, .zero:
            let w = vocabulary[rng.below(vocabulary.count)]
            let p = (page + off).assumingMemoryBound(to: UInt8.self)
            w.withUnsafeBufferPointer { p.update(from: $0.baseAddress!, count: min(w.count, 16)) }
        }
    }
}

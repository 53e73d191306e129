#if canImport(Glibc)
import Glibc
#endif
import MemhaulCompression
import MemhaulSystem

/// Deterministic test/bench page content: zero, text-like and random pages.
public enum MixedPages {
    /// Percentages of each kind of page; they need not add up to 100 (they are weights).
    public struct Mix: Sendable, Equatable {
        public var zero: Int
        public var text: Int
        public var random: Int
        public init(zero: Int, text: Int, random: Int) {
            self.zero = zero
            self.text = text
            self.random = random
        }
        public static let `default` = Mix(zero: 30, text: 40, random: 30)
    }

    /// Fills `buffer` (whole pages) with pages drawn by `mix`, reproducibly from `seed`.
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer, mix: Mix = .default, seed: UInt64 = 1) {
        let pageSize = PageClassifier.pageSize
        var rng = SplitMix64(seed: seed)
        let total = max(mix.zero + mix.text + mix.random, 1)
        for page in 0..<(buffer.count / pageSize) {
            let p = UnsafeMutableRawBufferPointer(rebasing: buffer[(page * pageSize)..<((page + 1) * pageSize)])
            let pick = Int(rng.next() % UInt64(total))
            if pick < mix.zero {
                p.initializeMemory(as: UInt8.self, repeating: 0)
            } else if pick < mix.zero + mix.text {
                fillText(p, &rng)
            } else {
                fillRandom(p, &rng)
            }
        }
    }

    /// A freshly allocated buffer of `pages` pages filled by ``fill(_:mix:seed:)``.
    public static func make(pages: Int, mix: Mix = .default, seed: UInt64 = 1) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: pages * PageClassifier.pageSize)
        bytes.withUnsafeMutableBytes { fill($0, mix: mix, seed: seed) }
        return bytes
    }

    static let words: [[UInt8]] = """
        the of and to in is that for it as was with be by on not he this are or his from at which but \
        have an they you were their one all we can her has there been if more when will would who so no \
        memory page process kernel migration round dirty sender receiver socket buffer region address \
        error value return struct static const void unsigned int size_t length offset count index
        """.split(separator: " ").map { Array($0.utf8) }

    static func fillText(_ p: UnsafeMutableRawBufferPointer, _ rng: inout SplitMix64) {
        var i = 0
        while i < p.count {
            let r = rng.next()
            let word = words[Int(r % UInt64(words.count))]
            for c in word where i < p.count {
                p[i] = c
                i += 1
            }
            if i < p.count {
                p[i] = (r >> 32) % 11 == 0 ? UInt8(ascii: "\n") : UInt8(ascii: " ")
                i += 1
            }
        }
    }

    static func fillRandom(_ p: UnsafeMutableRawBufferPointer, _ rng: inout SplitMix64) {
        var i = 0
        while i + 8 <= p.count {
            p.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < p.count {
            p[i] = UInt8(truncatingIfNeeded: rng.next())
            i += 1
        }
    }
}

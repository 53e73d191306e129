import ArgumentParser
import Foundation
import MemhaulSender

/// A size or a rate in bytes, as every byte option takes it: a number with an
/// optional binary suffix, K, M, G or T (also KiB…, KB…; all powers of 1024),
/// hex with 0x, and for rates an optional `/s`: `100M`, `1.5G`, `64KiB`,
/// `0x1000`, `100M/s`, `4096`.
struct ByteCount: ExpressibleByArgument, Equatable, CustomStringConvertible, Sendable {
    var bytes: UInt64

    init(_ bytes: UInt64) { self.bytes = bytes }

    init?(argument: String) {
        guard let bytes = Self.parse(argument) else { return nil }
        self.bytes = bytes
    }

    var description: String { ByteFormat.compact(bytes) }
    var defaultValueDescription: String { description }

    static func parse(_ text: String) -> UInt64? {
        var s = Substring(text.trimmingCharacters(in: .whitespaces).lowercased())
        if s.hasSuffix("/s") { s = s.dropLast(2) }
        if s.hasPrefix("0x") { return UInt64(s.dropFirst(2), radix: 16) }
        if s.hasSuffix("ib") { s = s.dropLast(2) } else if s.hasSuffix("b"), s.count > 1, s.dropLast().last?.isLetter == true { s = s.dropLast() }
        let units: [Character: Double] = ["k": 0x1p10, "m": 0x1p20, "g": 0x1p30, "t": 0x1p40]
        var scale = 1.0
        if let last = s.last, let unit = units[last] { scale = unit; s = s.dropLast() }
        if scale == 1 { return UInt64(s) }
        guard let value = Double(s), value >= 0, value.isFinite else { return nil }
        let bytes = (value * scale).rounded()
        return bytes < 0x1p64 ? UInt64(bytes) : nil
    }
}

extension ByteFormat {
    /// The shortest exact form a ByteCount reads back: `100M`, `1536K`, `4097`.
    static func compact(_ bytes: UInt64) -> String {
        for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where bytes != 0 && bytes % (1 << UInt64(shift)) == 0 {
            return "\(bytes >> UInt64(shift))\(suffix)"
        }
        return "\(bytes)"
    }
}

import MemhaulSystem
import CXXHash
import Foundation
import Glibc
import MemhaulDigest
@testable import MemhaulImage

let page = Int(imagePageSize)


/// A simple model of image memory: page address -> page bytes (absent = zeros).
struct MemoryModel {
    var pages: [UInt64: [UInt8]] = [:]
    var layout: [ImageRegion] = []

    mutating func setLayout(_ regions: [ImageRegion]) {
        layout = regions.sorted { $0.start < $1.start }
        pages = pages.filter { a, _ in layout.contains { $0.start <= a && a < $0.end } }
    }
    mutating func write(_ address: UInt64, _ bytes: [UInt8]) {
        for i in stride(from: 0, to: bytes.count, by: page) { pages[address + UInt64(i)] = Array(bytes[i..<i + page]) }
    }
    mutating func clear(_ range: AddressRange) {
        var a = range.start
        while a < range.end {
            pages[a] = nil
            a += imagePageSize
        }
    }
    func bytes(_ start: UInt64, _ end: UInt64) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(end - start))
        var a = start
        while a < end {
            if let p = pages[a] { out.replaceSubrange(Int(a - start)..<Int(a - start) + page, with: p) }
            a += imagePageSize
        }
        return out
    }
    /// The canonical form hashed in one shot with XXH3_128bits: independent of MemoryDigester.
    func digest() -> MemoryDigest { independentDigest(layout) { bytes($0, $1) } }
}

func independentDigest(_ layout: [ImageRegion], _ bytes: (UInt64, UInt64) -> [UInt8]) -> MemoryDigest {
    var canonical: [UInt8] = []
    for r in layout {
        withUnsafeBytes(of: r.start.littleEndian) { canonical += $0 }
        withUnsafeBytes(of: r.end.littleEndian) { canonical += $0 }
        canonical += bytes(r.start, r.end)
    }
    let h = canonical.withUnsafeBytes { XXH3_128bits($0.baseAddress, $0.count) }
    return MemoryDigest(high: h.high64, low: h.low64)
}

/// Deterministic page content.
func pageBytes(_ seed: UInt64, pages: Int) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8](repeating: 0, count: pages * page)
    out.withUnsafeMutableBytes { p in
        let words = p.bindMemory(to: UInt64.self)
        for i in words.indices {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            words[i] = x
        }
    }
    return out
}

extension ImageStore {
    func write(_ address: UInt64, _ bytes: [UInt8]) throws(ImageError) {
        let result = bytes.withUnsafeBytes { (p) -> Result<Void, ImageError> in
            do throws(ImageError) {
                try writePages(at: address, p)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// Every region of the committed layout equals the model, and so does the digest.
    func matches(_ model: MemoryModel) throws -> Bool {
        guard layout == model.layout else { return false }
        for r in layout where try readBytes(r.start, Int(r.byteCount)) != model.bytes(r.start, r.end) { return false }
        return try computeDigest() == model.digest()
    }
}

func region(_ start: UInt64, pages: Int, _ prot: ImageProtection = [.read, .write], _ name: String = "") -> ImageRegion {
    ImageRegion(start: start, end: start + UInt64(pages * page), protection: prot, name: name)
}

func memFiles(_ dir: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasPrefix("mem-") }.sorted()
}

extension CommittedImage {
    /// `count` committed bytes from `address` (the store and the reader alike).
    func readBytes(_ address: UInt64, _ count: Int) throws(ImageError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 4096)
        defer { buffer.deallocate() }
        try read(at: address, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]))
        return Array(buffer[0..<count])
    }
}

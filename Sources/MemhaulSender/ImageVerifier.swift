import MemhaulCompression
import MemhaulImage
import MemhaulKernel
import MemhaulSystem
#if canImport(Glibc)
import Glibc
#endif

/// Compares an image byte for byte with a stopped process: `memhaul image verify`.
///
/// Uses the same definition as the digest: a page of the process has content
/// if it is present (and not the zero page) or swapped; every other page must
/// be zero in the image. Then coverage: no private mapping of the process
/// may hold content outside the image's layout.
public enum ImageVerifier {
    public struct Mismatch: Sendable, CustomStringConvertible {
        public var range: AddressRange
        public var reason: String
        public var description: String { "\(range): \(reason)" }
    }

    public struct Report: Sendable {
        public var regions = 0
        public var pagesCompared = 0
        public var bytesCompared: UInt64 = 0
        public var mismatches: [Mismatch] = []
        /// Mappings of the process outside the image that memhaul does not
        /// migrate by design (README "What memhaul migrates").
        public var notMigrated: [String] = []
        public var ok: Bool { mismatches.isEmpty }
    }

    /// `pid` must be stopped (or otherwise not writing), or the comparison races.
    public static func verify(_ store: some CommittedImage, pid: Int32, maxMismatches: Int = 16) throws -> Report {
        let scanner = try PagemapScanner(pid: pid)
        let reader = RemoteMemoryReader(pid: pid, bufferBytes: 8 << 20)
        let image = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 << 20, alignment: 4096)
        defer { image.deallocate() }
        var report = Report()
        let chunk = 8 << 20
        for region in store.layout {
            report.regions += 1
            let populated = try scanner.populated([AddressRange(start: region.start, end: region.end)])
            var address = region.start
            while address < region.end {
                let length = Int(min(UInt64(chunk), region.end - address))
                let window = AddressRange(start: address, end: address + UInt64(length))
                try store.read(at: address, into: UnsafeMutableRawBufferPointer(rebasing: image[0..<length]))
                // Pages without content in the process: the image must hold zeros.
                var cursor = window.start
                for r in populated.intersecting([window]) + [AddressRange(start: window.end, end: window.end)] {
                    if r.start > cursor {
                        let from = Int(cursor - window.start), to = Int(r.start - window.start)
                        if let bad = firstNonZeroPage(image, from, to) {
                            let at = window.start + UInt64(bad)
                            report.mismatches.append(Mismatch(range: AddressRange(start: at, pages: 1), reason: "no content in the process, non-zero in the image"))
                        }
                    }
                    cursor = max(cursor, r.end)
                }
                let have = populated.intersecting([window])
                if !have.isEmpty {
                    let result = try reader.read(have)
                    var offset = 0
                    for r in have {
                        let n = Int(r.byteCount)
                        let mine = UnsafeRawBufferPointer(rebasing: reader.buffer[offset..<(offset + n)])
                        let theirs = UnsafeRawBufferPointer(rebasing: image[Int(r.start - window.start)..<(Int(r.start - window.start) + n)])
                        if !result.vanished.isEmpty, result.vanished.contains(where: { $0.overlaps(r) }) {
                            report.mismatches.append(Mismatch(range: r, reason: "unmapped while verifying (the process is not stopped)"))
                        } else if memcmp(mine.baseAddress!, theirs.baseAddress!, n) != 0 {
                            let page = firstDifferentPage(mine, theirs)
                            report.mismatches.append(Mismatch(range: AddressRange(start: r.start + UInt64(page), pages: 1), reason: "content differs"))
                        }
                        report.pagesCompared += r.pageCount
                        report.bytesCompared += r.byteCount
                        offset += n
                    }
                }
                if report.mismatches.count >= maxMismatches { return report }
                address += UInt64(length)
            }
        }
        try checkCoverage(store, pid: pid, scanner: scanner, into: &report)
        return report
    }

    /// Independent of what the sender chose to track: every private mapping of
    /// the process with content must lie inside the image's layout. Mappings
    /// memhaul documents as not migrated (shared, kernel-provided, device
    /// memory, hugetlb) are listed in `notMigrated` instead.
    static func checkCoverage(_ store: some CommittedImage, pid: Int32, scanner: PagemapScanner, into report: inout Report) throws {
        let layout = store.layout.map { AddressRange(start: $0.start, end: $0.end) }.coalesced()
        let maps = try ProcMaps.read(pid: pid)
        let flags = try ProcMaps.readFlags(pid: pid)
        for entry in maps {
            let outside = [AddressRange(start: entry.start, end: entry.end)].subtracting(layout)
            if outside.isEmpty { continue }
            let vmFlags = flags[entry.range] ?? []
            let documented = entry.permissions.contains(.shared) || ProcMaps.kernelProvidedNames.contains(entry.path)
                || !vmFlags.isDisjoint(with: [.io, .pfnMap, .hugetlb]) || entry.path.hasPrefix("/anon_hugepage")
            if documented {
                report.notMigrated.append("\(entry.range) \(entry.permissions) \(entry.path.isEmpty ? "anon" : entry.path)")
                continue
            }
            let content = try scanner.populated(outside)
            if let first = content.first {
                report.mismatches.append(Mismatch(
                    range: first,
                    reason: "content in the process outside the image's layout: \(entry.permissions) \(entry.path.isEmpty ? "anonymous" : entry.path) not migrated"))
            }
        }
    }

    private static func firstNonZeroPage(_ b: UnsafeMutableRawBufferPointer, _ from: Int, _ to: Int) -> Int? {
        stride(from: from, to: to, by: 4096).first { i in
            !PageClassifier.isZero(page: UnsafeRawBufferPointer(rebasing: b[i..<min(i + 4096, to)]))
        }
    }

    private static func firstDifferentPage(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int {
        var i = 0
        while i < a.count {
            if memcmp(a.baseAddress! + i, b.baseAddress! + i, min(4096, a.count - i)) != 0 { return i }
            i += 4096
        }
        return 0
    }
}

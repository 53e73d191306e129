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
/// if it is present (and not the zero page) or swapped, and not a clean
/// page-cache page of a file that can be reopened; every other page must be
/// zero in the image. Then coverage: no private mapping of the process may
/// hold content outside the image's layout.
///
/// Which files cannot be reopened is decided here afresh, not taken from the
/// sender (``unreopenableFiles(pid:maps:)``): a sender that wrongly counted a
/// deleted file's or a memfd's pages as the file's fails verification.
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
        let maps = try ProcMaps.read(pid: pid)
        let fileContent = unreopenableFiles(pid: pid, maps: maps)
        for region in store.layout {
            report.regions += 1
            let populated = try scanner.populated([AddressRange(start: region.start, end: region.end)], fileContent: fileContent)
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
                            let at = r.start + UInt64(page)
                            let lost = fileContent.contains { $0.contains(at) }
                                && PageClassifier.isZero(page: UnsafeRawBufferPointer(rebasing: theirs[page..<min(page + 4096, n)]))
                            report.mismatches.append(Mismatch(
                                range: AddressRange(start: at, pages: 1),
                                reason: lost ? "content of a private mapping of a file that cannot be reopened (deleted, memfd or replaced) is zero in the image" : "content differs"))
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
        try checkCoverage(store, pid: pid, maps: maps, fileContent: fileContent, scanner: scanner, into: &report)
        if report.mismatches.count >= maxMismatches { return report }
        try checkUnresidentFilePages(
            store, pid: pid, maps: maps, fileContent: fileContent, scanner: scanner, into: &report, maxMismatches: maxMismatches)
        return report
    }

    /// A page of a mapping of a file that cannot be reopened that holds no page
    /// in the process (never read, reclaimed, or a copy-on-write copy dropped by
    /// MADV_DONTNEED) still reads as the file's bytes, and nothing but the image
    /// can provide them after the migration: where the file holds non-zero
    /// bytes the image must hold them too. The file is read through
    /// `/proc/PID/map_files/START-END` (the kernel's own file, deleted or not;
    /// pread never faults anything into the process); without access to it
    /// (CAP_CHECKPOINT_RESTORE) this check is skipped. `PROT_NONE` mappings are
    /// left out: the gaps ld.so maps between a library's segments are never
    /// read, and the sender tracks them only once they hold pages.
    static func checkUnresidentFilePages(
        _ store: some CommittedImage, pid: Int32, maps: [MapsEntry], fileContent: [AddressRange], scanner: PagemapScanner,
        into report: inout Report, maxMismatches: Int
    ) throws {
        let layout = store.layout.map { AddressRange(start: $0.start, end: $0.end) }.coalesced()
        let file = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        let image = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { file.deallocate(); image.deallocate() }
        for entry in maps where !entry.permissions.contains(.shared) && !entry.permissions.isDisjoint(with: [.read, .write, .execute])
            && fileContent.contains(where: { $0.contains(entry.range) })
        {
            if report.mismatches.count >= maxMismatches { return }
            let link = "/proc/\(pid)/map_files/\(String(entry.start, radix: 16))-\(String(entry.end, radix: 16))"
            let fd = open(link, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, UInt64(st.st_size) > entry.offset else { continue }
            // Pages past the end of the file fault with SIGBUS: nothing to hold.
            let extent = AddressRange(start: entry.start, end: min(entry.end, entry.start + PageSize.roundUp(UInt64(st.st_size) - entry.offset)))
            let resident = try scanner.populated([extent], fileContent: [extent])
            for r in [extent].subtracting(resident) {
                var at = r.start
                while at < r.end {
                    defer { at += PageSize.bytes }
                    let n = pread(fd, file.baseAddress, 4096, off_t(entry.offset + (at - entry.start)))
                    if n > 0 && n < 4096 { memset(file.baseAddress! + n, 0, 4096 - n) }
                    guard n > 0, !PageClassifier.isZero(page: UnsafeRawBufferPointer(file)) else { continue }
                    let inImage = layout.contains { $0.contains(at) }
                    if inImage { try store.read(at: at, into: image) }
                    if !inImage || memcmp(file.baseAddress!, image.baseAddress!, 4096) != 0 {
                        report.mismatches.append(Mismatch(
                            range: AddressRange(start: at, pages: 1),
                            reason: "not resident in the process and missing from the image: \(entry.path) cannot be reopened, so nothing else holds these bytes"))
                        break
                    }
                }
            }
        }
    }

    /// Private file mappings whose file cannot be opened again by its path:
    /// the verifier's own predicate, deliberately not the sender's
    /// (``ProcMaps/fileBacking(of:)`` compares the maps line with stat(path)).
    /// Here the mapped file is the kernel's: `stat(/proc/PID/map_files/START-END)`
    /// (the VMA's own file, deleted or not), compared with `stat(path)`; only
    /// without access to map_files (it needs CAP_CHECKPOINT_RESTORE) does it
    /// fall back to the device and inode of the maps line. A path that cannot
    /// be stat'ed, or names another inode, is not reopenable.
    public static func unreopenableFiles(pid: Int32, maps: [MapsEntry]) -> [AddressRange] {
        var out: [AddressRange] = []
        for entry in maps where !entry.permissions.contains(.shared) && entry.inode != 0 && !entry.path.isEmpty && !entry.isPseudo {
            var mapped = stat()
            let link = "/proc/\(pid)/map_files/\(String(entry.start, radix: 16))-\(String(entry.end, radix: 16))"
            let identity: (dev: UInt64, ino: UInt64)?
            if stat(link, &mapped) == 0 {
                identity = (UInt64(mapped.st_dev), UInt64(mapped.st_ino))
            } else {
                let parts = entry.device.split(separator: ":").compactMap { UInt64($0, radix: 16) }
                // makedev(major, minor) of glibc.
                identity = parts.count == 2
                    ? ((parts[0] & 0xfff) << 8 | (parts[0] & ~UInt64(0xfff)) << 32 | (parts[1] & 0xff) | (parts[1] & ~UInt64(0xff)) << 12, entry.inode)
                    : nil
            }
            var named = stat()
            let reopenable = identity != nil && stat(entry.path, &named) == 0
                && UInt64(named.st_dev) == identity!.dev && UInt64(named.st_ino) == identity!.ino
            if !reopenable { out.appendCoalescing(entry.range) }
        }
        return out
    }

    /// Independent of what the sender chose to track: every private mapping of
    /// the process with content must lie inside the image's layout. Mappings
    /// memhaul documents as not migrated (shared, kernel-provided, device
    /// memory, hugetlb) are listed in `notMigrated` instead.
    static func checkCoverage(
        _ store: some CommittedImage, pid: Int32, maps: [MapsEntry], fileContent: [AddressRange], scanner: PagemapScanner,
        into report: inout Report
    ) throws {
        let layout = store.layout.map { AddressRange(start: $0.start, end: $0.end) }.coalesced()
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
            let content = try scanner.populated(outside, fileContent: fileContent)
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

import CMemhaulLinux
import MemhaulKernel
import MemhaulSystem

#if canImport(Glibc)
import Glibc
#endif

/// Figures of one in-process scan benchmark (the Swift twin of pagemap_scan_probe.c).
public struct ScanBenchmarkResult: Sendable, CustomStringConvertible {
    public var sizeBytes: UInt64
    public var pages: Int
    public var dirtyPages: Int
    public var protectAllNs: UInt64
    /// Write-fault cost the tracked process pays per dirtied page.
    public var writeFaultNsPerPage: Double
    /// collectWritten over the whole region, per address-space page.
    public var scanProtectNsPerPage: Double
    public var scanRegions: Int
    public var scanIoctls: Int
    /// collectWritten again with nothing written.
    public var cleanRescanNs: UInt64
    /// pread of /proc/self/pagemap, 8 bytes per page, per page.
    public var pagemapReadNsPerPage: Double
    /// A whole DirtyTracker.nextRound (collectWritten + populated + set algebra), per page.
    public var trackerRoundNsPerPage: Double
    /// The same with `checkDiscards: false` (no populated scan).
    public var trackerFastRoundNsPerPage: Double
    /// Nothing written: a full discard-checking round (the final round's
    /// method before), and `frozenRound` (the final round's now), whole ms.
    public var idleFullWalkRoundNs: UInt64 = 0
    public var idleFrozenRoundNs: UInt64 = 0

    var idleLine: String {
        let full = Double(idleFullWalkRoundNs) / 1e6, frozen = Double(idleFrozenRoundNs) / 1e6
        func f(_ v: Double) -> String { String(Int((v * 100).rounded()) / 100) + "." + String(100 + Int((v * 100).rounded()) % 100).dropFirst() }
        return "idle final round: full walk \(f(full)) ms, changed pages (frozenRound) \(f(frozen)) ms, ratio changed/full \(f(frozen / max(1e-9, full)))"
    }

    public var description: String {
        func f(_ v: Double) -> String { String(Int((v * 10).rounded())) .withDecimal }
        return """
            region \(sizeBytes >> 20) MiB, \(pages) pages, \(dirtyPages) dirtied
            protect-all: \(f(Double(protectAllNs) / 1e6)) ms
            write fault: \(f(writeFaultNsPerPage)) ns/page
            scan+protect (collectWritten): \(f(scanProtectNsPerPage)) ns/page scanned, \(scanRegions) regions, \(scanIoctls) ioctls
            clean rescan: \(f(Double(cleanRescanNs) / 1e6)) ms
            pagemap read baseline: \(f(pagemapReadNsPerPage)) ns/page
            tracker round (scan+protect, populated, diff): \(f(trackerRoundNsPerPage)) ns/page
            tracker round without discard check: \(f(trackerFastRoundNsPerPage)) ns/page
            \(idleLine)
            scan+protect / pagemap read: \(f(scanProtectNsPerPage / pagemapReadNsPerPage * 100) ) %
            """
    }
}

extension String {
    /// "123" (tenths) -> "12.3".
    fileprivate var withDecimal: String {
        let neg = hasPrefix("-")
        var digits = neg ? String(dropFirst()) : self
        while digits.count < 2 { digits = "0" + digits }
        return (neg ? "-" : "") + digits.dropLast() + "." + digits.suffix(1)
    }
}

public enum ScanBenchmarkError: Error, CustomStringConvertible {
    case setup(String)
    public var description: String {
        switch self { case .setup(let s): return "scan benchmark: \(s)" }
    }
}

/// Runs the scan benchmark on the calling process's own memory.
public enum ScanBenchmark {
    /// Maps `sizeBytes` of anonymous memory (no THP), fills it, registers it for
    /// uffd async WP and protects it; then, `repetitions` times, writes every
    /// `dirtyStride`-th page and times `collectWritten` over the region (and a
    /// clean rescan); finally times a pagemap read of the region. Best of the
    /// repetitions is reported for each figure.
    public static func run(sizeBytes: UInt64, dirtyStride: Int, repetitions: Int = 3) throws -> ScanBenchmarkResult {
        let size = Int(PageSize.roundUp(sizeBytes))
        let pages = size / Int(PageSize.bytes)
        guard let mem = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            mem != MAP_FAILED
        else { throw ScanBenchmarkError.setup("mmap of \(size) bytes failed") }
        defer { munmap(mem, size) }
        madvise(mem, size, MADV_NOHUGEPAGE)
        memset(mem, 1, size)

        let uffd = cmh_userfaultfd(O_CLOEXEC | O_NONBLOCK)
        guard uffd >= 0 else { throw ScanBenchmarkError.setup("userfaultfd: \(Errno.current)") }
        defer { close(uffd) }
        var api = uffdio_api()
        api.api = cmh_UFFD_API
        api.features = cmh_UFFD_FEATURE_WP_ASYNC | cmh_UFFD_FEATURE_WP_UNPOPULATED
        guard cmh_ioctl_ptr(uffd, cmh_UFFDIO_API, &api) == 0 else {
            throw ScanBenchmarkError.setup("UFFDIO_API (WP_ASYNC): \(Errno.current)")
        }
        var reg = uffdio_register()
        reg.range.start = UInt64(UInt(bitPattern: mem))
        reg.range.len = UInt64(size)
        reg.mode = cmh_UFFDIO_REGISTER_MODE_WP
        guard cmh_ioctl_ptr(uffd, cmh_UFFDIO_REGISTER, &reg) == 0 else {
            throw ScanBenchmarkError.setup("UFFDIO_REGISTER: \(Errno.current)")
        }

        let pagemap = try FileDescriptor.open("/proc/self/pagemap", O_RDONLY)
        let scanner = PagemapScanner(pagemap: pagemap, vectorCapacity: 1 << 20)
        let base = UInt64(UInt(bitPattern: mem))
        let region = [AddressRange(start: base, end: base + UInt64(size))]

        var t = MonotonicClock.nanoseconds()
        try scanner.protectAll(region)
        let protectNs = MonotonicClock.nanoseconds() - t

        // Best of `repetitions` dirty-then-scan cycles (the machine is shared).
        let bytes = mem.assumingMemoryBound(to: UInt8.self)
        let stride = max(1, dirtyStride)
        let dirtied = (pages + stride - 1) / stride
        var faultNs = UInt64.max
        var scanNs = UInt64.max
        var rescanNs = UInt64.max
        var scanStats = ScanStats()
        for rep in 0..<max(1, repetitions) {
            t = MonotonicClock.nanoseconds()
            var i = 0
            while i < pages {
                bytes[i * Int(PageSize.bytes)] = UInt8(truncatingIfNeeded: rep + 2)
                i += stride
            }
            faultNs = min(faultNs, MonotonicClock.nanoseconds() - t)

            t = MonotonicClock.nanoseconds()
            let written = try scanner.collectWritten(region, populatedHint: region)
            let ns = MonotonicClock.nanoseconds() - t
            if ns < scanNs {
                scanNs = ns
                scanStats = scanner.lastStats
            }
            guard written.pageCount == dirtied else {
                throw ScanBenchmarkError.setup("collectWritten found \(written.pageCount) pages, expected \(dirtied)")
            }

            t = MonotonicClock.nanoseconds()
            let clean = try scanner.collectWritten(region, populatedHint: region)
            rescanNs = min(rescanNs, MonotonicClock.nanoseconds() - t)
            guard clean.isEmpty else { throw ScanBenchmarkError.setup("clean rescan found \(clean.pageCount) pages") }
        }

        let entries = UnsafeMutableRawBufferPointer.allocate(byteCount: pages * 8, alignment: 8)
        defer { entries.deallocate() }
        var readNs = UInt64.max
        for _ in 0..<max(1, repetitions) {
            t = MonotonicClock.nanoseconds()
            _ = try pagemap.pread(into: entries, at: Int64(base >> PageSize.shift) * 8)
            readNs = min(readNs, MonotonicClock.nanoseconds() - t)
        }

        // A full tracker round over the same region, same dirty pattern.
        let tracker = DirtyTracker(scanner: scanner)
        _ = try tracker.initialRound(ranges: region)
        var roundNs = UInt64.max
        var fastNs = UInt64.max
        for rep in 0..<(2 * max(1, repetitions)) {
            let check = rep % 2 == 0
            var i = 0
            while i < pages {
                bytes[i * Int(PageSize.bytes)] = UInt8(truncatingIfNeeded: rep + 7)
                i += stride
            }
            t = MonotonicClock.nanoseconds()
            let scan = try tracker.nextRound(ranges: region, checkDiscards: check)
            let ns = MonotonicClock.nanoseconds() - t
            if check { roundNs = min(roundNs, ns) } else { fastNs = min(fastNs, ns) }
            guard scan.dirty.pageCount == dirtied, scan.discarded.isEmpty else {
                throw ScanBenchmarkError.setup("tracker round found \(scan.dirty.pageCount) dirty, \(scan.discarded.pageCount) discarded")
            }
        }

        // Idle final rounds, alternated: the full walk against the changed-pages scan.
        var idleFull = UInt64.max
        var idleFrozen = UInt64.max
        for _ in 0..<max(1, repetitions) {
            t = MonotonicClock.nanoseconds()
            let full = try tracker.nextRound(ranges: region)
            idleFull = min(idleFull, MonotonicClock.nanoseconds() - t)
            t = MonotonicClock.nanoseconds()
            let frozen = try tracker.frozenRound(ranges: region)
            idleFrozen = min(idleFrozen, MonotonicClock.nanoseconds() - t)
            guard full.dirty.isEmpty, full.discarded.isEmpty, frozen.dirty.isEmpty, frozen.discarded.isEmpty else {
                throw ScanBenchmarkError.setup("an idle round found changes")
            }
        }

        var result = ScanBenchmarkResult(
            sizeBytes: UInt64(size), pages: pages, dirtyPages: dirtied, protectAllNs: protectNs,
            writeFaultNsPerPage: Double(faultNs) / Double(dirtied),
            scanProtectNsPerPage: Double(scanNs) / Double(pages), scanRegions: scanStats.regions,
            scanIoctls: scanStats.ioctls, cleanRescanNs: rescanNs,
            pagemapReadNsPerPage: Double(readNs) / Double(pages),
            trackerRoundNsPerPage: Double(roundNs) / Double(pages),
            trackerFastRoundNsPerPage: Double(fastNs) / Double(pages))
        result.idleFullWalkRoundNs = idleFull
        result.idleFrozenRoundNs = idleFrozen
        return result
    }
}

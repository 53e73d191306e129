#if canImport(Glibc)
import Glibc
#endif

/// The page size memhaul assumes: 4096 bytes, checked against `sysconf(_SC_PAGESIZE)` once.
public enum PageSize {
    public static let bytes: UInt64 = 4096
    public static let shift: UInt64 = 12

    /// True when the running kernel uses 4 KiB pages (checked once).
    public static let matchesSystem: Bool = sysconf(Int32(_SC_PAGESIZE)) == Int(bytes)

    @inline(__always) public static func roundDown(_ address: UInt64) -> UInt64 { address & ~(bytes - 1) }
    @inline(__always) public static func roundUp(_ address: UInt64) -> UInt64 { (address + bytes - 1) & ~(bytes - 1) }
    @inline(__always) public static func isAligned(_ address: UInt64) -> Bool { address & (bytes - 1) == 0 }
}

/// A half-open address range `[start, end)`: a mapping from `/proc/PID/maps`,
/// pages the scanner reports, a region of an image. The one range type; its set
/// algebra is in RangeSet.swift.
public struct AddressRange: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64

    public init(start: UInt64, end: UInt64) {
        precondition(start <= end, "AddressRange start > end")
        self.start = start
        self.end = end
    }

    /// `pages` pages from `start`.
    public init(start: UInt64, pages: Int) {
        self.init(start: start, end: start + UInt64(pages) << PageSize.shift)
    }

    public var pageCount: Int { Int((end - start) >> PageSize.shift) }
    public var byteCount: UInt64 { end - start }
    public var isEmpty: Bool { start >= end }
    public var isPageAligned: Bool { PageSize.isAligned(start) && PageSize.isAligned(end) }

    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }
    public func contains(_ other: AddressRange) -> Bool { other.start >= start && other.end <= end }
    public func overlaps(_ other: AddressRange) -> Bool { other.start < end && start < other.end }

    public static func < (a: AddressRange, b: AddressRange) -> Bool {
        a.start != b.start ? a.start < b.start : a.end < b.end
    }

    public var description: String { "0x\(String(start, radix: 16))-0x\(String(end, radix: 16))" }
}


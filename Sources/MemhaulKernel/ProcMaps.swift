#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// The `rwxp`/`rwxs` column of `/proc/PID/maps`.
public struct MapsPermissions: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let read = MapsPermissions(rawValue: 1 << 0)
    public static let write = MapsPermissions(rawValue: 1 << 1)
    public static let execute = MapsPermissions(rawValue: 1 << 2)
    /// `s`: MAP_SHARED; absent means private (`p`, copy-on-write).
    public static let shared = MapsPermissions(rawValue: 1 << 3)

    public var description: String {
        (contains(.read) ? "r" : "-") + (contains(.write) ? "w" : "-") + (contains(.execute) ? "x" : "-")
            + (contains(.shared) ? "s" : "p")
    }
}

/// One line of `/proc/PID/maps`: a VMA.
public struct MapsEntry: Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64
    public var permissions: MapsPermissions
    public var offset: UInt64
    /// `major:minor` in hex, as the kernel prints it (`fd:01`).
    public var device: String
    public var inode: UInt64
    /// The path or pseudo name (`[heap]`, `[stack]`, `[vdso]`), empty for anonymous memory.
    /// A file unlinked while mapped ends in ` (deleted)`.
    public var path: String

    public init(
        start: UInt64, end: UInt64, permissions: MapsPermissions, offset: UInt64 = 0, device: String = "00:00",
        inode: UInt64 = 0, path: String = ""
    ) {
        self.start = start
        self.end = end
        self.permissions = permissions
        self.offset = offset
        self.device = device
        self.inode = inode
        self.path = path
    }

    public var range: AddressRange { AddressRange(start: start, end: end) }
    public var byteCount: UInt64 { end - start }
    /// Anonymous private memory with no name (malloc arenas, mmap(MAP_ANONYMOUS)).
    public var isAnonymous: Bool { inode == 0 && path.isEmpty }
    /// A kernel pseudo mapping such as `[heap]`, `[stack]`, `[vdso]`, `[anon:name]`.
    public var isPseudo: Bool { path.hasPrefix("[") }
    public var isDeleted: Bool { path.hasSuffix(" (deleted)") }

    public var description: String {
        "\(range) \(permissions) \(String(offset, radix: 16)) \(device) \(inode) \(path)"
    }
}

/// Flags of the `VmFlags:` line of `/proc/PID/smaps` (two letters each, see proc(5)).
public struct VmFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The two-letter names in bit order; unknown names are ignored.
    static let names: [String] = [
        "rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "pf", "dw", "lo", "io", "sr", "rr", "dc",
        "de", "ac", "nr", "ht", "sf", "nl", "ar", "wf", "dd", "sd", "mm", "hg", "nh", "mg", "um", "uw",
        "ss", "sl", "bt", "mt", "lf", "gu",
    ]
    static func bit(_ name: String) -> VmFlags {
        VmFlags(rawValue: 1 << UInt64(names.firstIndex(of: name)!))
    }

    public static let shared = bit("sh")
    /// `pf`: VM_PFNMAP, raw page frames (device memory).
    public static let pfnMap = bit("pf")
    /// `io`: VM_IO, memory-mapped I/O.
    public static let io = bit("io")
    /// `ht`: VM_HUGETLB (hugetlbfs or MAP_HUGETLB).
    public static let hugetlb = bit("ht")
    /// `dd`: VM_DONTDUMP (MADV_DONTDUMP).
    public static let dontDump = bit("dd")
    /// `hg`: MADV_HUGEPAGE; `nh`: MADV_NOHUGEPAGE.
    public static let hugePageAdvised = bit("hg")
    public static let noHugePageAdvised = bit("nh")
    /// `um`: registered for userfaultfd missing faults.
    public static let uffdMissing = bit("um")
    /// `uw`: registered for userfaultfd write-protect (by memhaul or anyone else).
    public static let uffdWriteProtect = bit("uw")

    /// Parses `rd wr mr mw me ac sd uw`.
    public init<S: StringProtocol>(parsing line: S) {
        var raw: UInt64 = 0
        for word in line.split(separator: " ") {
            if let i = VmFlags.names.firstIndex(of: String(word)) { raw |= 1 << UInt64(i) }
        }
        self.rawValue = raw
    }

    public var description: String {
        VmFlags.names.enumerated().filter { rawValue & (1 << UInt64($0.offset)) != 0 }.map(\.element)
            .joined(separator: " ")
    }
}

/// Why a mapping is not registered for write tracking.
public enum SkipReason: Hashable, Sendable, CustomStringConvertible {
    /// MAP_SHARED (shmem or file): written through other processes' mappings too,
    /// so it cannot be migrated as this process's private memory.
    case shared
    /// `[vvar]`, `[vsyscall]`, `[vdso]`: provided by the kernel.
    case kernelProvided(String)
    /// VM_IO / VM_PFNMAP: device memory, not ordinary pages.
    case deviceMemory
    /// No access at all (PROT_NONE) and nothing in it: reserved address space
    /// (thread stack guards, heap reservations). Re-checked on every layout
    /// refresh: once it holds content or becomes accessible it is tracked, and
    /// sent whole. (Read-only and execute-only private mappings are tracked: they
    /// hold data written before an mprotect — RELRO, JIT code — and COW pages.)
    case noAccessAndEmpty
    /// hugetlbfs / MAP_HUGETLB.
    case hugetlb
    /// UFFDIO_REGISTER refused this VMA (e.g. EINVAL for an unsupported VMA type).
    case registerFailed(Errno)
    /// UFFDIO_REGISTER answered EBUSY: another userfaultfd already owns this VMA.
    case registeredElsewhere

    public var description: String {
        switch self {
        case .shared: return "shared mapping (MAP_SHARED): also written through other mappings, not private memory"
        case .kernelProvided(let name): return "\(name) is provided by the kernel"
        case .deviceMemory: return "device memory (VM_IO/VM_PFNMAP)"
        case .noAccessAndEmpty:
            return "no access (PROT_NONE) and empty: reserved address space (re-checked on every layout refresh; tracked once it holds content)"
        case .hugetlb: return "hugetlbfs mapping (not supported)"
        case .registerFailed(let errno): return "UFFDIO_REGISTER refused it: \(errno)"
        case .registeredElsewhere: return "already registered with another userfaultfd (EBUSY)"
        }
    }
}

/// A mapping that is not tracked, and why.
public struct SkippedMapping: Hashable, Sendable, CustomStringConvertible {
    public var entry: MapsEntry
    public var reason: SkipReason
    public init(entry: MapsEntry, reason: SkipReason) {
        self.entry = entry
        self.reason = reason
    }
    public var description: String { "\(entry.range) \(entry.path.isEmpty ? "anon" : entry.path): \(reason)" }
}

public enum Trackability: Hashable, Sendable {
    case tracked
    case skipped(SkipReason)
}

/// Whether the file behind a private mapping can be opened again by its path:
/// decides whether its clean page-cache pages (PAGE_IS_FILE, never written)
/// are the file's or content to migrate (ARCHITECTURE.md, "What is tracked").
/// Decided once per mapping, when a layout refresh first sees it.
public enum FileBacking: Hashable, Sendable {
    /// Anonymous memory or a pseudo mapping (`[heap]`, `[stack]`, `[anon:…]`).
    case none
    /// The maps path names the very inode mapped (same device and inode):
    /// clean page-cache pages count as zero, the restorer maps the file.
    case reopenable
    /// Deleted (also a file replaced by a rename over its path, a library
    /// replaced by an upgrade), a memfd, or a path that no longer exists or
    /// names another inode: nothing can map these bytes again, so its clean
    /// page-cache pages are content, migrated like anonymous memory.
    case notReopenable

    public var cleanPagesAreContent: Bool { self == .notReopenable }
}

/// `/proc/PID/maps` and `/proc/PID/smaps`.
public enum ProcMaps {
    public static let kernelProvidedNames: Set<String> = ["[vvar]", "[vvar_vclock]", "[vsyscall]", "[vdso]", "[uprobes]"]

    /// Whether `entry` is registered for write tracking. `flags` (from smaps) refines
    /// the decision (device memory, hugetlb); without them the path is used.
    public static func trackability(of entry: MapsEntry, flags: VmFlags? = nil) -> Trackability {
        if kernelProvidedNames.contains(entry.path) { return .skipped(.kernelProvided(entry.path)) }
        if let flags {
            if !flags.isDisjoint(with: [.io, .pfnMap]) { return .skipped(.deviceMemory) }
            if flags.contains(.hugetlb) { return .skipped(.hugetlb) }
        }
        if entry.path.hasPrefix("/anon_hugepage") { return .skipped(.hugetlb) }
        if entry.permissions.contains(.shared) { return .skipped(.shared) }
        // Emptiness is judged by the caller, which can scan the page tables.
        if entry.permissions.isDisjoint(with: [.read, .write, .execute]) { return .skipped(.noAccessAndEmpty) }
        return .tracked
    }

    /// ``FileBacking`` of `entry`: one `stat(2)` of its path (in the reader's
    /// root and mount namespace, where the maps path was printed), compared with
    /// the device and inode of the maps line. A path that cannot be stat'ed
    /// (ENOENT, a ` (deleted)` suffix, `/memfd:…`, an escaped name) is not
    /// reopenable: when in doubt the pages are sent.
    ///
    /// Some file systems report another `st_dev` than the superblock's, which
    /// maps prints (btrfs subvolumes): with the same inode but another device,
    /// and `pid` given, the kernel's own file decides — `stat` of
    /// `/proc/PID/map_files/START-END` against `stat(path)` (a second stat,
    /// only then).
    public static func fileBacking(of entry: MapsEntry, pid: Int32? = nil) -> FileBacking {
        if entry.inode == 0 || entry.path.isEmpty || entry.isPseudo { return .none }
        guard !entry.isDeleted, let (major, minor) = parseDevice(entry.device) else { return .notReopenable }
        var st = stat()
        guard stat(entry.path, &st) == 0, UInt64(st.st_ino) == entry.inode else { return .notReopenable }
        if deviceMajor(UInt64(st.st_dev)) == major && deviceMinor(UInt64(st.st_dev)) == minor { return .reopenable }
        guard let pid else { return .notReopenable }
        var mapped = stat()
        let link = "/proc/\(pid == 0 ? "self" : String(pid))/map_files/\(String(entry.start, radix: 16))-\(String(entry.end, radix: 16))"
        guard stat(link, &mapped) == 0 else { return .notReopenable }
        return mapped.st_dev == st.st_dev && mapped.st_ino == st.st_ino ? .reopenable : .notReopenable
    }

    /// `fd:01` → (0xfd, 0x01).
    static func parseDevice(_ text: String) -> (UInt64, UInt64)? {
        let parts = text.split(separator: ":")
        guard parts.count == 2, let major = UInt64(parts[0], radix: 16), let minor = UInt64(parts[1], radix: 16) else { return nil }
        return (major, minor)
    }

    /// glibc's major()/minor() of a user-space dev_t (macros Swift does not import).
    public static func deviceMajor(_ dev: UInt64) -> UInt64 { ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff)) }
    public static func deviceMinor(_ dev: UInt64) -> UInt64 { (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff)) }

    /// Reads and parses `/proc/PID/maps` (`pid` 0 means self). `thread` reads it
    /// through `/proc/PID/task/TID/` (needed when the thread-group leader has exited).
    public static func read(pid: Int32, thread: Int32? = nil) throws -> [MapsEntry] {
        try parse(ProcFS.read(path(pid, thread, "maps")))
    }

    /// VmFlags of every VMA, read from `/proc/PID/smaps` (this walks the page
    /// tables of the whole process to count RSS: use it sparingly).
    public static func readFlags(pid: Int32, thread: Int32? = nil) throws -> [AddressRange: VmFlags] {
        parseSmapsFlags(try ProcFS.read(path(pid, thread, "smaps")))
    }

    /// `/proc/PID/FILE`, or `/proc/PID/task/TID/FILE` for a thread other than the leader.
    static func path(_ pid: Int32, _ thread: Int32?, _ file: String) -> String {
        if pid == 0 { return "/proc/self/\(file)" }
        if let thread, thread != pid { return "/proc/\(pid)/task/\(thread)/\(file)" }
        return "/proc/\(pid)/\(file)"
    }

    /// Parses the text of a maps file. Malformed lines are skipped.
    public static func parse(_ text: [UInt8]) -> [MapsEntry] {
        var out: [MapsEntry] = []
        out.reserveCapacity(text.count / 80)
        text.withUnsafeBufferPointer { buf in
            var lineStart = 0
            while lineStart < buf.count {
                var lineEnd = lineStart
                while lineEnd < buf.count && buf[lineEnd] != 0x0A { lineEnd += 1 }
                if let entry = parseLine(UnsafeBufferPointer(rebasing: buf[lineStart..<lineEnd])) {
                    out.append(entry)
                }
                lineStart = lineEnd + 1
            }
        }
        return out
    }

    public static func parse(_ text: String) -> [MapsEntry] { parse(Array(text.utf8)) }

    /// `start-end perms offset dev inode [spaces path]`; the path may contain spaces.
    static func parseLine(_ line: UnsafeBufferPointer<UInt8>) -> MapsEntry? {
        var i = 0
        func hex(until stop: UInt8?) -> UInt64? {
            var value: UInt64 = 0
            var digits = 0
            while i < line.count {
                let c = line[i]
                if let stop, c == stop { break }
                if stop == nil && c == 0x20 { break }
                let d: UInt8
                switch c {
                case 0x30...0x39: d = c - 0x30
                case 0x61...0x66: d = c - 0x61 + 10
                case 0x41...0x46: d = c - 0x41 + 10
                default: return nil
                }
                value = value << 4 | UInt64(d)
                digits += 1
                i += 1
            }
            return digits > 0 ? value : nil
        }
        func skipSpaces() { while i < line.count && line[i] == 0x20 { i += 1 } }
        guard let start = hex(until: 0x2D), i < line.count else { return nil }
        i += 1  // '-'
        guard let end = hex(until: nil) else { return nil }
        skipSpaces()
        guard i + 4 <= line.count else { return nil }
        var perms: MapsPermissions = []
        if line[i] == 0x72 { perms.insert(.read) }
        if line[i + 1] == 0x77 { perms.insert(.write) }
        if line[i + 2] == 0x78 { perms.insert(.execute) }
        if line[i + 3] == 0x73 { perms.insert(.shared) }
        i += 4
        skipSpaces()
        guard let offset = hex(until: nil) else { return nil }
        skipSpaces()
        let devStart = i
        while i < line.count && line[i] != 0x20 { i += 1 }
        guard i > devStart else { return nil }
        let device = String(decoding: UnsafeBufferPointer(rebasing: line[devStart..<i]), as: UTF8.self)
        skipSpaces()
        var inode: UInt64 = 0
        var inodeDigits = 0
        while i < line.count, line[i] >= 0x30, line[i] <= 0x39 {
            inode = inode * 10 + UInt64(line[i] - 0x30)
            inodeDigits += 1
            i += 1
        }
        guard inodeDigits > 0 else { return nil }
        skipSpaces()
        let path = String(decoding: UnsafeBufferPointer(rebasing: line[i...]), as: UTF8.self)
        return MapsEntry(
            start: start, end: end, permissions: perms, offset: offset, device: device, inode: inode, path: path)
    }

    /// Parses the `VmFlags:` line of each VMA block of an smaps file.
    public static func parseSmapsFlags(_ text: [UInt8]) -> [AddressRange: VmFlags] {
        var out: [AddressRange: VmFlags] = [:]
        var current: AddressRange?
        let prefix = Array("VmFlags:".utf8)
        text.withUnsafeBufferPointer { buf in
            var lineStart = 0
            while lineStart < buf.count {
                var lineEnd = lineStart
                while lineEnd < buf.count && buf[lineEnd] != 0x0A { lineEnd += 1 }
                let line = UnsafeBufferPointer(rebasing: buf[lineStart..<lineEnd])
                if line.count >= prefix.count && zip(line, prefix).allSatisfy({ $0 == $1 }) {
                    if let range = current {
                        let rest = String(decoding: UnsafeBufferPointer(rebasing: line[prefix.count...]), as: UTF8.self)
                        out[range] = VmFlags(parsing: rest)
                    }
                } else if let first = line.first, (0x30...0x39).contains(first) || (0x61...0x66).contains(first),
                    let entry = parseLine(line)
                {
                    // Header lines start with a lower-case hex address; keys start upper-case.
                    current = entry.range
                }
                lineStart = lineEnd + 1
            }
        }
        return out
    }
}


import MemhaulKernel
import MemhaulSystem
#if canImport(Glibc)
import Glibc
#endif

/// Clean pages of a file that cannot be reopened are sent while they are
/// resident; the sender reads a mapping's file data in when it first judges it
/// (ARCHITECTURE.md, "What is tracked"). A page of such a file that the frozen
/// target does not hold (reclaimed since, an execute-only mapping) is in
/// neither digest nor the image, although the process would read the file's
/// bytes there: this names those mappings, so that the migration's status says
/// so (`memhaul image verify` compares those pages themselves).
enum UnresidentFilePages {
    /// One warning for every such mapping with file data outside its resident
    /// pages, or nil. The file's size and allocated blocks come from
    /// `stat(/proc/PID/map_files/START-END)` (no access: the mapping is not
    /// judged); holes count as data only up to the allocated bytes.
    static func warning(pid: Int32, mappings: [MapsEntry], fileContent: [AddressRange], scanner: PagemapScanner) -> String? {
        guard !fileContent.isEmpty else { return nil }
        var named: [String] = []
        var total: UInt64 = 0
        for entry in mappings where !entry.permissions.isDisjoint(with: [.read, .write, .execute])
            && fileContent.contains(where: { $0.contains(entry.range) })
        {
            var st = stat()
            let link = "/proc/\(pid)/map_files/\(String(entry.start, radix: 16))-\(String(entry.end, radix: 16))"
            guard stat(link, &st) == 0, UInt64(st.st_size) > entry.offset else { continue }
            let extent = AddressRange(
                start: entry.start, end: min(entry.end, entry.start + PageSize.roundUp(UInt64(st.st_size) - entry.offset)))
            guard let resident = try? scanner.populated([extent], fileContent: [extent]) else { continue }
            let missing = min(extent.byteCount - resident.reduce(0) { $0 + $1.byteCount }, UInt64(st.st_blocks) * 512)
            if missing > 0 {
                total += missing
                named.append("\(entry.path) at \(entry.range)")
            }
        }
        guard total > 0 else { return nil }
        return "up to \(total) bytes of files that cannot be reopened were not resident and are not in the image: "
            + named.prefix(8).joined(separator: ", ") + (named.count > 8 ? ", …" : "")
    }
}

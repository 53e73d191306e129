#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// Fills a CRIU dump taken with `--lazy-pages` (its private anonymous pages
/// are `PE_LAZY` entries without data) with the memhaul image's pages, so a
/// plain `criu restore` takes memory from memhaul.
///
/// `rewrite`: every `PE_LAZY` entry becomes `PE_PRESENT` and `pages-N.img` is
/// rebuilt in pagemap order (CRIU's own present pages kept, the image's
/// inserted). It copies all of memory, so it belongs after the source is
/// released, or offline. Nothing is changed unless every lazy range lies
/// inside the image's layout, and a pages file is never left shorter than its
/// present entries (CRIU's restorer would loop for ever on it).
public enum CRIUExport {
    public struct Result: Sendable, Equatable {
        /// Pagemap files rewritten (one per process of the dump).
        public var pagemaps = 0
        /// Pages taken from the memhaul image.
        public var imagePages: UInt64 = 0
        /// Pages CRIU had dumped itself (kept).
        public var criuPages: UInt64 = 0
    }

    /// The `pagemap-PID.img` files of a dump directory (not the shmem ones).
    public static func pagemapFiles(in directory: String) throws -> [String] {
        try Directory.entries(directory)
            .filter { $0.hasPrefix("pagemap-") && $0.hasSuffix(".img") && !$0.hasPrefix("pagemap-shmem-") }
            .sorted()
            .map { "\(directory)/\($0)" }
    }

    /// Checks a dump against the image without changing anything: every
    /// `PE_LAZY` range inside the image, no parent levels (this export does not
    /// read them), and each `pages-N.img` as long as its present entries.
    @discardableResult
    public static func check(dumpDirectory dir: String, source: CRIUPageSource) throws -> [(path: String, pagemap: Pagemap)] {
        let files = try pagemapFiles(in: dir)
        guard !files.isEmpty else { throw CRIUError.unsupported("no pagemap-PID.img in \(dir): not a CRIU dump directory") }
        var out: [(String, Pagemap)] = []
        for path in files {
            let pagemap = try Pagemap.decode(try SmallFile.read(path, limit: 256 << 20))
            for e in pagemap.entries {
                if e.flags.contains(.parent) { throw CRIUError.unsupported("\(path): PE_PARENT entry at \(e.range): parent levels are not supported") }
                if e.flags.contains(.lazy) && !e.flags.contains(.present) && !source.covers(e.range) { throw CRIUError.notInImage(e.range) }
            }
            let pages = "\(dir)/pages-\(pagemap.pagesID).img"
            let have = try fileSize(pages)
            guard have >= pagemap.presentBytes else {
                throw CRIUError.malformed("\(pages) holds \(have) bytes, its present entries \(pagemap.presentBytes): CRIU would loop on it")
            }
            out.append((path, pagemap))
        }
        return out
    }

    /// The rewrite route (see the type's comment).
    public static func rewrite(dumpDirectory dir: String, source: CRIUPageSource) throws -> Result {
        var result = Result()
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { chunk.deallocate() }
        for (path, var pagemap) in try check(dumpDirectory: dir, source: source) {
            let pagesPath = "\(dir)/pages-\(pagemap.pagesID).img"
            let tmpPath = pagesPath + ".memhaul-tmp"
            let input = try FileDescriptor.open(pagesPath, O_RDONLY | O_CLOEXEC)
            let output = try FileDescriptor.open(tmpPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o600)
            var inputOffset: UInt64 = 0
            var written: UInt64 = 0
            do {
                for i in pagemap.entries.indices {
                    let e = pagemap.entries[i]
                    let bytes = e.pages * PageSize.bytes
                    if e.flags.contains(.present) {
                        try copy(bytes, from: input, at: &inputOffset, to: output, at: &written, chunk)
                        result.criuPages += e.pages
                    } else if e.flags.contains(.lazy) {
                        var done: UInt64 = 0
                        while done < bytes {
                            let n = Int(min(UInt64(chunk.count), bytes - done))
                            let part = UnsafeMutableRawBufferPointer(rebasing: chunk[0..<n])
                            try source.read(at: e.address + done, into: part)
                            try output.writeAll(UnsafeRawBufferPointer(part))
                            written += UInt64(n)
                            done += UInt64(n)
                        }
                        pagemap.entries[i].flags = .present
                        result.imagePages += e.pages
                    }
                }
                guard written == pagemap.presentBytes else {
                    throw CRIUError.malformed("rewrote \(written) bytes for \(pagemap.presentBytes) of present entries")
                }
                try output.fsync()
                try replace(pagesPath, with: tmpPath)
            } catch {
                _ = unlink(tmpPath)
                throw error
            }
            try writeFile(path, pagemap.encoded())
            result.pagemaps += 1
        }
        return result
    }

    // MARK: - Files

    static func fileSize(_ path: String) throws -> UInt64 {
        var st = stat()
        _ = try Syscall.run("stat(\(path))") { stat(path, &st) }
        return UInt64(st.st_size)
    }

    private static func copy(_ bytes: UInt64, from input: FileDescriptor, at inputOffset: inout UInt64,
                             to output: FileDescriptor, at written: inout UInt64, _ chunk: UnsafeMutableRawBufferPointer) throws {
        var left = bytes
        while left > 0 {
            let n = Int(min(UInt64(chunk.count), left))
            let got = try input.pread(into: UnsafeMutableRawBufferPointer(rebasing: chunk[0..<n]), at: Int64(inputOffset))
            guard got > 0 else { throw CRIUError.malformed("pages file ends at byte \(inputOffset), before its present entries") }
            try output.writeAll(UnsafeRawBufferPointer(rebasing: chunk[0..<got]))
            inputOffset += UInt64(got)
            written += UInt64(got)
            left -= UInt64(got)
        }
    }

    private static func replace(_ path: String, with tmp: String) throws {
        _ = try Syscall.run("rename(\(tmp))") { rename(tmp, path) }
    }

    /// Writes `bytes` to `path` through a temporary file and a rename; with
    /// `durable`, fsynced first. The parent route's level files skip it: the
    /// restore that follows reads them at once, an empty level after a crash
    /// is a chain CRIU refuses ("No parent for snapshot pagemap"), and an fsync
    /// per level would sit in the frozen window.
    static func writeFile(_ path: String, _ bytes: [UInt8], durable: Bool = true) throws {
        let tmp = path + ".memhaul-tmp"
        let fd = try FileDescriptor.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode: 0o600)
        try bytes.withUnsafeBytes { try fd.writeAll($0) }
        if durable { try fd.fsync() }
        try replace(path, with: tmp)
    }
}

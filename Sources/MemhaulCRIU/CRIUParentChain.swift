#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulImage
import MemhaulSystem

/// The parent route: a plain `criu restore` reads the memory straight out of
/// the memhaul image's region files, nothing copied beforehand.
///
/// The dump's `PE_LAZY` entries become `PE_PARENT`, and the dump directory gets
/// a chain of CRIU parent image levels (`criu/pagemap.c`, `read_parent_page`):
/// `<dump>/parent` → `memhaul-chain/L0000` → `L0001` → … Level k serves one run
/// of the image's segments that one region file holds: its `pagemap-PID.img`
/// is one `PE_PRESENT` entry `[file base, run end)` (CRIU reads a level's
/// present pages from `pages-1.img` at offset = address − first entry's
/// address, which is the region file's own rule, offset = address − base),
/// then one `PE_PARENT` entry over every later level's addresses. Its
/// `pages-1.img` is a symlink to the region file.
///
/// Levels run in ascending segment order: a run's present entry also claims
/// `[base, run start)`, which can hold another file's earlier segment, and that
/// one is answered by an earlier level before the lookup reaches this one.
/// Addresses between segments are claimed by some entry but never asked for:
/// every `PE_LAZY` range must lie inside the image's layout (checked).
///
/// Symlinks, not hard links: the dump may sit on another file system than the
/// image (`image export`, `--criu-dir`), and a hard link would quietly keep an
/// image's old file alive if it were replaced; a symlink makes a changed or
/// removed image fail the read instead. The image must not change until
/// `criu restore` has exited: the receiver holds it (its store is open and
/// does not write during the restore), and ``verifyUnchanged(_:)`` checks the
/// manifest and every linked file's length again right before CRIU runs.
public enum CRIUParentChain {
    public struct Result: Sendable, Equatable {
        /// Parent levels written.
        public var levels = 0
        /// Pages of the dump turned `PE_LAZY` → `PE_PARENT` (read from the image's files).
        public var imagePages: UInt64 = 0
        /// Pages CRIU dumped itself (kept in the dump's own pages file).
        public var criuPages: UInt64 = 0
        /// The dump's `PE_LAZY` entries, now `PE_PARENT` ones (one per run of
        /// pages present in the source; each is a read of its own for CRIU).
        public var lazyEntries = 0
    }

    /// The chain's directory inside the dump directory.
    public static let chainDirectoryName = "memhaul-chain"
    /// CRIU follows the chain recursively (one stack frame set and one open
    /// pages file per level): an image cut into more runs goes the rewrite route.
    public static let maxLevels = 512

    /// One parent level: `[base, end)` read from `file` at offset `address - base`.
    struct Level: Equatable {
        var file: ImageRegionFileMap.File
        /// Where its own segments start (earlier addresses belong to earlier levels).
        var start: UInt64
        var end: UInt64
    }

    /// The levels for `map`: consecutive segments of one file form one run.
    /// Refuses what CRIU could not read correctly.
    static func levels(_ map: ImageRegionFileMap) throws -> [Level] {
        guard map.pendingJournals.isEmpty else {
            throw CRIUError.unsupported("the image has committed journals not yet applied to its region files (rounds \(map.pendingJournals)): "
                                        + "the region files alone do not hold its memory; let a receiver open it (it checkpoints) or use --route rewrite")
        }
        var out: [Level] = []
        for s in map.segments.sorted(by: { $0.start < $1.start }) {
            guard let file = map.files[s.fileID] else { throw CRIUError.malformed("segment \(s.start)-\(s.end) names unknown region file \(s.fileID)") }
            guard file.base <= s.start, s.end - file.base <= file.size else {
                throw CRIUError.malformed("segment 0x\(String(s.start, radix: 16))-0x\(String(s.end, radix: 16)) lies outside its region file \(file.path)")
            }
            if let last = out.last, last.file.id == s.fileID, last.end <= s.start {
                out[out.count - 1].end = s.end
            } else {
                out.append(Level(file: file, start: s.start, end: s.end))
            }
        }
        if let v = map.vacantWithData.first {
            throw CRIUError.unsupported("the image's vacant range \(v) reads as zeros but its region file holds data there (an open or interrupted round): "
                                        + "the parent route reads the files as they are; use --route rewrite")
        }
        guard out.count <= maxLevels else {
            throw CRIUError.unsupported("the image's layout needs \(out.count) parent levels, more than the \(maxLevels) CRIU is given; use --route rewrite")
        }
        return out
    }

    /// The level's pagemap: present `[base, end)`, then parent up to `chainEnd` (none for the last level).
    static func pagemap(_ level: Level, chainEnd: UInt64) -> Pagemap {
        var entries = [PagemapEntry(address: level.file.base, pages: (level.end - level.file.base) / PageSize.bytes, flags: .present)]
        if chainEnd > level.end {
            entries.append(PagemapEntry(address: level.end, pages: (chainEnd - level.end) / PageSize.bytes, flags: .parent))
        }
        return Pagemap(pagesID: 1, entries: entries)
    }

    /// Builds the chain in `dir` (a `criu dump --lazy-pages` directory of one
    /// process) from `source`'s image. Nothing in the dump changes unless every
    /// check passes: the top pagemap is replaced last, atomically.
    public static func build(dumpDirectory dir: String, source: ImagePageSource) throws -> Result {
        let dir = CRIURunner.absolute(dir)
        let dumped = try CRIUExport.check(dumpDirectory: dir, source: source)
        guard dumped.count == 1, let (pagemapPath, top) = dumped.first else {
            throw CRIUError.unsupported("\(dumped.count) processes' pagemaps in \(dir): the memhaul image holds one process's memory")
        }
        var result = Result()
        let levels = try levels(source.reader.regionFileMap())
        try checkFileLengths(levels)
        guard !levels.isEmpty else { throw CRIUError.imageIncomplete("\(source.reader.directory) has no segments: nothing to restore from") }
        let pid = String(pagemapPath.split(separator: "/").last!.dropFirst("pagemap-".count).dropLast(".img".count))
        let chain = dir + "/" + chainDirectoryName
        let parentLink = dir + "/parent"
        try removeChain(dumpDirectory: dir)
        _ = try Syscall.run("mkdir(\(chain))") { mkdir(chain, 0o700) }
        let chainEnd = levels.last!.end
        for (k, level) in levels.enumerated() {
            let levelDir = chain + "/" + levelName(k)
            _ = try Syscall.run("mkdir(\(levelDir))") { mkdir(levelDir, 0o700) }
            try CRIUExport.writeFile(levelDir + "/pagemap-\(pid).img", pagemap(level, chainEnd: chainEnd).encoded(), durable: false)
            try symlink(CRIURunner.absolute(level.file.path), at: levelDir + "/pages-1.img")  // an image named relative to our cwd
            if k + 1 < levels.count { try symlink("../" + levelName(k + 1), at: levelDir + "/parent") }
        }
        var pagemap = top
        for i in pagemap.entries.indices where pagemap.entries[i].flags.contains(.lazy) && !pagemap.entries[i].flags.contains(.present) {
            pagemap.entries[i].flags = .parent
            result.imagePages += pagemap.entries[i].pages
            result.lazyEntries += 1
        }
        result.criuPages = top.presentBytes / PageSize.bytes
        result.levels = levels.count
        try symlink(chainDirectoryName + "/" + levelName(0), at: parentLink)
        try CRIUExport.writeFile(pagemapPath, pagemap.encoded())  // durable: an empty one would restore no memory
        return result
    }

    /// Right before `criu restore`: the image is still the one the chain was
    /// built from (same manifest) and no linked file got shorter than its level.
    public static func verifyUnchanged(_ source: ImagePageSource) throws {
        guard try source.reader.isUnchanged() else {
            throw CRIUError.imageIncomplete("\(source.reader.directory) changed after the parent chain was built (a new manifest): refusing to restore from it")
        }
        try checkFileLengths(try levels(source.reader.regionFileMap()))
    }

    /// Removes the chain and the dump's `parent` link (only ours: a `parent`
    /// that is not our symlink is refused, not deleted).
    public static func removeChain(dumpDirectory dir: String) throws {
        let parentLink = dir + "/parent"
        var st = stat()
        if lstat(parentLink, &st) == 0 {
            var target = [CChar](repeating: 0, count: 4096)
            let n = readlink(parentLink, &target, target.count - 1)
            let ours = st.st_mode & S_IFMT == S_IFLNK && n > 0 && String(cString: Array(target[0..<n]) + [0]).hasPrefix(chainDirectoryName + "/")
            guard ours else { throw CRIUError.unsupported("\(parentLink) exists and is not memhaul's chain: the dump already has CRIU parent images") }
            _ = try Syscall.run("unlink(\(parentLink))") { unlink(parentLink) }
        }
        let chain = dir + "/" + chainDirectoryName
        if FileManager.default.fileExists(atPath: chain) {
            do { try FileManager.default.removeItem(atPath: chain) } catch { throw CRIUError.io("cannot remove the old chain \(chain): \(error)") }
        }
    }

    /// A `pages-N.img` shorter than its present entries makes CRIU's restorer
    /// loop for ever: every linked region file must reach its level's end.
    static func checkFileLengths(_ levels: [Level]) throws {
        for level in levels {
            var st = stat()
            _ = try Syscall.run("lstat(\(level.file.path))") { lstat(level.file.path, &st) }
            guard st.st_mode & S_IFMT == S_IFREG else { throw CRIUError.malformed("\(level.file.path) is not a regular file") }
            let need = level.end - level.file.base
            guard UInt64(st.st_size) >= need else {
                throw CRIUError.malformed("\(level.file.path) holds \(st.st_size) bytes, its parent level needs \(need): CRIU would loop on it")
            }
        }
    }

    static func levelName(_ k: Int) -> String {
        let digits = String(k)
        return "L" + String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// `symlink(2)`.
    private static func symlink(_ target: String, at path: String) throws {
        _ = try Syscall.run("symlink(\(path))") { Glibc.symlink(target, path) }
    }
}

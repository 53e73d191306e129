import Foundation
import Testing
@testable import MemhaulCRIU
import MemhaulImage
import MemhaulSystem
import MemhaulTestSupport

/// Reads a parent chain the way CRIU's `read_parent_page` does
/// (`criu/pagemap.c`): from the dump's `parent`, level by level, the first
/// level whose entry at the address is `PE_PRESENT` answers, from its
/// `pages-1.img` at the offset of its earlier present entries plus the
/// distance into the entry; a level with no entry there is CRIU's "Missing
/// %lx in parent pagemap".
struct ChainReader {
    struct Level {
        var dir: String
        var pagemap: Pagemap
    }
    var levels: [Level] = []

    init(dumpDirectory: String, pid: String) throws {
        var dir = dumpDirectory + "/parent"
        var seen = 0
        while FileManager.default.fileExists(atPath: dir) {
            let map = try Pagemap.decode([UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/pagemap-\(pid).img"))))
            levels.append(Level(dir: dir, pagemap: map))
            dir += "/parent"
            seen += 1
            precondition(seen < 10_000, "parent cycle")
        }
    }

    /// One page at `address`, or nil where CRIU would fail.
    func page(at address: UInt64, from level: Int = 0) throws -> [UInt8]? {
        guard level < levels.count else { return nil }
        let l = levels[level]
        var offset: UInt64 = 0
        for e in l.pagemap.entries {
            if e.range.contains(address) {
                if e.flags.contains(.parent) { return try page(at: address, from: level + 1) }
                guard e.flags.contains(.present) else { return nil }
                let fd = try FileDescriptor.open(l.dir + "/pages-\(l.pagemap.pagesID).img", O_RDONLY)
                var out = [UInt8](repeating: 0, count: 4096)
                let got = try out.withUnsafeMutableBytes { try fd.pread(into: $0, at: Int64(offset + address - e.address)) }
                return got == 4096 ? out : nil
            }
            if e.flags.contains(.present) { offset += e.pages * PageSize.bytes }
        }
        return nil
    }
}

@Suite struct ParentChainTests {
    static let a: UInt64 = 0x7f00_0000_0000
    static let b: UInt64 = 0x7f00_1000_0000
    static let page: UInt64 = 4096

    static func fill(_ store: ImageStore, _ range: AddressRange, salt: UInt8) throws {
        var bytes = [UInt8](repeating: 0, count: 4096)
        var at = range.start
        while at < range.end {
            for i in 0..<4096 { bytes[i] = PatternSource.byte(at + UInt64(i)) ^ salt }
            try bytes.withUnsafeBytes { try store.writePages(at: at, $0) }
            at += page
        }
    }

    /// A complete image whose layout changed: region A lost its first 4 pages
    /// (so its segment starts 4 pages past its file's base) and grew by 4; a
    /// region B far above. Every page holds its pattern (salted per round).
    static func makeImage() throws -> String {
        let root = temporaryDirectory("criu-chain")
        let dir = try ImageStore.directory(root: root, migrationID: "chain-test")
        let store = try ImageStore.create(directory: dir, migrationID: "chain-test")
        try store.beginRound(1, layout: [ImageRegion(start: a, end: a + 16 * page), ImageRegion(start: b, end: b + 8 * page)])
        try fill(store, AddressRange(start: a, end: a + 16 * page), salt: 1)
        try fill(store, AddressRange(start: b, end: b + 8 * page), salt: 1)
        _ = try store.commitRound()
        try store.beginRound(2, layout: [ImageRegion(start: a + 4 * page, end: a + 20 * page), ImageRegion(start: b, end: b + 8 * page)])
        try fill(store, AddressRange(start: a + 16 * page, end: a + 20 * page), salt: 2)
        try fill(store, AddressRange(start: b + 2 * page, end: b + 3 * page), salt: 2)
        _ = try store.commitRound(final: true)
        store.close()
        return dir
    }

    /// What `criu dump --lazy-pages` leaves for that image: A and B lazy, one
    /// present page of CRIU's own below them.
    static func makeDump() throws -> FakeDump {
        try FakeDump(entries: [
            PagemapEntry(address: 0x40_0000, pages: 1, flags: .present),
            PagemapEntry(address: a + 4 * page, pages: 16, flags: .lazy),
            PagemapEntry(address: b, pages: 8, flags: .lazy),
        ])
    }

    @Test func criuReadsEveryLazyPageFromTheImageThroughTheChain() throws {
        let image = try Self.makeImage()
        let dump = try Self.makeDump()
        let source = try ImagePageSource(directory: image, allowIncomplete: false)
        let map = try source.reader.regionFileMap()
        #expect(map.segments.contains { map.files[$0.fileID]!.base < $0.start }, "the test needs a segment that does not start at its file's base")
        let result = try CRIUParentChain.build(dumpDirectory: dump.dir, source: source)
        #expect(result.imagePages == 24 && result.criuPages == 1)
        let top = try Pagemap.decode([UInt8](try Data(contentsOf: URL(fileURLWithPath: dump.dir + "/pagemap-4242.img"))))
        #expect(top.entries.map(\.flags) == [.present, .parent, .parent])
        let chain = try ChainReader(dumpDirectory: dump.dir, pid: "4242")
        #expect(chain.levels.count == result.levels)
        for e in top.entries where e.flags.contains(.parent) {
            for p in 0..<e.pages {
                let address = e.address + p * Self.page
                var want = [UInt8](repeating: 0, count: 4096)
                try want.withUnsafeMutableBytes { try source.reader.read(at: address, into: $0) }
                let got = try chain.page(at: address)
                let same = got == want
                #expect(same, "page 0x\(String(address, radix: 16)): \(got.map { "byte 0 \($0[0])" } ?? "missing"), image byte 0 \(want[0])")
            }
        }
        // pages-1.img of each level is a symlink to a region file of the image.
        for l in chain.levels {
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: l.dir + "/pages-1.img")
            #expect(target.hasPrefix(image + "/mem-") && target.hasSuffix(".bin"))
        }
        try CRIUParentChain.verifyUnchanged(source)
    }

    /// Debian's crit 3.17 decodes every level with the right page counts,
    /// and each level's pages file is as long as its present entry.
    @Test(.enabled(if: CritTool.path != nil, "crit not installed (apt-get install criu gives Debian's crit 3.17)"))
    func critDecodesTheChainsPagemaps() throws {
        let image = try Self.makeImage()
        let dump = try Self.makeDump()
        let result = try CRIUParentChain.build(dumpDirectory: dump.dir, source: try ImagePageSource(directory: image, allowIncomplete: false))
        let top = try CritTool.decode(dump.dir + "/pagemap-4242.img")
        let topEntries = try #require(top["entries"] as? [[String: Any]]).dropFirst()
        #expect(topEntries.map { CritTool.pages($0) } == [1, 16, 8])
        #expect(topEntries.map { CritTool.flags($0) } == [.present, .parent, .parent])
        var level = dump.dir + "/parent"
        var levels = 0
        var presentPages = 0
        while FileManager.default.fileExists(atPath: level) {
            let json = try CritTool.decode(level + "/pagemap-4242.img")
            let entries = try #require(json["entries"] as? [[String: Any]])
            #expect((entries.first?["pages_id"] as? Int) == 1)
            let present = entries.dropFirst().first!
            #expect(CritTool.flags(present) == .present)
            let need = UInt64(CritTool.pages(present)) * Self.page
            #expect(try CRIUExport.fileSize(level + "/pages-1.img") >= need)
            presentPages += CritTool.pages(present)
            if entries.count > 2 { #expect(CritTool.flags(entries[2]) == .parent) }
            level += "/parent"
            levels += 1
        }
        #expect(levels == result.levels && levels == 2)
        // Level 0 is A's file from its base (4 pages before its segment) to its grown end.
        #expect(presentPages == 20 + 8)
    }

    /// An image named by a relative path still links absolute targets (the
    /// symlinks are resolved from the level's directory, not from our cwd).
    @Test func anImageNamedRelativelyLinksAbsolutePaths() throws {
        let image = try Self.makeImage()
        let dump = try Self.makeDump()
        let cwd = FileManager.default.currentDirectoryPath
        let relative = String(repeating: "../", count: cwd.split(separator: "/").count) + image.dropFirst()
        _ = try CRIUParentChain.build(dumpDirectory: dump.dir, source: try ImagePageSource(directory: relative, allowIncomplete: false))
        for l in try ChainReader(dumpDirectory: dump.dir, pid: "4242").levels {
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: l.dir + "/pages-1.img")
            #expect(target.hasPrefix("/") && FileManager.default.fileExists(atPath: target), "\(target)")
        }
    }

    /// Offline: `memhaul image export --route parent` builds the same chain.
    @Test func imageExportBuildsTheChain() throws {
        let image = try Self.makeImage()
        let dump = try Self.makeDump()
        let r = try runProgram([builtBinary("memhaul"), "image", "export", "--criu", dump.dir, image, "--route", "parent"])
        #expect(r.status == 0, "\(r.out) \(r.err)")
        #expect(r.out.hasPrefix("linked 24 pages of \(image) into \(dump.dir) as 2 CRIU parent level(s)"), "\(r.out)")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dump.dir + "/parent") == "memhaul-chain/L0000")
        let again = try runProgram([builtBinary("memhaul"), "image", "export", "--criu", dump.dir, image, "--route", "parent"])
        #expect(again.status != 0 && again.err.contains("PE_PARENT"), "a dump already linked is refused: \(again.err)")
    }

    @Test func aRegionFileShorterThanItsLevelIsRefusedAndTheDumpIsUntouched() throws {
        let image = try Self.makeImage()
        let dump = try Self.makeDump()
        let source = try ImagePageSource(directory: image, allowIncomplete: false)
        let file = try source.reader.regionFileMap().files.values.max { $0.base < $1.base }!
        #expect(truncate(file.path, 4 * 4096) == 0)
        let before = try dump.files()
        #expect(throws: CRIUError.self) { try CRIUParentChain.build(dumpDirectory: dump.dir, source: source) }
        #expect(try dump.files() == before)
    }

    @Test func aLazyRangeOutsideTheLayoutIsRefusedAndTheDumpIsUntouched() throws {
        let image = try Self.makeImage()
        // A's first 4 pages left the layout in round 2: the file still has them, the image does not.
        let dump = try FakeDump(entries: [PagemapEntry(address: Self.a, pages: 20, flags: .lazy)])
        let before = try dump.files()
        #expect(throws: CRIUError.notInImage(AddressRange(start: Self.a, end: Self.a + 20 * Self.page))) {
            try CRIUParentChain.build(dumpDirectory: dump.dir, source: try ImagePageSource(directory: image, allowIncomplete: false))
        }
        #expect(try dump.files() == before)
    }

    @Test func aDumpWithParentEntriesOrTwoProcessesIsRefused() throws {
        let image = try Self.makeImage()
        let source = try ImagePageSource(directory: image, allowIncomplete: false)
        let withParent = try FakeDump(entries: [PagemapEntry(address: Self.b, pages: 1, flags: .parent)])
        #expect(throws: CRIUError.self) { try CRIUParentChain.build(dumpDirectory: withParent.dir, source: source) }
        let two = try Self.makeDump()
        try FileManager.default.copyItem(atPath: two.dir + "/pagemap-4242.img", toPath: two.dir + "/pagemap-4243.img")
        let before = try two.files()
        #expect(throws: CRIUError.self) { try CRIUParentChain.build(dumpDirectory: two.dir, source: source) }
        #expect(try two.files() == before)
    }

    /// Building twice (an export repeated after a failed restore) replaces our
    /// chain; a `parent` that is not ours is refused, not deleted.
    @Test func aForeignParentLinkIsRefused() throws {
        let image = try Self.makeImage()
        let dump = try Self.makeDump()
        try FileManager.default.createSymbolicLink(atPath: dump.dir + "/parent", withDestinationPath: "/somewhere/else")
        #expect(throws: CRIUError.self) {
            try CRIUParentChain.build(dumpDirectory: dump.dir, source: try ImagePageSource(directory: image, allowIncomplete: false))
        }
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dump.dir + "/parent") == "/somewhere/else")
    }

    @Test func pendingJournalsAndVacantRangesHoldingDataAreRefused() throws {
        let file = ImageRegionFileMap.File(id: 1, base: Self.a, size: 16 * Self.page, path: "/nonexistent")
        var map = ImageRegionFileMap(files: [1: file], segments: [.init(start: Self.a, end: Self.a + 16 * Self.page, fileID: 1)],
                                     pendingJournals: [], vacantWithData: [])
        #expect(try CRIUParentChain.levels(map).count == 1)
        map.pendingJournals = [3]
        #expect(throws: CRIUError.self) { try CRIUParentChain.levels(map) }
        map.pendingJournals = []
        map.vacantWithData = [AddressRange(start: Self.a + Self.page, end: Self.a + 2 * Self.page)]
        #expect(throws: CRIUError.self) { try CRIUParentChain.levels(map) }
    }
}

extension CritTool {
    static func pages(_ entry: [String: Any]) -> Int {
        (entry["nr_pages"] as? Int) ?? (entry["compat_nr_pages"] as? Int) ?? -1
    }

    /// crit prints the flags as their number.
    static func flags(_ entry: [String: Any]) -> PagemapFlags? { (entry["flags"] as? Int).flatMap { UInt32(exactly: $0) }.map(PagemapFlags.init) }
}

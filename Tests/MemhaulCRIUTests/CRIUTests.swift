import Foundation
import Testing
@testable import MemhaulCRIU
import MemhaulSystem
import MemhaulTLS
import MemhaulTestSupport

/// Memory by address, for the tests: `coverage` and a byte per page derived
/// from the address, so every page is recognisable.
final class PatternSource: CRIUPageSource {
    let coverage: [AddressRange]
    init(_ coverage: [AddressRange]) { self.coverage = coverage }
    static func byte(_ address: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: (address >> 12) &* 31 &+ 7) }
    func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        for i in 0..<buffer.count { buffer[i] = Self.byte(address + UInt64(i)) }
    }
}

@Suite struct PagemapFormatTests {
    let entries = [
        PagemapEntry(address: 0x40_0000, pages: 2, flags: .present),
        PagemapEntry(address: 0x7f00_0000_0000, pages: 1 << 33, flags: .lazy),  // more than compat_nr_pages holds
        PagemapEntry(address: 0x7fff_0000_0000, pages: 3, flags: [.present, .lazy]),
    ]

    @Test func roundTrip() throws {
        let map = Pagemap(pagesID: 7, entries: entries)
        #expect(try Pagemap.decode(map.encoded()) == map)
    }

    /// CRIU 4.2 writes only nr_pages (5); crit 3.17 reads only compat_nr_pages (2): we write both.
    @Test func bothPageCountFieldsAreWritten() throws {
        let bytes = PagemapEntry(address: 0x1000, pages: 5, flags: .lazy).encoded()
        var r = ProtoReader(bytes[...])
        let fields = try r.fields()
        #expect(fields.first { $0.field == 2 }?.value == 5)
        #expect(fields.first { $0.field == 5 }?.value == 5)
        // An entry as CRIU 4.2 writes it (compat 0, nr_pages 5) decodes as 5 pages.
        var w = ProtoWriter()
        w.varint(1, 0x1000); w.varint(2, 0); w.varint(4, 2); w.varint(5, 5)
        #expect(try PagemapEntry.decode(w.bytes[...]) == PagemapEntry(address: 0x1000, pages: 5, flags: .lazy))
    }

    @Test func badMagicShortInputAndTruncatedEntriesAreRefused() throws {
        let good = Pagemap(pagesID: 1, entries: entries).encoded()
        var badMagic = good
        badMagic[4] ^= 0xff
        #expect(throws: CRIUError.self) { try Pagemap.decode(badMagic) }
        #expect(throws: CRIUError.self) { try Pagemap.decode(Array(good[0..<6])) }
        #expect(throws: CRIUError.self) { try Pagemap.decode(Array(good.dropLast(3))) }
        #expect(throws: CRIUError.self) { try Pagemap.decode(Array(good[0..<8])) }  // no head
        var huge = Array(good[0..<8])
        huge += [0xff, 0xff, 0xff, 0x7f]  // entry length 2 GiB
        #expect(throws: CRIUError.self) { try Pagemap.decode(huge) }
    }
}

/// A dump as `criu dump --lazy-pages` leaves it: present pages CRIU dumped
/// itself, lazy ones for memhaul to fill.
struct FakeDump {
    let dir: String
    let pagemap: Pagemap
    static let criuByte: UInt8 = 0xC5

    init(entries: [PagemapEntry], pagesFileBytes: Int? = nil) throws {
        dir = temporaryDirectory("criu")
        pagemap = Pagemap(pagesID: 1, entries: entries)
        try Data(pagemap.encoded()).write(to: URL(fileURLWithPath: "\(dir)/pagemap-4242.img"))
        let present = Int(pagemap.presentBytes)
        try Data(repeating: Self.criuByte, count: pagesFileBytes ?? present).write(to: URL(fileURLWithPath: "\(dir)/pages-1.img"))
    }

    func files() throws -> [String: Data] {
        var out: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: dir) { out[name] = try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)")) }
        return out
    }
}

@Suite struct CRIUExportTests {
    let image = [AddressRange(start: 0x10_0000, end: 0x20_0000)]

    @Test func lazyEntriesAreFilledFromTheImageInPagemapOrder() throws {
        let dump = try FakeDump(entries: [
            PagemapEntry(address: 0x1000, pages: 2, flags: .present),
            PagemapEntry(address: 0x10_0000, pages: 4, flags: .lazy),
            PagemapEntry(address: 0x30_0000, pages: 1, flags: .present),
        ])
        let result = try CRIUExport.rewrite(dumpDirectory: dump.dir, source: PatternSource(image))
        #expect(result == CRIUExport.Result(pagemaps: 1, imagePages: 4, criuPages: 3))
        let map = try Pagemap.decode(Array(try Data(contentsOf: URL(fileURLWithPath: "\(dump.dir)/pagemap-4242.img"))))
        #expect(map.entries.map(\.flags) == [.present, .present, .present])
        let pages = [UInt8](try Data(contentsOf: URL(fileURLWithPath: "\(dump.dir)/pages-1.img")))
        #expect(UInt64(pages.count) == map.presentBytes)
        #expect(pages[0..<8192].allSatisfy { $0 == FakeDump.criuByte })
        for i in 0..<(4 * 4096) { #expect(pages[8192 + i] == PatternSource.byte(0x10_0000 + UInt64(i))) }
        #expect(pages[(6 * 4096)...].allSatisfy { $0 == FakeDump.criuByte })
        #expect(!FileManager.default.fileExists(atPath: "\(dump.dir)/pages-1.img.memhaul-tmp"))
    }

    @Test func aLazyRangeOutsideTheImageIsRefusedAndTheDumpIsUntouched() throws {
        let dump = try FakeDump(entries: [
            PagemapEntry(address: 0x10_0000, pages: 4, flags: .lazy),
            PagemapEntry(address: 0x1F_F000, pages: 2, flags: .lazy),  // one page past the image
        ])
        let before = try dump.files()
        #expect(throws: CRIUError.notInImage(AddressRange(start: 0x1F_F000, end: 0x20_1000))) {
            try CRIUExport.rewrite(dumpDirectory: dump.dir, source: PatternSource(image))
        }
        #expect(try dump.files() == before)
    }

    /// CRIU's restorer loops for ever on a pages file shorter than its present entries.
    @Test func aShortPagesFileIsRefused() throws {
        let dump = try FakeDump(entries: [PagemapEntry(address: 0x1000, pages: 3, flags: .present)], pagesFileBytes: 2 * 4096)
        let before = try dump.files()
        #expect(throws: CRIUError.self) { try CRIUExport.rewrite(dumpDirectory: dump.dir, source: PatternSource(image)) }
        #expect(try dump.files() == before)
    }

    @Test func parentLevelsAreRefused() throws {
        let dump = try FakeDump(entries: [PagemapEntry(address: 0x10_0000, pages: 1, flags: .parent)])
        #expect(throws: CRIUError.self) { try CRIUExport.rewrite(dumpDirectory: dump.dir, source: PatternSource(image)) }
    }

    /// Debian 12's crit (3.17) decodes what we write with the right page counts.
    @Test(.enabled(if: CritTool.path != nil, "crit not installed (apt-get install criu gives Debian's crit 3.17)"))
    func critDecodesTheExportedPagemap() throws {
        let dump = try FakeDump(entries: [
            PagemapEntry(address: 0x1000, pages: 2, flags: .present),
            PagemapEntry(address: 0x10_0000, pages: 4, flags: .lazy),
        ])
        _ = try CRIUExport.rewrite(dumpDirectory: dump.dir, source: PatternSource(image))
        let json = try CritTool.decode("\(dump.dir)/pagemap-4242.img")
        let entries = try #require(json["entries"] as? [[String: Any]])
        #expect((entries.first?["pages_id"] as? Int) == 1)
        let pages = entries.dropFirst().map { ($0["nr_pages"] as? Int) ?? ($0["compat_nr_pages"] as? Int) ?? -1 }
        #expect(pages == [2, 4])
        let total = pages.reduce(0, +) * 4096
        #expect(try CRIUExport.fileSize("\(dump.dir)/pages-1.img") == UInt64(total))
    }
}

enum CritTool {
    static let path: String? = ["/usr/sbin/crit", "/usr/bin/crit", "/usr/local/bin/crit"].first { FileManager.default.isExecutableFile(atPath: $0) }

    static func decode(_ file: String) throws -> [String: Any] {
        let r = try runProgram([path!, "decode", "-i", file])
        guard r.status == 0, let json = try JSONSerialization.jsonObject(with: Data(r.outBytes)) as? [String: Any] else {
            throw CRIUError.malformed("crit decode \(file) failed: \(r.out) \(r.err)")
        }
        return json
    }
}

import Foundation
import Glibc
import Testing
import MemhaulTestSupport
@testable import MemhaulKernel
import MemhaulSystem

/// `ProcMaps.fileBacking` on mappings of this process, and the scanner's
/// `fileContent` split (ARCHITECTURE.md, "What is tracked").
@Suite struct FileBackingTests {
    /// The maps entry of the mapping at `address` in this process.
    private func entry(at address: UnsafeMutableRawPointer) throws -> MapsEntry {
        let a = UInt64(UInt(bitPattern: address))
        guard let e = try ProcMaps.read(pid: 0).first(where: { $0.start == a }) else { throw SystemError("maps", .ENOENT) }
        return e
    }

    @Test func samePathAndInodeIsReopenableDeletedReplacedAndMemfdAreNot() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("memhaul-backing-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func mapFile(_ path: String) throws -> UnsafeMutableRawPointer {
            try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: path))
            let fd = open(path, O_RDONLY)
            defer { close(fd) }
            guard let p = mmap(nil, 8192, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else { throw SystemError("mmap", .EINVAL) }
            return p
        }
        let kept = try mapFile(dir + "/kept"), gone = try mapFile(dir + "/gone"), replaced = try mapFile(dir + "/replaced")
        defer { for p in [kept, gone, replaced] { munmap(p, 8192) } }
        #expect(ProcMaps.fileBacking(of: try entry(at: kept)) == .reopenable)
        #expect(ProcMaps.fileBacking(of: try entry(at: gone)) == .reopenable)
        unlink(dir + "/gone")
        #expect(ProcMaps.fileBacking(of: try entry(at: gone)) == .notReopenable)
        try Data([1]).write(to: URL(fileURLWithPath: dir + "/replaced.new"))
        rename(dir + "/replaced.new", dir + "/replaced")
        #expect(ProcMaps.fileBacking(of: try entry(at: replaced)) == .notReopenable)
        // Same path, another inode, the maps line unchanged: judged by dev:inode, not by the path.
        var e = try entry(at: kept)
        e.inode += 1
        #expect(ProcMaps.fileBacking(of: e) == .notReopenable)
        #expect(ProcMaps.fileBacking(of: e, pid: 0) == .notReopenable)
        // Same inode, a device number stat does not report (btrfs subvolumes):
        // the mapped file itself, through map_files, decides.
        e = try entry(at: kept)
        e.device = "ff:ff"
        #expect(ProcMaps.fileBacking(of: e) == .notReopenable)
        #expect(ProcMaps.fileBacking(of: e, pid: 0) == .reopenable)
        // A maps line claiming the kept file's path and inode for the deleted
        // file's mapping: map_files shows the file actually mapped.
        var g = try entry(at: gone)
        (g.path, g.inode, g.device) = (dir + "/kept", try entry(at: kept).inode, "ff:ff")
        #expect(ProcMaps.fileBacking(of: g, pid: 0) == .notReopenable)
        #expect(ProcMaps.fileBacking(of: MapsEntry(start: 0, end: 4096, permissions: [.read], path: "[heap]")) == .none)
        #expect(ProcMaps.fileBacking(of: MapsEntry(start: 0, end: 4096, permissions: [.read])) == .none)
        let memfd = MapsEntry(start: 0, end: 4096, permissions: [.read, .write], device: "00:01", inode: 1026, path: "/memfd:x (deleted)")
        #expect(ProcMaps.fileBacking(of: memfd) == .notReopenable)
    }

    @Test func splitCutsRangesAtTheMarkedEdgesInOrder() {
        func r(_ s: UInt64, _ e: UInt64) -> AddressRange { AddressRange(start: s << 12, end: e << 12) }
        let pieces = PagemapScanner.split([r(0, 100), r(120, 200)], by: [r(10, 20), r(50, 150)])
        #expect(pieces.map(\.0) == [r(0, 10), r(10, 20), r(20, 50), r(50, 100), r(120, 150), r(150, 200)])
        #expect(pieces.map(\.1) == [false, true, false, true, true, false])
        #expect(PagemapScanner.split([r(0, 8)], by: []).map(\.1) == [false])
        #expect(PagemapScanner.split([r(0, 8)], by: [r(0, 8)]).map(\.0) == [r(0, 8)])
    }
}

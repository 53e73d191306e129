import Foundation
import Glibc
import MemhaulImage
import MemhaulKernel
import Testing
import MemhaulTestSupport
@testable import MemhaulSender

/// Clean page-cache pages of private mappings (issue #13, item 9). They count
/// as zero where the restorer can map the file again; where it cannot — a
/// deleted file, a memfd, a file replaced by a rename — they are the only copy
/// of those bytes and must reach the image (ARCHITECTURE.md, "What is tracked").
@Suite(.serialized) struct UnreopenableFileTests {
    @Test func cleanPagesOfDeletedFilesAndMemfdsAreMigrated() throws {
        let dir = temporaryDirectory("nolose")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var deleted: UInt64 = 0, memfd: UInt64 = 0
        let live = try LiveMigration(id: "nolose-1", workload: ["--size", "4M", "--threads", "1", "--rate", "500"]) { w in
            // A file mapped MAP_PRIVATE, half of it only read (clean page-cache
            // pages), a few pages written (copy-on-write copies), then unlinked.
            deleted = try startAddress(w.command("mapfile \(dir)/deleted 1M private"))
            try w.command("read \(hex(deleted)) 128")
            try w.command("write \(hex(deleted + 32 * 4096)) 8")
            guard unlink("\(dir)/deleted") == 0 else { throw TestSetupError("unlink: errno \(errno)") }
            // A memfd mapped MAP_PRIVATE: never reopenable by any path.
            memfd = try startAddress(w.command("mapfile nolose 1M memfd"))
            try w.command("read \(hex(memfd)) 256")
            try w.command("write \(hex(memfd)) 8 4")
        }
        defer { live.end() }
        try live.waitRounds(1)
        // Rounds run: the rest of the deleted file is read (read faults leave
        // no WRITTEN trace), and a file that rounds saw while it still existed
        // is then unlinked.
        try live.command("read \(hex(deleted + 128 * 4096)) 128")
        let late = try live.start("mapfile \(dir)/late 512K private")
        try live.command("read \(hex(late)) 128")
        try live.waitRounds()
        guard unlink("\(dir)/late") == 0 else { throw TestSetupError("unlink: errno \(errno)") }
        try live.waitRounds()
        let store = try live.finish()
        defer { store.close() }
        for (name, start, pages) in [("deleted file", deleted, 256), ("memfd", memfd, 256), ("file unlinked mid-migration", late, 128)] {
            let (zeroInProcess, differ) = try comparePages(live.workload.pid, store, start, pages)
            #expect(zeroInProcess.isEmpty, "\(name): the workload filled every page: \(zeroInProcess)")
            #expect(differ.isEmpty, "\(name): \(differ.count) of \(pages) pages differ from the process in the image, first \(differ.first.map(hex) ?? "")")
        }
        try live.verify(store)
        #expect(!live.migration.status.warnings.contains { $0.contains("not resident") }, "\(live.migration.status.warnings)")
    }

    @Test func cleanPagesOfAReopenableFileCountAsZeroAndAReplacedFileIsMigrated() throws {
        let dir = temporaryDirectory("nolose")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var kept: UInt64 = 0, replaced: UInt64 = 0
        let live = try LiveMigration(id: "nolose-2", workload: ["--size", "4M", "--threads", "1", "--rate", "500"]) { w in
            kept = try startAddress(w.command("mapfile \(dir)/kept 256K private"))
            try w.command("read \(hex(kept)) 64")
            try w.command("write \(hex(kept)) 4")
            replaced = try startAddress(w.command("mapfile \(dir)/replaced 256K private"))
            try w.command("read \(hex(replaced)) 64")
            // An upgrade's way: a new file renamed over the path (the mapped inode is gone).
            try Data(repeating: 0x55, count: 256 << 10).write(to: URL(fileURLWithPath: "\(dir)/replaced.new"))
            guard rename("\(dir)/replaced.new", "\(dir)/replaced") == 0 else { throw TestSetupError("rename: errno \(errno)") }
        }
        defer { live.end() }
        let maps = try ProcMaps.read(pid: live.workload.pid)
        #expect(maps.first { $0.start == kept }.map { ProcMaps.fileBacking(of: $0, pid: live.workload.pid) } == .reopenable)
        #expect(maps.first { $0.start == replaced }.map { ProcMaps.fileBacking(of: $0, pid: live.workload.pid) } == .notReopenable)
        try live.waitRounds()
        let store = try live.finish()
        defer { store.close() }
        let pid = live.workload.pid

        // Still the same inode at its path: clean pages are the file's, zero in
        // the image (the restorer maps the file); written pages are migrated.
        for page in 0..<64 {
            let a = kept + UInt64(page) * 4096
            let image = try imagePage(store, a), process = try readPage(pid, a)
            #expect(process.contains { $0 != 0 })
            if page < 4 {
                #expect(image == process, "written page \(hex(a)) of the kept file")
            } else {
                #expect(!image.contains { $0 != 0 }, "clean page \(hex(a)) of a reopenable file is zero in the image")
            }
        }
        let (zeroInProcess, differ) = try comparePages(pid, store, replaced, 64)
        #expect(zeroInProcess.isEmpty)
        #expect(differ.isEmpty, "replaced file: \(differ.count) of 64 pages differ in the image, first \(differ.first.map(hex) ?? "")")
        try live.verify(store)

        // The verifier judges reopenability itself: once the kept file is gone
        // its clean pages are content, and the image (zeros there) fails.
        guard unlink("\(dir)/kept") == 0 else { throw TestSetupError("unlink: errno \(errno)") }
        let report = try ImageVerifier.verify(store, pid: pid)
        #expect(!report.ok)
        #expect(report.mismatches.first?.range.start == kept + 4 * 4096, "\(report.mismatches)")
        #expect(report.mismatches.first?.reason.contains("cannot be reopened") == true, "\(report.mismatches)")
    }

    /// Pages of a deleted file that were never read hold no page in the
    /// process, yet the process would read the file's bytes there: the sender
    /// reads them in when it first sees the mapping (file data only), so they
    /// are sent like the rest. An inaccessible part (as ld.so maps the gaps
    /// between a library's segments) is left alone.
    @Test func pagesOfADeletedFileThatWereNeverReadAreMigrated() throws {
        let dir = temporaryDirectory("nolose")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var untouched: UInt64 = 0, late: UInt64 = 0
        let live = try LiveMigration(id: "nolose-3", workload: ["--size", "4M"]) { w in
            untouched = try startAddress(w.command("mapfile \(dir)/untouched 1M private"))
            try w.command("read \(hex(untouched)) 8")
            try w.command("mprotect \(hex(untouched + (512 << 10))) 512K none")
            guard unlink("\(dir)/untouched") == 0 else { throw TestSetupError("unlink: errno \(errno)") }
        }
        defer { live.end() }
        try live.waitRounds(1)
        // A memfd that appears mid-migration, never read by the target.
        late = try live.start("mapfile nolose-late 512K memfd")
        try live.waitRounds()
        let store = try live.finish()
        defer { store.close() }
        let pid = live.workload.pid
        for (name, start, pages) in [("deleted file", untouched, 128), ("memfd mapped mid-migration", late, 128)] {
            let (zeroInProcess, differ) = try comparePages(pid, store, start, pages)
            #expect(zeroInProcess.isEmpty)
            #expect(differ.isEmpty, "\(name): \(differ.count) of \(pages) pages differ in the image, first \(differ.first.map(hex) ?? "")")
        }
        let half = untouched + (512 << 10)
        #expect(!store.layout.contains { $0.start <= half && half < $0.end }, "the inaccessible half was not read in, so not tracked")
        #expect(!live.migration.status.warnings.contains { $0.contains("not resident") }, "\(live.migration.status.warnings)")
        try live.verify(store)
    }

    /// The limit, made loud: a page of a deleted file reclaimed after it was
    /// sent leaves the process's page tables, and the round reports it
    /// discarded; both digests agree, yet the process would read the file's
    /// bytes there. The sender warns and `image verify` (which reads the file
    /// through /proc/PID/map_files) fails.
    @Test func pagesOfADeletedFileReclaimedBeforeTheCutoverAreReported() throws {
        let dir = temporaryDirectory("nolose")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var file: UInt64 = 0
        let live = try LiveMigration(id: "nolose-4", workload: ["--size", "4M"]) { w in
            file = try startAddress(w.command("mapfile \(dir)/reclaimed 512K private"))
            guard unlink("\(dir)/reclaimed") == 0 else { throw TestSetupError("unlink: errno \(errno)") }
        }
        defer { live.end() }
        try live.waitRounds()
        try live.command("pageout \(hex(file)) 256K")
        try live.waitRounds()
        let store = try live.finish()
        defer { store.close() }
        #expect(live.migration.status.warnings.contains { $0.contains("not resident") && $0.contains("reclaimed (deleted)") },
                "\(live.migration.status.warnings)")
        let report = try ImageVerifier.verify(store, pid: live.workload.pid)
        let first = try #require(report.mismatches.first, "verify passed")
        #expect(first.range.start >= file && first.range.start < file + (256 << 10), "\(report.mismatches)")
        #expect(report.mismatches.allSatisfy { $0.reason.contains("not resident") }, "\(report.mismatches)")
    }
}

private func hex(_ a: UInt64) -> String { "0x" + String(a, radix: 16) }

private func startAddress(_ answer: [String: Any]) throws -> UInt64 {
    guard let s = answer["start"] as? String, let v = UInt64(s.dropFirst(2), radix: 16) else { throw TestSetupError("no start in \(answer)") }
    return v
}

/// Pages of `[start, start + pages)` that are zero in the process, and that differ between image and process.
private func comparePages(_ pid: pid_t, _ store: ImageStore, _ start: UInt64, _ pages: Int) throws -> (zero: [UInt64], differ: [UInt64]) {
    var zero: [UInt64] = [], differ: [UInt64] = []
    for page in 0..<pages {
        let a = start + UInt64(page) * 4096
        let process = try readPage(pid, a)
        if !process.contains(where: { $0 != 0 }) { zero.append(a) }
        if try imagePage(store, a) != process { differ.append(a) }
    }
    return (zero, differ)
}

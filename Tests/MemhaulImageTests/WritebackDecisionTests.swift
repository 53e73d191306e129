import Foundation
import Glibc
import MemhaulSystem
import Testing
@testable import MemhaulImage
import MemhaulTestSupport

/// The in-place writeback queue runs where the image's file system has a
/// device behind it, and is skipped on tmpfs/ramfs (nothing to write back).
@Suite struct WritebackDecisionTests {
    let a: UInt64 = 0x6000_0000

    /// What one round of three kicks' worth of in-place writes did with
    /// `sync_file_range` failing: the failures its commit counted and the
    /// threads the writeback ran on. The image must match either way.
    func roundWithFailingWriteback(under parent: String)
        throws -> (decision: WritebackDecision, failures: Int, threads: Set<pthread_t>)
    {
        let root = temporaryDirectory("writeback", in: parent)
        defer { removeTree(root) }
        let dir = root + "/image"
        let store = try ImageStore.create(directory: dir, migrationID: "writeback")
        defer { store.close() }
        var model = MemoryModel()
        let kick = Int(ImageStore.writebackKickBytes) / 4096
        let layout = [region(a, pages: 1 + 3 * kick)]
        model.setLayout(layout)
        try store.beginRound(1, layout: layout)
        let first = pageBytes(1, pages: 1)
        try store.write(a, first)  // creates the region file
        model.write(a, first)
        let mem = dir + "/" + memFiles(dir)[0]
        let failures = try Syscall.withFaults([.init("sync_file_range(\(mem))", .EIO)]) { () throws -> Int in
            for k in 0..<3 {  // each a kick's worth: three writebacks started during the round, where they are
                let address = a + UInt64(1 + k * kick) * 4096
                let bytes = pageBytes(UInt64(2 + k), pages: kick)
                try store.write(address, bytes)
                model.write(address, bytes)
            }
            return try store.commitRound().writebackFailures
        }
        #expect(try store.matches(model))
        return (store.writebackDecision, failures, store.testWritebackThreads)
    }

    /// The file system type of the mount holding `path`, from /proc/self/mounts
    /// (the longest mount point that is a prefix): independent of `statfs`.
    static func mountType(of path: String) throws -> String {
        let mounts = try String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)
        var best = (point: "", type: "")
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 3 else { continue }
            let point = String(fields[1])
            let inside = point == "/" || path == point || path.hasPrefix(point + "/")
            if inside && point.count > best.point.count { best = (point, String(fields[2])) }
        }
        return best.type
    }

    /// tmpfs: no queue, no `sync_file_range` (none of the injected failures is hit), no writeback thread.
    @Test(.enabled(if: (try? WritebackDecisionTests.mountType(of: "/dev/shm")) == "tmpfs", "/dev/shm is not tmpfs here"))
    func tmpfsImageStartsNoWriteback() throws {
        let r = try roundWithFailingWriteback(under: "/dev/shm")
        #expect(r.decision == .skipped(.tmpfs))
        #expect("\(r.decision)" == "writeback skipped (tmpfs keeps pages in memory only)")
        #expect(r.failures == 0, "no sync_file_range was called")
        #expect(r.threads.isEmpty)
    }

    /// A disk (/var/tmp on the root file system): in-place writeback is started
    /// off the writer's thread (on ext4 it is the delayed block allocation and
    /// bio submission), and a round's commit waits for it: the count of
    /// failures belongs to that round.
    @Test(.enabled(if: !["tmpfs", "ramfs"].contains((try? WritebackDecisionTests.mountType(of: "/var/tmp")) ?? "tmpfs"),
                   "/var/tmp is not disk-backed here"))
    func diskImageStartsWritebackOffTheWritersThread() throws {
        let r = try roundWithFailingWriteback(under: "/var/tmp")
        guard case .queued(let type) = r.decision else {
            Issue.record("decision \(r.decision) on /var/tmp (\(try Self.mountType(of: "/var/tmp")))")
            return
        }
        #expect(!type.isMemoryOnly)
        #expect(r.failures == 3)  // every one finished (and failed) before the commit counted them
        #expect(!r.threads.isEmpty)
        #expect(!r.threads.contains(pthread_self()))
    }

    /// The journal's flushes follow the same decision: a round that journals
    /// more than its 8 MiB buffer (round 2 rewriting round 1's pages) starts
    /// writeback of each flush on a disk, and none on tmpfs.
    @Test(arguments: ["/dev/shm", "/var/tmp"])
    func journalStartsWritebackOnlyWhereTheRegionFilesDo(parent: String) throws {
        let root = temporaryDirectory("writeback-journal", in: parent)
        defer { removeTree(root) }
        let dir = root + "/image"
        let store = try ImageStore.create(directory: dir, migrationID: "writeback-journal")
        defer { store.close() }
        let pages = 3 * 1024  // 12 MiB: more than the journal's buffer
        let layout = [region(a, pages: pages)]
        try store.beginRound(1, layout: layout)
        try store.write(a, pageBytes(1, pages: pages))
        try store.commitRound()
        try store.beginRound(2, layout: layout)
        let rewritten = pageBytes(2, pages: pages)
        let failures = try Syscall.withFaults([.init("sync_file_range(\(dir)/journal-0000000002)", .EIO)]) { () throws -> Int in
            try store.write(a, rewritten)
            return try store.commitRound().writebackFailures
        }
        var model = MemoryModel()
        model.setLayout(layout)
        model.write(a, rewritten)
        #expect(try store.matches(model))
        if store.writebackDecision.startsWriteback {
            #expect(failures >= 1, "a journal flush on \(store.writebackDecision) starts writeback")
        } else {
            #expect(failures == 0, "no sync_file_range on \(store.writebackDecision)")
        }
    }

    /// `statfs` failing (injected): the queue runs, as on a disk.
    @Test func statfsFailureQueuesWriteback() throws {
        let root = temporaryDirectory("writeback-statfs", in: "/dev/shm")
        defer { removeTree(root) }
        let decision = Syscall.withFaults([.init("statfs(\(root))", .EIO)]) { WritebackDecision(directory: root) }
        #expect(decision == .queuedUnknown(SystemError("statfs(\(root))", .EIO)))
        #expect(decision.startsWriteback)
    }
}

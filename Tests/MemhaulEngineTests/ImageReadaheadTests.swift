import Foundation
import Glibc
import Testing
import MemhaulImage
import MemhaulSystem
import MemhaulTestSupport
@testable import MemhaulReceiver
@testable import MemhaulSender

/// The receiver's readahead of a complete image (``ImageReadahead``) on real
/// image files on the root disk: what it puts into the page cache (mincore of
/// an mmap of each region file), that it stops when asked, its memory bound,
/// and that a failed `posix_fadvise(WILLNEED)` only ends it.
@Suite(.serialized) struct ImageReadaheadTests {
    static let page: UInt64 = 4096
    static let base: UInt64 = 0x7f00_0000_0000
    /// Data pages of the image: three readahead chunks and a bit (so a stop can land mid-way).
    static let dataPages: UInt64 = (3 * ImageReadahead.chunkBytes + (1 << 20)) / page
    /// A hole after the data (never written: not read ahead).
    static let holePages: UInt64 = 1024

    /// A committed, checkpointed image: one region, data then a hole.
    static func makeImage() throws -> String {
        let dir = try ImageStore.directory(root: temporaryDirectory("readahead"), migrationID: "readahead-test")
        let store = try ImageStore.create(directory: dir, migrationID: "readahead-test")
        try store.beginRound(1, layout: [ImageRegion(start: base, end: base + (dataPages + holePages) * page)])
        var bytes = [UInt8](repeating: 0, count: Int(page))
        for k in 0..<dataPages {
            let at = base + k * page
            for i in 0..<bytes.count { bytes[i] = UInt8(truncatingIfNeeded: (at >> 12) &+ UInt64(i)) }  // no zero page
            try bytes.withUnsafeBytes { try store.writePages(at: at, $0) }
        }
        _ = try store.commitRound(final: true, digest: try store.computeDigest())
        try store.checkpoint()
        store.close()
        return dir
    }

    /// Pages of the image's region files in the page cache: `mincore(2)` over a shared mapping of each.
    static func cachedPages(_ dir: String) throws -> UInt64 {
        var total: UInt64 = 0
        for name in try FileManager.default.contentsOfDirectory(atPath: dir) where name.hasPrefix("mem-") && name.hasSuffix(".bin") {
            let fd = try FileDescriptor.open(dir + "/" + name, O_RDONLY)
            var st = stat()
            _ = try Syscall.run("fstat") { fstat(fd.rawValue, &st) }
            let length = Int(st.st_size)
            guard length > 0 else { continue }
            let map = mmap(nil, length, PROT_READ, MAP_SHARED, fd.rawValue, 0)
            guard let map, map != MAP_FAILED else { throw SystemError("mmap", .current) }
            defer { munmap(map, length) }
            var vec = [UInt8](repeating: 0, count: (length + Int(page) - 1) / Int(page))
            _ = try Syscall.run("mincore") { mincore(map, length, &vec) }
            total += UInt64(vec.filter { $0 & 1 != 0 }.count)
        }
        return total
    }

    /// Whether /tmp (where `temporaryDirectory` puts images) can drop a file's
    /// pages: tmpfs keeps them (they are the file), so no cold image can be made
    /// there. The file system is the longest mount point over /tmp in /proc/self/mounts.
    static let canMakeColdImages: Bool = {
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        var best: (point: String, type: String) = ("", "")
        for line in mounts.split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            guard f.count > 2 else { continue }
            let covers: Bool = f[1] == "/" || f[1] == "/tmp" || "/tmp".hasPrefix(f[1] + "/")
            if covers && f[1].count >= best.point.count { best = (f[1], f[2]) }
        }
        return best.type != "tmpfs"
    }()

    /// A cold image: flushed and dropped from the cache (what `--bench-cold-image` does).
    static func coldImage() throws -> String {
        let dir = try makeImage()
        try ImageReadahead.dropFromCache(directory: dir)
        let cached = try cachedPages(dir)
        try #require(cached < dataPages / 16, "the drop left \(cached) of \(dataPages) pages cached: this file system keeps them, the test cannot tell")
        return dir
    }

    @Test(.enabled(if: canMakeColdImages, "/tmp is tmpfs: its pages cannot be dropped, so no cold image can be made")) func readsEveryDataPageIntoThePageCacheAndSkipsHoles() throws {
        let dir = try Self.coldImage()
        let outcome = ImageReadahead.start(directory: dir, log: { _ in }).wait()
        #expect(outcome.finished, "\(outcome)")
        #expect(outcome.bytes == Self.dataPages * Self.page && outcome.imageBytes == outcome.bytes, "\(outcome)")
        // WILLNEED only queues the reads: a read of one byte per page waits for
        // any still in flight without adding any (mincore counts them cached once done).
        var cached = try Self.cachedPages(dir)
        if cached < Self.dataPages {
            let reader = try ImageReader.open(directory: dir)
            defer { reader.close() }
            var one = [UInt8](repeating: 0, count: 1)
            _ = try one.withUnsafeMutableBytes { try reader.read(at: Self.base + (Self.dataPages - 1) * Self.page, into: $0) }
            cached = try Self.cachedPages(dir)
        }
        #expect(cached >= Self.dataPages && cached < Self.dataPages + Self.holePages / 2, "\(cached) pages cached, \(Self.dataPages) of data")
    }

    @Test(.enabled(if: canMakeColdImages, "/tmp is tmpfs: its pages cannot be dropped, so no cold image can be made")) func stopsBeforeItsNextCallWhenAsked() throws {
        let dir = try Self.coldImage()
        let reached = DispatchSemaphore(value: 0), go = DispatchSemaphore(value: 0)
        let readahead = ImageReadahead.start(directory: dir, memAvailable: nil, beforeChunk: { k in
            guard k == 1 else { return }
            reached.signal()
            go.wait()
        }, log: { _ in })
        reached.waitBounded("the readahead's second chunk")  // the first chunk is read ahead, the second not yet
        readahead.requestStop()  // what the session's stop() does (it then waits)
        go.signal()
        let outcome = readahead.stop()
        #expect(!outcome.finished && outcome.note == "stopped", "\(outcome)")
        #expect(outcome.bytes == ImageReadahead.chunkBytes, "\(outcome)")
        let cached = try Self.cachedPages(dir)
        #expect(cached < Self.dataPages / 2, "\(cached) of \(Self.dataPages) pages cached after a stop at the second chunk")
        #expect(readahead.stop() == outcome, "stop() again returns the same")
    }

    @Test(.enabled(if: canMakeColdImages, "/tmp is tmpfs: its pages cannot be dropped, so no cold image can be made")) func skipsAnImageLargerThanItsShareOfAvailableMemory() throws {
        let dir = try Self.coldImage()
        let available = Self.dataPages * Self.page * ImageReadahead.memoryDivisor - Self.page
        let outcome = ImageReadahead.start(directory: dir, memAvailable: available, log: { _ in }).wait()
        #expect(!outcome.finished && outcome.bytes == 0 && outcome.note?.contains("MemAvailable") == true, "\(outcome)")
        #expect(try Self.cachedPages(dir) < Self.dataPages / 16)
        let fits = ImageReadahead.start(directory: dir, memAvailable: available + Self.page, log: { _ in }).wait()
        #expect(fits.finished, "\(fits)")
    }

    @Test(.enabled(if: canMakeColdImages, "/tmp is tmpfs: its pages cannot be dropped, so no cold image can be made")) func aFailedReadaheadOnlyEndsIt() throws {
        let dir = try Self.coldImage()
        let lines = LogSink()
        let outcome = Syscall.withFaults([.init("posix_fadvise(WILLNEED)", .EIO, after: 1)]) {
            ImageReadahead.start(directory: dir, log: { lines.append($0) }).wait()
        }
        #expect(!outcome.finished && outcome.bytes == ImageReadahead.chunkBytes, "\(outcome)")
        #expect(outcome.note?.contains("WILLNEED") == true && outcome.note?.contains("EIO") == true, "\(outcome)")
        #expect(lines.lines.contains { $0.contains("readahead of") && $0.contains("EIO") }, "\(lines.lines)")
    }

    /// Through the session: a migration that will be restored reads its image
    /// ahead once the final round is committed, counted in the receiver's
    /// counters; with `readsAhead` off it does not.
    @Test(arguments: [true, false]) func theReceiverReadsAheadTheImageOfARestore(readsAhead: Bool) throws {
        final class Box: @unchecked Sendable { var receiver: TestReceiver? }
        let box = Box()
        let receiver = try AfterProofTests.receiver { _ in
            // The restore waits until the readahead ended (it would be stopped at the restore's end).
            if readsAhead { #expect(box.receiver!.waitForLog("receiver: read ahead") != nil, "\(box.receiver!.logLines)") }
            return .init(pid: 4242, restoreSeconds: 0.01, completeSeconds: 0.02)
        }
        box.receiver = receiver
        receiver.agent.restore!.readsAhead = readsAhead
        let workload = try startWorkload(["--size", "16M", "--threads", "1", "--rate", "2000"])
        defer { workload.kill() }
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "readahead-\(readsAhead)")
        r.afterProof = AfterProofTests.step(seen: AfterProofTests.SeenBox())
        r.after = .kill
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        #expect(migration.status.state == .completed, "\(migration.status.error ?? "")")
        let counters = receiver.agent.counters.values
        if readsAhead {
            #expect(counters.readaheadBytes > 0 && counters.readaheadSeconds > 0, "\(counters)")
        } else {
            #expect(counters.readaheadBytes == 0, "\(counters)")
            #expect( !receiver.logLines.contains { $0.contains("receiver: read ahead") || $0.contains("readahead of") }, "\(receiver.logLines)")
        }
    }
}

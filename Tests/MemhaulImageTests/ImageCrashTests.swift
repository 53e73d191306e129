import MemhaulBench
import Foundation
import Glibc
import MemhaulSystem
import Testing
@testable import MemhaulImage
import MemhaulTestSupport

/// Crashes, full disks and I/O errors: the image always opens at a committed round.
@Suite struct ImageCrashTests {
    let a: UInt64 = 0x6000_0000

    /// The model of the torture writer replayed to `round`.
    func expectedModel(seed: UInt64, round: UInt32) -> MemoryModel {
        var torture = ImageTorture(seed: seed)
        for _ in 0..<round { _ = torture.next() }
        var model = MemoryModel()
        model.layout = torture.layout
        for r in torture.layout {
            let bytes = torture.bytes(start: r.start, end: r.end)
            model.write(r.start, bytes)
        }
        model.pages = model.pages.filter { $0.value.contains { $0 != 0 } }
        return model
    }

    /// Reads whole lines from a pipe until `count` lines (or end of file); keeps the highest round reported.
    final class LineReader {
        let handle: FileHandle
        var buffer = Data()
        var last: UInt32 = 0
        var lines = 0
        init(_ handle: FileHandle) { self.handle = handle }
        func read(upTo count: Int) {
            while lines < count {
                let chunk = handle.availableData
                if chunk.isEmpty { return }
                buffer.append(chunk)
                while let nl = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                    let line = String(decoding: buffer[buffer.startIndex..<nl], as: UTF8.self)
                    buffer.removeSubrange(buffer.startIndex...nl)
                    // "committed K" after a commit, "recovered K" after an open: both prove round K is durable.
                    if let k = line.split(separator: " ").last.flatMap({ UInt32($0) }) { last = max(last, k) }
                    lines += 1
                }
            }
        }
    }

    @Test func killNineAtRandomPointsAlwaysOpensAtACommittedRound() throws {
        let binary = builtBinary("memhaul")
        try #require(FileManager.default.isExecutableFile(atPath: binary), "build memhaul first: \(binary)")
        let root = temporaryDirectory("crash")
        defer { removeTree(root) }
        var generator = SystemRandomNumberGenerator()
        let rounds: UInt32 = 12
        var outcomes: [String: Int] = [:]
        let iterations = Int(ProcessInfo.processInfo.environment["MEMHAUL_TORTURE_ITERATIONS"] ?? "") ?? 30
        for iteration in 0..<iterations {
            let seed = UInt64(iteration) &* 7919 &+ 11
            let dir = root + "/run\(iteration)"
            // Commit as the receiver does (deferred apply) and checkpoint at
            // different rates, so kills land with several journals pending.
            let checkpointBytes = [0, 64 << 10, 1 << 20, 1 << 40][iteration % 4]
            // Two writers in a row, each killed at a random point; the second
            // starts by recovering what the first left (and may die recovering).
            var printed: UInt32 = 0
            for _ in 0..<2 {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: binary)
                process.arguments = [
                    "image", "torture", dir, "--rounds", "\(rounds)", "--seed", "\(seed)", "--defer-apply",
                    "--checkpoint-bytes", "\(checkpointBytes)",
                ]
                let pipe = Pipe()
                process.standardOutput = pipe
                try process.run()
                let watchdog = SafetyBound.Watchdog(pid: process.processIdentifier, "the torture writer's lines")
                defer { watchdog.end() }
                let reader = LineReader(pipe.fileHandleForReading)
                // Pick the kill point: after some lines, then a short random delay.
                reader.read(upTo: Int.random(in: 0...Int(rounds) / 2, using: &generator))
                usleep(UInt32.random(in: 0...20_000, using: &generator))
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                reader.read(upTo: Int.max)  // lines written before the kill
                printed = max(printed, reader.last)
            }

            guard FileManager.default.fileExists(atPath: dir + "/manifest") else {
                #expect(printed == 0, "no manifest but round \(printed) was reported")
                outcomes["before create", default: 0] += 1
                continue
            }
            // Before recovery, a reader opens at the same committed round, reads it
            // through the journals left pending, and changes nothing.
            let untouched = try DirectorySnapshot(dir)
            let reader = try ImageReader.open(directory: dir)
            let readerRound = reader.committedRound ?? 0
            let readerModel = expectedModel(seed: seed, round: readerRound)
            #expect(readerRound == 0 ? reader.layout.isEmpty : try reader.matches(readerModel), "iteration \(iteration) reader")
            if !reader.journalsReadThrough.isEmpty { outcomes["reader read journals through", default: 0] += 1 }
            reader.close()
            #expect(try DirectorySnapshot(dir) == untouched)
            let store = try ImageStore.open(directory: dir)
            let committed = store.committedRound ?? 0
            #expect(committed == readerRound)
            #expect(committed >= printed && committed <= printed + 1, "iteration \(iteration): printed \(printed), opened at \(committed)")
            let model = expectedModel(seed: seed, round: committed)
            #expect(committed == 0 ? store.layout.isEmpty : try store.matches(model), "iteration \(iteration) round \(committed)")
            outcomes["\(store.recovery)".components(separatedBy: "(").first!, default: 0] += 1
            if store.replayedJournals.count > 1 { outcomes["replayed several journals", default: 0] += 1 }
            // The recovered image keeps working: one more round commits.
            if store.state == .inProgress {
                try store.beginRound(committed + 1, layout: [region(a, pages: 1)])
                try store.write(a, pageBytes(1, pages: 1))
                try store.commitRound()
            }
        }
        print("crash outcomes: \(outcomes)")
    }

    @Test func fullDiskAbortsTheRoundAndKeepsTheCommittedOne() throws {
        let mountPoint = temporaryDirectory("tmpfs")
        defer { removeTree(mountPoint) }
        try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=2m") == 0, "mount tmpfs: \(Errno.current)")
        defer { umount2(mountPoint, Int32(MNT_DETACH)) }
        let dir = mountPoint + "/full"
        let store = try ImageStore.create(directory: dir, migrationID: "full")
        var model = MemoryModel()
        let layout = [region(a, pages: 1024)]  // 4 MiB of address space, sparse
        try store.beginRound(1, layout: layout)
        model.setLayout(layout)
        let first = pageBytes(1, pages: 64)
        try store.write(a, first)
        model.write(a, first)
        try store.commitRound()

        // 3 MiB cannot fit the journal (rewrites of committed pages are journaled).
        try store.beginRound(2, layout: layout)
        for _ in 0..<12 { try store.write(a, pageBytes(2, pages: 64)) }
        var caught: ImageError?
        do { try store.commitRound() } catch { caught = error }
        let journal = dir + "/journal-0000000002"
        #expect(caught == .io(file: journal, call: "write", errno: .ENOSPC), "\(String(describing: caught))")
        #expect(caught.map { "\($0)".contains(journal) && "\($0)".contains("ENOSPC") } == true)
        #expect(store.openRound == nil)
        #expect(!FileManager.default.fileExists(atPath: journal))
        #expect(try store.matches(model))

        // 1 MiB fits the journal, but not with 1.1 MiB written in place to vacant pages.
        try store.beginRound(3, layout: layout)
        caught = nil
        do {
            for _ in 0..<4 { try store.write(a, pageBytes(3, pages: 64)) }
            try store.write(a + 64 * 4096, pageBytes(3, pages: 280))
            try store.commitRound()
        } catch { caught = error }
        #expect(caught?.file?.hasPrefix(dir + "/mem-") == true || caught?.file == dir + "/journal-0000000003", "\(String(describing: caught))")
        if case .io(_, _, let errno) = caught { #expect(errno == .ENOSPC) } else { Issue.record("not an I/O error: \(String(describing: caught))") }
        #expect(try store.matches(model))

        // 3 MiB to a new region: written in place, fails in writePages itself.
        let other = a + 0x1000_0000
        try store.beginRound(5, layout: layout + [region(other, pages: 1024)])
        caught = nil
        do {
            for i in 0..<12 { try store.write(other + UInt64(i * 64 * page), pageBytes(UInt64(i), pages: 64)) }
        } catch { caught = error }
        if case .io(let file, "pwrite", .ENOSPC) = caught {
            #expect(file.hasPrefix(dir + "/mem-"))
        } else {
            Issue.record("expected pwrite ENOSPC on a region file, got \(String(describing: caught))")
        }
        #expect(store.openRound == nil)
        #expect(memFiles(dir).count == 1)
        #expect(try store.matches(model))
        store.close()

        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.recovery == .clean)
        #expect(reopened.committedRound == 1)
        #expect(try reopened.matches(model))
        // Space came back: a small round still commits.
        try reopened.beginRound(4, layout: layout)
        let small = pageBytes(4, pages: 16)
        try reopened.write(a + 100 * 4096, small)
        model.write(a + 100 * 4096, small)
        try reopened.commitRound()
        #expect(try reopened.matches(model))
    }

    @Test func ioErrorsBeforeTheCommitAbortAfterItRecover() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/eio"
        let store = try ImageStore.create(directory: dir, migrationID: "eio")
        var model = MemoryModel()
        let layout = [region(a, pages: 16)]
        try store.beginRound(1, layout: layout)
        model.setLayout(layout)
        let one = pageBytes(1, pages: 16)
        try store.write(a, one)
        model.write(a, one)
        try store.commitRound()

        // fsync of the journal fails: round aborted, round 1 intact.
        let journal = dir + "/journal-0000000002"
        try store.beginRound(2, layout: layout)
        try store.write(a, pageBytes(2, pages: 4))
        Syscall.withFaults([.init("fsync(\(journal))", .EIO)]) {
            #expect(throws: ImageError.io(file: journal, call: "fsync", errno: .EIO)) { try store.commitRound() }
        }
        #expect(try store.matches(model))

        // The manifest rename fails: aborted too.
        try store.beginRound(2, layout: layout)
        try store.write(a, pageBytes(2, pages: 4))
        Syscall.withFaults([.init("rename(\(dir)/manifest.tmp)", .EIO)]) {
            #expect(throws: ImageError.io(file: dir + "/manifest.tmp", call: "rename", errno: .EIO)) { try store.commitRound() }
        }
        #expect(try store.matches(model))

        // Writing the region file fails after the commit point: the round is
        // committed; the store asks to be reopened, and reopening applies it.
        let file = dir + "/" + memFiles(dir)[0]
        try Syscall.withFaults([.init("pwritev(\(file))", .EIO)]) {
            try store.beginRound(3, layout: layout)
            let three = pageBytes(3, pages: 4)
            try store.write(a + 4096, three)
            model.write(a + 4096, three)
            #expect(throws: ImageError.self) { try store.commitRound() }
            #expect(throws: ImageError.self) { try store.beginRound(4, layout: layout) }
        }
        store.close()
        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.recovery == .reappliedJournal(round: 3))
        #expect(try reopened.matches(model))
    }

    /// The writeback started during a round (`sync_file_range`, in place and
    /// in the journal) is an optimisation: when it fails the commit's fsyncs do
    /// its work, the round commits, and the commit counts the failures.
    @Test func failedWritebackOnlyCostsTheOverlap() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/writeback"
        let store = try ImageStore.create(directory: dir, migrationID: "writeback")
        var model = MemoryModel()
        let half = Int(ImageStore.writebackKickBytes) / 4096  // one kick's worth
        let layout = [region(a, pages: 2 * half)]
        func round(_ n: UInt32, _ address: UInt64, _ faults: [Syscall.Fault] = []) throws -> CommitInfo {
            let bytes = pageBytes(UInt64(n), pages: half)
            let info = try Syscall.withFaults(faults) { () throws -> CommitInfo in
                try store.beginRound(n, layout: layout)
                try store.write(address, bytes)
                return try store.commitRound()
            }
            model.write(address, bytes)
            return info
        }
        model.setLayout(layout)
        #expect(try round(1, a).writebackFailures == 0)
        let mem = dir + "/" + memFiles(dir)[0]
        // Round 2 fills the vacant second half in place; round 3 rewrites the
        // first through the journal, whose flushes start writeback too.
        #expect(try round(2, a + UInt64(half) * 4096, [.init("sync_file_range(\(mem))", .EIO)]).writebackFailures >= 1)
        #expect(try round(3, a, [.init("sync_file_range(\(dir)/journal-0000000003)", .EIO)]).writebackFailures >= 1)
        #expect(try store.matches(model))
        store.close()
        let reopened = try ImageStore.open(directory: dir)
        defer { reopened.close() }
        #expect(try reopened.matches(model))
    }

    @Test func cliInspectAndRead() throws {
        let binary = builtBinary("memhaul")
        try #require(FileManager.default.isExecutableFile(atPath: binary))
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/cli"
        do {
            let store = try ImageStore.create(directory: dir, migrationID: "cli")
            try store.beginRound(1, layout: [region(a, pages: 4, [.read, .write], "[heap]")])
            try store.write(a + 4096, pageBytes(1, pages: 1))
            let digest = independentDigest(store.layout.isEmpty ? [region(a, pages: 4)] : store.layout) { s, e in
                var m = MemoryModel()
                m.write(a + 4096, pageBytes(1, pages: 1))
                return m.bytes(s, e)
            }
            try store.commitRound(final: true, digest: digest)
            store.close()
        }
        func run(_ args: [String]) throws -> (Int32, Data) {
            let r = try runProgram([binary] + args)
            return (r.status, Data(r.outBytes))
        }
        let (status, json) = try run(["image", "inspect", dir, "--json", "--verify-digest"])
        #expect(status == 0)
        let object = try JSONSerialization.jsonObject(with: json) as? [String: Any]
        #expect(object?["state"] as? String == "complete")
        #expect(object?["committed_round"] as? Int == 1)
        #expect(object?["stored_pages"] as? Int == 1)
        #expect(object?["digest_matches"] as? Bool == true)
        #expect(object?["checkpointed_round"] as? Int == 1)
        #expect(object?["pending_journals"] as? [Int] == [])
        let (readStatus, raw) = try run(["image", "read", dir, "0x\(String(a + 4096, radix: 16))", "8K"])
        #expect(readStatus == 0)
        #expect([UInt8](raw) == pageBytes(1, pages: 1) + [UInt8](repeating: 0, count: 4096))
        let (badStatus, _) = try run(["image", "read", dir, "0x\(String(a, radix: 16))", "20K"])
        #expect(badStatus != 0)
        // While a receiver holds the image, inspect shows the committed manifest read-only.
        let holder = try ImageStore.open(directory: dir)
        let (liveStatus, liveJSON) = try run(["image", "inspect", dir, "--json"])
        #expect(liveStatus == 0)
        let live = try JSONSerialization.jsonObject(with: liveJSON) as? [String: Any]
        #expect(live?["live"] as? Bool == true)
        #expect(live?["committed_round"] as? Int == 1)
        #expect(live?["stored_pages"] as? Int == 1)
        let (lockedRead, _) = try run(["image", "read", dir, "0x\(String(a, radix: 16))", "4K"])
        #expect(lockedRead != 0)
        holder.close()
    }
}

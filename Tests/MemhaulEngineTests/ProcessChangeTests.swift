import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// The target grows and shrinks its heap, starts and ends threads, and forks
/// while rounds run; the image must equal the frozen source byte for byte.
/// Each change is driven through the workload's control protocol between
/// acknowledged rounds (LiveMigration), on memory the writer threads never
/// touch, so that a lost page cannot be hidden by a later write.
@Suite(.serialized) struct ProcessChangeTests {
    @Test func brkGrowthAndShrinkDuringRounds() throws {
        let live = try LiveMigration(id: "brk-1", workload: ["--size", "16M", "--threads", "1", "--rate", "2000"])
        defer { live.end() }
        try live.waitRounds(1)
        let heap = try live.start("brk 4M")                        // grown and filled
        try live.waitRounds()
        try live.command("write 0x\(String(heap + (2 << 20), radix: 16)) 128 4")
        try live.command("brk -3M")                                 // back below the written pages
        try live.waitRounds()
        // Shrink and grow again between two scans: the same addresses, a new
        // VMA, never touched: [512K, 1M) held content and must now be zero.
        try live.command("brk -512K")
        let again = try live.start("brk 2M 0")
        #expect(again == heap + (512 << 10))
        try live.command("write 0x\(String(heap + (1536 << 10), radix: 16)) 16")
        try live.waitRounds()
        try live.command("write 0x\(String(heap, radix: 16)) 64 2")
        try live.command("brk 1M 0")                                // grown, never touched
        try live.waitRounds()
        try live.command("brk -1M")
        try live.command("brk 256K")                                // the final round sees this growth first
        let store = try live.finish()
        defer { store.close() }
        // The released and untouched pages: zero in the image.
        #expect(try imagePage(store, heap + (512 << 10)).allSatisfy { $0 == 0 })
        #expect(try imagePage(store, heap + (2 << 20) + (256 << 10)).allSatisfy { $0 == 0 })
        #expect(try imagePage(store, heap).contains { $0 != 0 })
        try live.verify(store)
    }

    @Test func threadsStartAndStopAndStacksGrowDuringRounds() throws {
        let live = try LiveMigration(id: "threads-1", workload: ["--size", "16M", "--threads", "1", "--rate", "2000"])
        defer { live.end() }
        try live.waitRounds(1)
        let before = threadIDs(live.workload.pid).count
        #expect(try live.command("threads 4 64")["threads"] as? Int == 4)
        try live.waitRounds()
        #expect(try live.command("threads 2 32")["threads"] as? Int == 6)
        #expect(threadIDs(live.workload.pid).count == before + 6)
        try live.waitRounds()
        #expect(try live.command("threads stop")["threads"] as? Int == 6)   // stacks cached or unmapped
        #expect(threadIDs(live.workload.pid).count == before)
        try live.waitRounds()
        try live.command("threads 3 16")                            // glibc reuses the cached stacks
        // The main thread's stack grows downwards (one VMA, a new lower start).
        let stackBefore = mainStackBytes(live.workload.pid)
        try live.command("stack 1024")
        let stackAfter = mainStackBytes(live.workload.pid)
        #expect(stackAfter > stackBefore, "[stack] did not grow (\(stackBefore) → \(stackAfter) bytes)")
        try live.waitRounds()
        try live.command("stack 512")                               // rewritten in place
        try live.command("threads 2 16")                            // started just before the cutover
        let store = try live.finish()
        defer { store.close() }
        try live.verify(store)
        // Every thread's stack is in the image (and so was compared above).
        let tids = threadIDs(live.workload.pid)
        #expect(tids.count == before + 5)
        for tid in tids {
            guard let sp = stackPointer(live.workload.pid, tid) else {
                Issue.record("no stack pointer for thread \(tid)")
                continue
            }
            #expect(store.layout.contains { sp >= $0.start && sp < $0.end }, "thread \(tid) stack 0x\(String(sp, radix: 16)) not in the image")
        }
    }

    @Test func forkAndSpawnedChildrenAreNotMigratedAndParentStaysExact() throws {
        let live = try LiveMigration(id: "fork-1", workload: ["--size", "16M", "--threads", "1", "--rate", "2000"])
        defer { live.end() }
        try live.waitRounds(2)                                      // the parent is write-protected
        try live.command("fork 256 exit")                           // COW copies written, then gone
        try live.waitRounds()
        try live.command("spawn 5")                                 // vfork-style children share the address space until exec
        try live.waitRounds()
        let answer = try live.command("fork 256 stay")              // keeps writing its copies
        guard let child = answer["child"] as? Int, let first = answer["first"] as? String,
              let page = UInt64(first.dropFirst(2), radix: 16) else {
            throw TestSetupError("fork: \(answer)")
        }
        let pid = pid_t(child)
        defer { kill(pid, SIGKILL) }
        // The kernel drops uffd-wp from the child's mappings (no UFFD_FEATURE_EVENT_FORK).
        let tracked = holdsUserfaultfd(pid)
        #expect(!tracked.fd && !tracked.writeProtect, "child \(pid) tracked: \(tracked)")
        try live.command("write \(first) 64 4")                     // the parent writes the pages the child wrote
        try live.waitRounds()
        let store = try live.finish()
        defer { store.close() }
        try live.verify(store)
        // The child ran through the final round; its copy differs, and none of it is in the image.
        #expect(kill(pid, 0) == 0, "the child was still running")
        let inChild = try readPage(pid, page)
        let inParent = try readPage(live.workload.pid, page)
        #expect(inChild != inParent)
        #expect(try imagePage(store, page) == inParent)
        #expect(holdsUserfaultfd(pid) == (false, false))
    }

    /// The size of the main thread's `[stack]` mapping.
    private func mainStackBytes(_ pid: pid_t) -> UInt64 {
        for line in (readProcFile("/proc/\(pid)/maps") ?? "").split(separator: "\n") where line.hasSuffix("[stack]") {
            let bounds = line.split(separator: " ")[0].split(separator: "-").compactMap { UInt64($0, radix: 16) }
            if bounds.count == 2 { return bounds[1] - bounds[0] }
        }
        return 0
    }

    private func threadIDs(_ pid: pid_t) -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []).compactMap { Int32($0) }
    }

    /// The stack pointer of a stopped (or blocked) thread: the next-to-last field of /proc/PID/task/TID/syscall.
    private func stackPointer(_ pid: pid_t, _ tid: Int32) -> UInt64? {
        guard let text = readProcFile("/proc/\(pid)/task/\(tid)/syscall") else { return nil }
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard fields.count >= 3, fields[fields.count - 2].hasPrefix("0x") else { return nil }
        return UInt64(fields[fields.count - 2].dropFirst(2), radix: 16)
    }
}

/// Memory that is written and then made read-only or inaccessible keeps its
/// content: it must be in the image (RELRO after relocation, JIT code flipped
/// to r-x, a GC protecting a space). Found missing before: only writable
/// mappings were tracked, and the digest covered only what was tracked.
@Suite(.serialized) struct ProtectedMemoryTests {
    @Test func memoryWrittenThenMadeReadOnlyOrInaccessibleIsMigrated() throws {
        let live = try LiveMigration(id: "protect-1", workload: ["--size", "16M", "--threads", "1", "--rate", "2000"])
        defer { live.end() }
        try live.waitRounds(1)
        let a = try live.start("map 1M")
        let b = try live.start("map 1M")
        let c = try live.start("map 512K")
        for region in [a, b, c] { try live.command("write 0x\(String(region, radix: 16)) 64") }
        try live.waitRounds()
        // a: read-only after the rounds saw it; b: inaccessible after they saw it.
        try live.command("mprotect 0x\(String(a, radix: 16)) 1M r")
        try live.command("mprotect 0x\(String(b, radix: 16)) 1M none")
        try live.waitRounds()
        // c: written again and made inaccessible between two scans.
        try live.command("write 0x\(String(c, radix: 16)) 32 3")
        try live.command("mprotect 0x\(String(c, radix: 16)) 512K none")
        let store = try live.finish()
        defer { store.close() }
        for region in [a, b, c] {
            #expect(try imagePage(store, region).contains { $0 != 0 }, "content of 0x\(String(region, radix: 16)) is in the image")
        }
        try live.verify(store)  // byte for byte, and no private content outside the image's layout
    }
}

import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// Transparent huge pages, and memory pushed out to swap (or zswap) and read
/// or written back in, while rounds run; the image must equal the frozen
/// source byte for byte. Each change is on a region of its own that the writer
/// threads never touch, so that a lost page cannot be hidden by a later write.
@Suite(.serialized) struct MemoryPressureTests {
    static let thpSetting = "/sys/kernel/mm/transparent_hugepage/enabled"
    static let zswapSetting = "/sys/module/zswap/parameters/enabled"

    @Test(.enabled(if: FileManager.default.fileExists(atPath: thpSetting), "the kernel has no THP"))
    func transparentHugePagesAndWholeHugePageDiscardDuringRounds() throws {
        // THP must be available to MADV_HUGEPAGE regions ("never" is switched to "madvise" for the test).
        let setting = try SystemSetting(Self.thpSetting, current: Self.bracketed)
        defer { setting.restore() }
        if setting.original == "never" { try setting.set("madvise") }

        // The main memory is filled as huge pages before the attach (--thp on:
        // 2 MiB-aligned, MADV_HUGEPAGE). No writer threads: each huge page
        // changes only as the steps below say.
        let live = try LiveMigration(id: "thp-1", workload: ["--size", "16M", "--thp", "on", "--mix", "zero=10,text=60,random=30"])
        defer { live.end() }
        let pid = live.workload.pid
        let hex = { (a: UInt64) in "0x" + String(a, radix: 16) }
        guard let m = UInt64(try live.mainRegionStart().dropFirst(2), radix: 16) else { throw TestSetupError("bad ready line") }
        let atStart = smapsKB(pid, containing: m, "AnonHugePages") ?? 0
        #expect(atStart >= 4096, "no huge pages formed (AnonHugePages \(atStart) kB): the test would prove nothing")
        try live.waitRounds(1)                                      // write-protected at PMD level
        let protected = smapsKB(pid, containing: m, "AnonHugePages") ?? 0
        try live.command("discard \(hex(m + (2 << 20))) 2M")        // MADV_DONTNEED of a whole huge page
        try live.command("write \(hex(m)) 4")                       // write-protect fault on a huge page
        try live.waitRounds()
        let discarded = smapsKB(pid, containing: m, "AnonHugePages") ?? 0
        try live.command("write \(hex(m + (2 << 20) + (256 << 10))) 8")   // part of the discarded range again
        let refilled = smapsKB(pid, containing: m, "AnonHugePages") ?? 0
        try live.command("discard \(hex(m + (4 << 20))) 2M")        // discard and re-touch between two scans
        try live.command("write \(hex(m + (4 << 20) + (1 << 20))) 2")
        let retouched = smapsKB(pid, containing: m, "AnonHugePages") ?? 0
        // A huge page region mapped while rounds run: the huge zero page
        // (read fault), written into, and discarded.
        let r = try live.start("map 4M thp")
        try live.command("read \(hex(r)) 1024")
        try live.command("write \(hex(r + (1 << 20))) 1")
        try live.waitRounds()
        try live.command("write \(hex(r + (3 << 20))) 16")
        try live.command("discard \(hex(m + (6 << 20))) 2M")        // seen first by the final round
        let store = try live.finish()
        defer { store.close() }
        print("THP: AnonHugePages kB: \(atStart) at start, \(protected) write-protected, \(discarded) after a discard and a split, \(refilled) after re-touching the discarded huge page, \(retouched) after discard+re-touch between two scans")
        #expect(try imagePage(store, m + (2 << 20)).allSatisfy { $0 == 0 })
        #expect(try imagePage(store, m + (6 << 20)).allSatisfy { $0 == 0 })
        #expect(try imagePage(store, m + (2 << 20) + (256 << 10)).contains { $0 != 0 })
        try live.verify(store)
    }

    /// `madvise` from `always [madvise] never`.
    static func bracketed(_ text: String) -> String {
        guard let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close else { return text }
        return String(text[text.index(after: open)..<close])
    }

    @Test func swapOutAndBackInDuringRounds() throws {
        try swapScenario(zswap: false)
    }

    @Test(.enabled(if: FileManager.default.isWritableFile(atPath: zswapSetting)))
    func zswapOutAndBackInDuringRounds() throws {
        try swapScenario(zswap: true)
    }

    /// A swap file of its own; pages pushed out with MADV_PAGEOUT at each
    /// point of the round cycle, then read or written back in.
    private func swapScenario(zswap: Bool) throws {
        let swap = try TestSwap(megabytes: 64)
        defer { swap.remove() }
        // zswap as asked (off for the plain variant), restored after.
        let zswapSetting = FileManager.default.fileExists(atPath: Self.zswapSetting) ? try SystemSetting(Self.zswapSetting, current: { $0 }) : nil
        defer { zswapSetting?.restore() }
        try zswapSetting?.set(zswap ? "Y" : "N")

        let id = zswap ? "zswap-1" : "swap-1"
        // Main memory as huge pages, swapped out before the attach: round 0
        // must count swap entries as content (they are read back to be sent).
        var atAttach = 0
        let live = try LiveMigration(id: id, workload: ["--size", "16M", "--thp", "on", "--threads", "1", "--rate", "2000"]) { w in
            try w.command("pageout \(try LiveMigration.mainRegionStart(w.workload)) 16M")
            atAttach = statusKB(w.workload.pid, "VmSwap") ?? 0
        }
        defer { live.end() }
        #expect(atAttach >= 4096, "only \(atAttach) kB swapped out before the attach")
        let pid = live.workload.pid
        let hex = { (a: UInt64) in "0x" + String(a, radix: 16) }
        try live.waitRounds(1)
        // Mapped, filled and swapped out before a scan registers it, most likely.
        let early = try live.start("map 1M")
        try live.command("write \(hex(early)) 256")
        try live.command("pageout \(hex(early)) 1M")
        let s = try live.start("map 8M")
        try live.command("write \(hex(s)) 2048")                    // every page has content
        try live.waitRounds()                                       // known to the receiver, write-protected

        // Protected pages go out: still content, never "discarded".
        try live.command("pageout \(hex(s)) 8M")
        let out = statusKB(pid, "VmSwap") ?? 0
        #expect(out >= 4096, "MADV_PAGEOUT swapped out only \(out) kB: the test would prove nothing")
        if zswap {
            let stored = statusKB(0, "Zswapped", file: "/proc/meminfo") ?? 0
            #expect(stored > 0, "zswap stored nothing (Zswapped \(stored) kB)")
        }
        try live.waitRounds()

        // Written since the last round, then swapped out before the next scan.
        try live.command("write \(hex(s + (2 << 20))) 128")
        try live.command("pageout \(hex(s + (2 << 20))) 512K")
        // Swapped-in by a write fault, and by a read.
        try live.command("write \(hex(s)) 64 4")
        try live.command("read \(hex(s + (1 << 20))) 64")
        try live.waitRounds()
        // Swap entries dropped (MADV_DONTNEED): zero in the image.
        try live.command("discard \(hex(s + (3 << 20))) 256K")
        // Writer memory too: the writer thread faults it back in as it goes.
        try live.command("pageout \(try live.mainRegionStart()) 16M")
        try live.waitRounds()
        // swapoff brings every page back (unuse_pte keeps the uffd-wp bit), swapon again.
        try swap.cycle()
        try live.waitRounds()
        // Written and swapped out again right before the cutover: the final
        // round finds the written swap entries, the digest reads them back.
        try live.command("write \(hex(s + (5 << 20))) 32 8")
        try live.command("pageout \(hex(s)) 8M")
        let atCutover = statusKB(pid, "VmSwap") ?? 0
        let store = try live.finish()
        defer { store.close() }
        print("\(id): VmSwap \(atAttach) kB at the attach, \(out) kB after the first pageout, \(atCutover) kB at the cutover")
        #expect(atCutover > 0)
        #expect(try imagePage(store, s + (3 << 20)).allSatisfy { $0 == 0 })
        #expect(try imagePage(store, s + (2 << 20)).contains { $0 != 0 })
        try live.verify(store)
    }
}

/// A swap file, active from init to `remove()`. Tried on the repository's
/// file system first, then /var/tmp and /tmp (tmpfs and overlayfs cannot hold one).
final class TestSwap {
    private(set) var directory = ""
    private(set) var path = ""
    private var active = false

    init(megabytes: Int) throws {
        var failures: [String] = []
        for parent in [repositoryRoot + "/.build", "/var/tmp", "/tmp"] {
            directory = parent + "/memhaul-swaptest-\(UUID().uuidString.prefix(8))"
            path = directory + "/swapfile"
            do {
                try create(megabytes: megabytes)
                return
            } catch {
                failures.append("\(parent): \(error)")
                remove()
            }
        }
        throw TestSetupError("no swap file could be activated: \(failures.joined(separator: "; "))")
    }

    private func create(megabytes: Int) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Written zeros, not a sparse file: swapon refuses files with holes.
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        guard fd >= 0 else { throw TestSetupError("open \(path): errno \(errno)") }
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0, count: 1 << 20)
        for _ in 0..<megabytes {
            guard chunk.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == chunk.count else {
                throw TestSetupError("write \(path): errno \(errno)")
            }
        }
        fsync(fd)
        try runProgram(["/usr/sbin/mkswap", "-q", path]).requireSuccess("mkswap")
        try runProgram(["/usr/sbin/swapon", path]).requireSuccess("swapon")
        active = true
    }

    /// swapoff then swapon: every swapped-out page is read back in between.
    func cycle() throws {
        try runProgram(["/usr/sbin/swapoff", path]).requireSuccess("swapoff")
        active = false
        try runProgram(["/usr/sbin/swapon", path]).requireSuccess("swapon")
        active = true
    }

    /// swapoff (the kernel reads back what is still out), then deletes the file.
    func remove() {
        if active {
            do { try runProgram(["/usr/sbin/swapoff", path]).requireSuccess("swapoff") } catch { Issue.record("swapoff \(path): \(error)") }
            active = false
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    deinit { remove() }
}

/// A sysfs setting changed by a test and restored after it.
final class SystemSetting {
    let path: String
    let original: String

    /// `current` extracts the value from the file's text (THP prints `always [madvise] never`).
    init(_ path: String, current: (String) -> String) throws {
        self.path = path
        let text = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        original = current(text)
    }

    func set(_ value: String) throws {
        try value.write(toFile: path, atomically: false, encoding: .utf8)
    }

    func restore() {
        try? original.write(toFile: path, atomically: false, encoding: .utf8)
    }
}

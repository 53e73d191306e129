import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSender
import MemhaulSystem
import MemhaulTestSupport

/// The frozen final round must see what changed just before the freeze:
/// no pre-copy round ran after these changes, only the final scan can.
@Suite(.serialized) struct FinalScanTests {
    @discardableResult
    func command(_ w: ChildProcess, _ line: String) throws -> [String: Any] { try w.workloadCommand(line) }

    func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    @Test(arguments: [FinalScanMethod.changed, .fullWalk])
    func discardsJustBeforeTheFreezeReachTheImage(method: FinalScanMethod) throws {
        let receiver = try TestReceiver(pki: nil)
        let w = try startWorkload(["--size", "8M", "--threads", "1", "--rate", "100"], control: true)
        // 8 MiB of content the pre-copy rounds send, then changed right before the freeze.
        let map = try command(w, "map 8M")
        let start = UInt64((map["start"] as! String).dropFirst(2), radix: 16)!
        try command(w, "write \(hex(start)) 2048")
        let id = "final-discard-\(method.rawValue)"
        var r = MigrationRequest(pid: w.pid, host: "127.0.0.1", port: receiver.port, id: id)
        r.finalScan = method
        r.parameters.downtimeLimitMs = 1e6  // cut over after round 1: the hook's changes only the final round sees
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let box = HandOff(w)
        let hookErrors = LogSink()
        migration.testBeforeFreeze = {
            let w = box.value
            do {
                try command(w, "pause")                                      // no writer noise
                try command(w, "discard \(hex(start + 4096 * 3)) 4096")       // one known page
                try command(w, "discard \(hex(start + (2 << 20))) 2M")       // a page table's worth
                try command(w, "write \(hex(start + 4096 * 700)) 1 9")       // written, then discarded
                try command(w, "discard \(hex(start + 4096 * 700)) 4096")
                try command(w, "free \(hex(start + (5 << 20))) 64K")          // MADV_FREE, then reclaimed
                try command(w, "pageout \(hex(start + (5 << 20))) 64K")
                try command(w, "discard \(hex(start + (6 << 20))) 4096")      // discarded, then read back as zeros
                try command(w, "read \(hex(start + (6 << 20))) 1")
                try command(w, "write \(hex(start + 4096 * 1500)) 3 11")     // a plain write
            } catch {
                hookErrors.append("\(error)")
            }
        }
        migration.run()
        #expect(hookErrors.lines.isEmpty, "\(hookErrors.lines)")
        let s = migration.status
        guard s.state == .completed else {
            Issue.record("migration \(s.state): \(s.error ?? "")")
            return
        }
        #expect(s.finalScanMs != nil)
        try expectImageMatchesSource(receiver.images + "/" + id, pid: w.pid)
    }
}

/// Swap just before the freeze: written pages pushed out are written swap
/// entries, protected ones protected swap entries; the final round must send
/// the first and keep the second. Exclusive (scripts/test): it adds a swap file.
@Suite(.serialized) struct FinalScanSwapTests {
    @Test(arguments: [FinalScanMethod.changed, .fullWalk])
    func pagesWrittenAndSwappedOutJustBeforeTheFreezeReachTheImage(method: FinalScanMethod) throws {
        let swap = try TestSwap(megabytes: 64)
        defer { swap.remove() }
        let t = FinalScanTests()
        let receiver = try TestReceiver(pki: nil)
        let w = try startWorkload(["--size", "4M", "--threads", "1", "--rate", "100"], control: true)
        let map = try t.command(w, "map 8M")
        let start = UInt64((map["start"] as! String).dropFirst(2), radix: 16)!
        try t.command(w, "write \(t.hex(start)) 2048")
        let id = "final-swap-\(method.rawValue)"
        var r = MigrationRequest(pid: w.pid, host: "127.0.0.1", port: receiver.port, id: id)
        r.finalScan = method
        r.parameters.downtimeLimitMs = 1e6
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let box = HandOff(w)
        let hookErrors = LogSink()
        var swappedKB = 0
        migration.testBeforeFreeze = {
            let w = box.value
            do {
                try t.command(w, "pause")
                try t.command(w, "write \(t.hex(start + 4096 * 10)) 64 7")      // written, then swapped out
                let out = try t.command(w, "pageout \(t.hex(start)) 8M")
                swappedKB = out["vm_swap_kb"] as? Int ?? -1
                try t.command(w, "discard \(t.hex(start + (4 << 20))) 64K")     // swapped, then discarded
            } catch {
                hookErrors.append("\(error)")
            }
        }
        migration.run()
        #expect(hookErrors.lines.isEmpty, "\(hookErrors.lines)")
        #expect(swappedKB >= 4096, "only \(swappedKB) kB swapped out")
        let s = migration.status
        guard s.state == .completed else {
            Issue.record("migration \(s.state): \(s.error ?? "")")
            return
        }
        try expectImageMatchesSource(receiver.images + "/" + id, pid: w.pid)
    }
}

import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSession
import MemhaulSystem
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// The target changes its memory in the ways real programs do while rounds
/// run; the image must still equal the frozen source byte for byte.
@Suite(.serialized) struct MemoryChangeTests {
    /// Sends one control command and returns the answer's "start" if any.
    @discardableResult
    func command(_ w: ChildProcess, _ line: String) -> String? {
        w.send(line)
        guard let answer = try? w.readLine() else { return nil }
        guard let obj = try? JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any] else { return nil }
        return obj["start"] as? String
    }

    @Test func mprotectMadvFreeRemapAndUnmapDuringRounds() throws {
        let receiver = try TestReceiver(pki: nil)
        let w = try startWorkload(["--size", "32M", "--threads", "2", "--rate", "20000"], control: true)
        var r = MigrationRequest(pid: w.pid, host: "127.0.0.1", port: receiver.port, id: "changes-1")
        r.parameters.maxRounds = 10
        r.parameters.maxBandwidth = 40e6
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let done = migration.runInBackground()
        // Commands on their own thread: once the target is frozen it answers nothing.
        let box = HandOff(w)
        let cycles = LogSink()
        Thread.detachNewThread {
            let w = box.value
            var cycle = 0
            while !migration.status.state.isFinal && migration.status.state != .cutover && cycle < 400 {
                cycle += 1
                guard let start = command(w, "map 2M") else { return }
                command(w, "write \(start) 64")
                command(w, "mprotect \(start) 1M r")            // toggled read-only and back
                command(w, "mprotect \(start) 1M rw")
                command(w, "write \(start) 16 3")
                command(w, "free \(start) 512K")               // MADV_FREE
                command(w, "discard 0x\(String(UInt64(start.dropFirst(2), radix: 16)! + (1 << 20), radix: 16)) 256K")
                guard let moved = command(w, "mremap \(start) 2M 4M") else { return }   // grow, may move
                command(w, "write \(moved) 32 5")
                if cycle % 2 == 0 { command(w, "unmap \(moved) 4M") }
                cycles.append("cycle \(cycle)")
            }
        }
        #expect(done.wait(timeout: .now() + 240) == .success)
        let s = migration.status
        guard s.state == .completed else {
            Issue.record("migration \(s.state): \(s.error ?? "")")
            return
        }
        #expect((s.rounds ?? 0) >= 2)
        #expect(cycles.lines.count >= 3, "the layout changed while rounds ran (\(cycles.lines.count) cycles)")
        try expectImageMatchesSource(receiver.images + "/changes-1", pid: w.pid)
    }

    @Test func twoMigrationsIntoOneReceiverAtOnce() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let a = try startWorkload(["--size", "48M", "--threads", "1", "--rate", "5000"])
        let b = try startWorkload(["--size", "48M", "--threads", "1", "--rate", "5000", "--seed", "7"])
        var migrations: [SenderMigration] = []
        for (w, id) in [(a, "pair-a"), (b, "pair-b")] {
            let r = MigrationRequest(pid: w.pid, host: "127.0.0.1", port: receiver.port, id: id)
            migrations.append(SenderMigration(request: r, connect: try connector(pki)))
        }
        let group = DispatchGroup()
        for m in migrations {
            group.enter()
            Thread.detachNewThread { m.run(); group.leave() }
        }
        #expect(group.wait(timeout: .now() + 240) == .success)
        for (m, w) in zip(migrations, [a, b]) {
            #expect(m.status.state == .completed, "\(m.request.id): \(m.status.error ?? "")")
            let store = try openImageWhenReleased(receiver.images + "/" + m.request.id)
            defer { store.close() }
            let report = try ImageVerifier.verify(store, pid: w.pid)
            #expect(report.ok, "\(m.request.id): \(report.mismatches)")
        }
        #expect(migrations[0].status.digest != migrations[1].status.digest)
    }
}

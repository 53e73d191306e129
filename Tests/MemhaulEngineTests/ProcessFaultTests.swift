import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// Faults of the processes around a migration: the sender dies, the target dies.
@Suite(.serialized) struct ProcessFaultTests {
    @Test func senderKilledLeavesTheTargetRunningUntracked() throws {
        let receiver = try ReceiverProcess(pki: nil)
        let workload = try startWorkload(["--size", "128M", "--threads", "2", "--rate", "0"])
        let sender = try ChildProcess([builtBinary("memhaul"),
            "migrate", "--pid", "\(workload.pid)", "--to", "127.0.0.1:\(receiver.port)", "--insecure",
            "--max-bandwidth", "20000000", "--downtime-limit", "0.001", "--no-auto-converge", "-v", "--json"])
        // Wait until the target is tracked (uffd-wp registered), then kill the agent.
        var senderEnded = false
        SafetyBound.eventually("the target tracked (uffd-wp registered)") {
            if workload.hasUffdWriteProtect { return true }
            senderEnded = sender.state == nil
            return senderEnded
        }
        guard !senderEnded else { Issue.record("sender ended early"); return }
        sender.kill(SIGKILL)
        sender.wait()
        // Closing the agent's (only) uffd unregisters everything in the kernel.
        var clean = false
        for _ in 0..<500 where !clean {
            clean = !workload.hasUffdWriteProtect
            if !clean { usleep(10_000) }
        }
        #expect(clean, "tracking goes away with the agent")
        #expect(!workload.holdsUserfaultfd)
        #expect(workload.state != "T")
        #expect(Glibc.kill(workload.pid, 0) == 0, "the target is alive")
    }

    @Test func targetExitingMidMigrationFailsCleanly() throws {
        let receiver = try TestReceiver(pki: nil)
        let workload = try startWorkload(["--size", "128M", "--threads", "2", "--rate", "0"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "exits-1")
        r.parameters.maxBandwidth = 20e6
        r.parameters.downtimeLimitMs = 0.001
        r.parameters.autoConverge = false
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let done = migration.runInBackground()
        while migration.status.state != .active && !migration.status.state.isFinal { usleep(10_000) }
        workload.kill(SIGKILL)
        workload.wait()
        #expect(done.wait(timeout: .now() + 120) == .success)
        let s = migration.status
        #expect(s.state == .failed)
        #expect(s.error?.isEmpty == false, "a clear error: \(s.error ?? "")")
        // The partial image is marked failed, at its last committed round.
        var failed = false
        for _ in 0..<500 where !failed {
            if let store = try? ImageStore.open(directory: receiver.images + "/exits-1") {
                failed = store.state == .failed
                store.close()
            }
            if !failed { usleep(10_000) }
        }
        #expect(failed)
    }
}

import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// End-to-end migrations of real processes over real mutual TLS on loopback.
@Suite(.serialized) struct MigrationTests {
    func request(_ child: ChildProcess, _ receiver: TestReceiver, id: String) -> MigrationRequest {
        var r = MigrationRequest(pid: child.pid, host: "127.0.0.1", port: receiver.port, id: id)
        r.parameters.downtimeLimitMs = 300
        return r
    }

    @Test func liveWorkloadMigratesExactlyOverMutualTLS() throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let workload = try startWorkload(["--size", "64M", "--threads", "2", "--rate", "20000"])
        let migration = SenderMigration(request: request(workload, receiver, id: "live-1"), connect: try connector(pki))
        migration.run()
        let status = migration.status
        #expect(status.state == .completed, "\(status.error ?? "")")
        #expect(status.digest != nil)
        #expect(workload.state == "T", "after=stop leaves the source frozen")
        #expect(!workload.holdsUserfaultfd)
        #expect(!workload.hasUffdWriteProtect, "tracking removed after the migration")
        // Independent check: the image against the frozen source, byte for byte.
        let store = try openImageWhenReleased(receiver.images + "/live-1")
        defer { store.close() }
        let report = try ImageVerifier.verify(store, pid: workload.pid)
        #expect(report.ok, "\(report.mismatches)")
        #expect(report.pagesCompared > 10_000)
        #expect(store.state == .complete)
    }

    @Test func stopAndCopySendsEverythingInOneFrozenRound() throws {
        let receiver = try TestReceiver(pki: nil)
        let workload = try startWorkload(["--size", "32M", "--threads", "1", "--rate", "5000"])
        var r = request(workload, receiver, id: "sac-1")
        r.parameters.maxRounds = 0
        r.after = .resume
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        let status = migration.status
        #expect(status.state == .completed, "\(status.error ?? "")")
        #expect(status.rounds == 1)
        #expect(status.cutoverReason?.contains("stop-and-copy") == true)
        #expect(workload.state != "T", "after=resume lets the source run on")
    }

    @Test func receiverKilledMidMigrationResumesTheSourceUntracked() throws {
        let pki = try TestPKI()
        let receiver = try ReceiverProcess(pki: pki)
        let workload = try startWorkload(["--size", "256M", "--threads", "2", "--rate", "0", "--pattern", "hot:0.5"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "dies-1")
        r.parameters.downtimeLimitMs = 0.001  // never converges by itself
        r.parameters.autoConverge = false
        r.parameters.maxBandwidth = 50e6  // slow enough to be cut mid-round
        r.parameters.resumeTimeoutSeconds = 1  // it never comes back
        let migration = SenderMigration(request: r, connect: try connector(pki))
        let done = migration.runInBackground()
        // Wait until round 1 is under way, then kill -9 the receiver agent.
        while migration.status.round < 1 && !migration.status.state.isFinal { usleep(10_000) }
        receiver.child.kill(SIGKILL)
        receiver.child.wait()
        #expect(done.wait(timeout: .now() + 120) == .success)
        let status = migration.status
        #expect(status.state == .failed)
        #expect(status.error != nil)
        #expect(workload.state != "T", "the source runs on after a failed migration")
        #expect(!workload.holdsUserfaultfd)
        #expect(!workload.hasUffdWriteProtect)
        // The committed rounds survive the kill: the image opens at its last committed round.
        let store = try openImageWhenReleased(receiver.images + "/dies-1")
        defer { store.close() }
        #expect(store.committedRound != nil)
        #expect(store.state != .complete)
    }

    @Test func cancelLeavesTheSourceRunningAndUntracked() throws {
        let receiver = try TestReceiver(pki: nil)
        let workload = try startWorkload(["--size", "128M", "--threads", "2", "--rate", "0"])
        var r = request(workload, receiver, id: "cancel-1")
        r.parameters.downtimeLimitMs = 0.001
        r.parameters.autoConverge = false
        r.parameters.maxBandwidth = 20e6
        let migration = SenderMigration(request: r, connect: try connector(nil))
        let done = migration.runInBackground()
        while migration.status.state != .active && !migration.status.state.isFinal { usleep(10_000) }
        migration.cancel()
        _ = done.wait(timeout: .now() + 120)
        #expect(migration.status.state == .cancelled)
        #expect(migration.status.error == nil)
        #expect(workload.state != "T")
        #expect(!workload.hasUffdWriteProtect)
        // The receiver marked the partial image failed.
        var failed = false
        for _ in 0..<200 where !failed {
            if let store = try? ImageStore.open(directory: receiver.images + "/cancel-1") {
                failed = store.state == .failed
                store.close()
            }
            if !failed { usleep(10_000) }
        }
        #expect(failed)
    }
}

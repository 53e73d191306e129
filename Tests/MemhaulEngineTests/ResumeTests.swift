import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulEngine

/// A broken connection mid-migration: the sender reconnects with backoff and
/// resumes at the receiver's last committed round.
@Suite(.serialized) struct ResumeTests {
    @Test func receiverRestartMidRoundResumesWithoutResendingEverything() throws {
        let pki = try TestPKI()
        let first = try ReceiverProcess(pki: pki)
        let images = first.images, port = first.port
        let workload = try startWorkload(["--size", "128M", "--threads", "2", "--rate", "8000", "--pattern", "hot:0.2"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: port, id: "resume-1")
        r.parameters.maxBandwidth = 60e6  // so that round 1 is still streaming when we cut
        r.parameters.maxRounds = 8
        let migration = SenderMigration(request: r, connect: try connector(pki))
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { migration.run(); done.signal() }
        // Round 0 acknowledged (its page bytes are counted), round 1 under way:
        // kill the receiver, start it again on the same port and images.
        while migration.status.pageBytes == 0 && !migration.status.state.isFinal { usleep(2_000) }
        usleep(100_000)
        first.child.kill(SIGKILL)
        first.child.wait()
        let second = try ReceiverProcess(pki: pki, images: images, port: port)
        #expect(done.wait(timeout: .now() + 180) == .success)
        let s = migration.status
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(s.resumes >= 1)
        #expect(s.resentBytesAfterResume > 0, "the break hit a data round")
        // What the break cost: far less than the memory (the resumed round is a delta).
        #expect(s.resentBytesAfterResume < s.totalBytes / 2, "resent \(s.resentBytesAfterResume) of \(s.totalBytes)")
        print("resume: \(s.resumes) resume(s), \(s.resentBytesAfterResume) page bytes in the rounds after, of \(s.totalBytes) tracked, \(s.pageBytes) page bytes in all")
        let store = try openImageWhenReleased(images + "/resume-1")
        defer { store.close() }
        let report = try ImageVerifier.verify(store, pid: workload.pid)
        #expect(report.ok, "\(report.mismatches)")
        _ = second
    }
}

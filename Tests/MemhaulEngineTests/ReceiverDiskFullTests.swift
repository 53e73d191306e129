import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// The receiver's image directory fills up mid-migration.
@Suite(.serialized) struct ReceiverDiskFullTests {
    @Test func fullDiskFailsCleanlyAndKeepsTheCommittedImage() throws {
        let dir = temporaryDirectory("tmpfs")
        guard mount("tmpfs", dir, "tmpfs", 0, "size=24m,mode=0700") == 0 else {
            Issue.record("mount tmpfs: \(String(cString: strerror(errno)))")
            return
        }
        defer { umount2(dir, Int32(MNT_DETACH)) }
        let receiver = try TestReceiver(pki: nil, images: dir)
        // 64 MiB of mostly incompressible content does not fit in 24 MiB.
        let workload = try startWorkload(["--size", "64M", "--mix", "zero=0,text=0,random=100", "--threads", "1", "--rate", "2000"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "full-1")
        r.parameters.maxRounds = 3
        r.parameters.resumeTimeoutSeconds = 2
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        let s = migration.status
        #expect(s.state == .failed)
        #expect(s.error?.contains("ENOSPC") == true || s.error?.contains("space") == true, "\(s.error ?? "")")
        #expect(workload.state != "T", "the source runs on")
        #expect(!workload.hasUffdWriteProtect)
        // The receiver logs once its session has ended (it lingers after an ERROR).
        var logged = false
        for _ in 0..<1000 where !logged {
            logged = receiver.logLines.contains { $0.contains("full-1") && ($0.contains("ENOSPC") || $0.contains("space")) }
            if !logged { usleep(10_000) }
        }
        #expect(logged, "\(receiver.logLines)")
        // The image still opens, at its last committed round (none here), not corrupted.
        let store = try openImageWhenReleased(dir + "/full-1")
        defer { store.close() }
        #expect(store.state != .complete)
        // And the receiver serves the next migration once there is room.
        let small = try startWorkload(["--size", "1M"])
        var r2 = MigrationRequest(pid: small.pid, host: "127.0.0.1", port: receiver.port, id: "after-full")
        r2.parameters.maxRounds = 0
        r2.after = .resume
        try? FileManager.default.removeItem(atPath: dir + "/full-1")
        let m2 = SenderMigration(request: r2, connect: try connector(nil))
        m2.run()
        #expect(m2.status.state == .completed, "\(m2.status.error ?? "")")
    }
}

import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport
import MemhaulReport

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
        let done = migration.runInBackground()
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
        print("resume: \(s.resumes) resume(s), \(s.resentBytesAfterResume) wire bytes lost in flight, of \(s.totalBytes) tracked, \(s.pageBytes) page bytes in all")
        let store = try openImageWhenReleased(images + "/resume-1")
        defer { store.close() }
        // The incremental proof held across the restart: the new receiver rebuilt its ledger from the image.
        #expect(s.proof == "incremental")
        #expect(store.finalDigest?.version == .v3)
        #expect(try store.computeDigest(version: .v3) == store.finalDigest)
        let report = try ImageVerifier.verify(store, pid: workload.pid)
        #expect(report.ok, "\(report.mismatches)")
        _ = second
    }

    /// A break in the middle of round 0 (the biggest): the commit chunks the
    /// receiver committed stay, and only the rest of the round travels again.
    /// Also in stop-and-copy, whose round 0 protects nothing and is resumed
    /// with the target still frozen.
    @Test(arguments: [false, true])
    func breakInRoundZeroKeepsTheCommittedChunks(stopAndCopy: Bool) throws {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        let workload = try startWorkload(["--size", "128M", "--mix", "zero=10,text=30,random=60", "--threads", "1", "--rate", "2000", "--pattern", "hot:0.1"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "resume-r0")
        r.parameters.maxBandwidth = 60e6
        r.parameters.commitChunkBytes = 16 << 20
        if stopAndCopy {
            r.parameters.maxRounds = 0
            r.parameters.frozenCommitChunkBytes = 16 << 20
        }
        let migration = SenderMigration(request: r, connect: try connector(pki))
        let done = migration.runInBackground()
        // Two chunks of round 0 committed, the round itself not finished: cut.
        SafetyBound.eventually("two chunks of round 0 committed", every: 2_000) {
            let committed = receiver.agent.sessionInfo.last(where: { $0.migration == "resume-r0" })?.committedRound ?? 0
            return committed >= 2 || migration.status.state.isFinal
        }
        let atCut = migration.status  // the counters move per chunk: the stage and round say where it is
        #expect(atCut.stage == (stopAndCopy ? .finalDelta : .precopy) && atCut.round == 0 && atCut.roundSentBytes < atCut.roundTotalBytes,
                "round 0 still streaming when cut: \(atCut.stage) round \(atCut.round)")
        receiver.agent.disconnect(migration: "resume-r0")
        #expect(done.wait(timeout: .now() + 180) == .success)
        let s = migration.status
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(s.resumes >= 1)
        // Lost: at most what was in flight after the last commit (a few chunks
        // and socket buffers), far less than round 0.
        #expect(s.resentBytesAfterResume < s.totalBytes / 2, "resent \(s.resentBytesAfterResume) of \(s.totalBytes)")
        #expect(s.pageBytes < s.totalBytes + s.totalBytes / 2, "round 0 was not sent again whole: \(s.pageBytes) page bytes for \(s.totalBytes)")
        if stopAndCopy {
            // Frozen throughout: what travels twice is what was sent of round 0 but not committed at the cut, never the two committed chunks.
            let twice = Int64(s.pageBytes) - Int64(atCut.roundTotalBytes)
            #expect(twice < Int64(atCut.roundSentBytes) - (16 << 20),
                    "sent twice \(twice) bytes; at the cut \(atCut.roundSentBytes) of \(atCut.roundTotalBytes) sent, ≥ 2 chunks of 16 MiB committed")
        }
        print("resume in round 0: \(s.resumes) resume(s), \(s.resentBytesAfterResume) wire bytes lost in flight, \(s.pageBytes) page bytes in all, \(s.totalBytes) tracked")
        // Both reports record the resume: the sender's what it cost, the receiver's a second connection.
        let history = migration.history
        #expect(history.resumes.count == s.resumes)
        #expect(history.resumes.allSatisfy { ($0.committedChunk ?? 0) >= 2 && $0.reason != nil })
        #expect(history.resumes.reduce(0) { $0 + ($1.resentBytes ?? 0) } == s.resentBytesAfterResume)
        let store = try openImageWhenReleased(receiver.images + "/resume-r0")
        defer { store.close() }
        let received = try ReportJSON.read(receiver.images + "/resume-r0/report.json")
        #expect(received.connections.count == s.resumes + 1, "\(received.connections.map { $0.endState ?? "-" })")
        #expect(received.resumes.count == s.resumes && received.resumes.allSatisfy { ($0.committedChunk ?? 0) >= 2 })
        #expect(received.state == "complete" && received.digest == s.digest)
        // The ledgers agree though chunks of round 0 travelled twice.
        #expect(s.proof == "incremental")
        #expect(store.finalDigest?.version == .v3)
        #expect(try store.computeDigest(version: .v3) == store.finalDigest)
        let report = try ImageVerifier.verify(store, pid: workload.pid)
        #expect(report.ok, "\(report.mismatches)")
    }
}

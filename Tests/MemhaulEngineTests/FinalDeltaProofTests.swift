import Foundation
import Glibc
import MemhaulImage
import MemhaulSystem
import MemhaulWire
import Testing
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// The incremental proof on the final delta's last ROUND_END (capability
/// `finalDeltaDigest`): one durable commit, no verification round, unless the
/// receiver predates the capability; and the frozen window's steps (`frozen_steps`).
@Suite(.serialized) struct FinalDeltaProofTests {
    /// A migration whose writers keep dirtying pages, so the frozen final delta carries pages.
    func migrate(id: String, withheld: Capabilities = [], proof: ProofMode = .incremental) throws -> (MigrationStatus, TestReceiver, WorkloadProcess) {
        let pki = try TestPKI()
        let receiver = try TestReceiver(pki: pki)
        receiver.agent.testHooks.withheldCapabilities = withheld
        let workload = try startWorkload(["--size", "16M", "--mix", "zero=30,text=40,random=30", "--threads", "1", "--rate", "4000"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: id)
        r.proof = proof
        r.after = .stop
        r.parameters.maxRounds = 2
        r.parameters.downtimeLimitMs = 0.001  // forced cutover, writers still running
        r.parameters.autoConverge = false
        let migration = SenderMigration(request: r, connect: try connector(pki))
        migration.run()
        return (migration.status, receiver, workload)
    }

    func steps(_ s: MigrationStatus) -> [String] { (s.frozenSteps ?? []).map(\.step) }

    @Test func theIncrementalProofRidesOnTheFinalDelta() throws {
        let (s, receiver, workload) = try migrate(id: "proof-on-delta")
        defer { workload.kill(); workload.wait() }
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(!steps(s).contains("verify_sent"), "no verification round: \(steps(s))")
        let store = try openImageWhenReleased(receiver.images + "/proof-on-delta")
        defer { store.close() }
        #expect(store.finalDigest?.hex == s.digest)
        // The final commit is the final delta's: it stored pages (a verification round stores none).
        #expect((store.rounds.last?.dataPages ?? 0) > 0, "\(store.rounds.map(\.dataPages))")
        #expect(try store.computeDigest(version: .v3) == store.finalDigest, "the ledger describes the image")
        #expect(try ImageVerifier.verify(store, pid: workload.pid).ok)
    }

    /// A receiver without the capability gets the verification round, as before.
    @Test func anOlderReceiverGetsTheVerificationRound() throws {
        let (s, receiver, workload) = try migrate(id: "proof-older", withheld: [.finalDeltaDigest])
        defer { workload.kill(); workload.wait() }
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(steps(s).contains("verify_sent") && steps(s).contains("verify_acked"), "\(steps(s))")
        let store = try openImageWhenReleased(receiver.images + "/proof-older")
        defer { store.close() }
        #expect(store.finalDigest?.hex == s.digest)
        #expect(store.rounds.last?.dataPages == 0, "the verification round stores nothing")
        #expect(try ImageVerifier.verify(store, pid: workload.pid).ok)
    }

    /// `both` re-reads the frozen memory before the receiver may mark the image complete: its own round.
    @Test func theProofThatRereadsKeepsItsRound() throws {
        let (s, _, workload) = try migrate(id: "proof-both-round", proof: .both)
        defer { workload.kill(); workload.wait() }
        #expect(s.state == .completed, "\(s.error ?? "")")
        #expect(steps(s).contains("verify_sent"), "\(steps(s))")
    }

    /// The steps run from the freeze to the release, in order, and the last is the frozen window's end.
    @Test func theFrozenStepsSpanTheFrozenWindow() throws {
        let (s, _, workload) = try migrate(id: "frozen-steps")
        defer { workload.kill(); workload.wait() }
        #expect(s.state == .completed, "\(s.error ?? "")")
        let all = try #require(s.frozenSteps)
        #expect(steps(s).first == "frozen")
        #expect(steps(s).last == "released")
        for expected in ["final_scan", "final_delta_sent", "final_delta_acked", "digest", "proved", "close_sent", "release_start"] {
            #expect(steps(s).contains(expected), "\(expected) in \(steps(s))")
        }
        #expect(zip(all, all.dropFirst()).allSatisfy { $0.atMs <= $1.atMs }, "\(all)")
        #expect(abs((all.last?.atMs ?? 0) - (s.frozenMs ?? -1)) < 1e-6, "released at \(all.last?.atMs ?? 0), frozen_ms \(s.frozenMs ?? -1)")
    }
}

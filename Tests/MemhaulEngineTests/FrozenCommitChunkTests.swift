import MemhaulSender
import MemhaulTestSupport
import Testing

/// The frozen round commits in chunks of at least `frozenCommitChunkBytes`
/// (1 GiB), not `commitChunkBytes` (64 MiB): each commit is a drain and a few
/// fsyncs on the receiver inside the frozen window.
@Suite struct FrozenCommitChunkTests {
    /// A 160 MiB stop-and-copy (the whole process in the frozen round), at a
    /// fixed level so no small first chunk is made for the governor: one commit
    /// by default, three with the frozen round's chunk set back to 64 MiB.
    @Test func aStopAndCopyCommitsOnceNotPerSixtyFourMiB() throws {
        let receiver = try TestReceiver(pki: nil)
        let workload = try startWorkload(["--size", "160M", "--threads", "1", "--rate", "0", "--mix", "text=50,random=50"])
        var commits: [UInt64] = []
        for frozenChunk in [nil, 64 << 20] as [UInt64?] {
            let before = receiver.agent.counters.values
            var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "frozen-chunk-\(frozenChunk ?? 0)")
            r.parameters.maxRounds = 0
            r.compressionLevel = 1
            r.after = .resume
            if let frozenChunk { r.parameters.frozenCommitChunkBytes = frozenChunk }
            let migration = SenderMigration(request: r, connect: try connector(nil))
            migration.run()
            let s = migration.status
            #expect(s.state == .completed, "\(s.error ?? "")")
            commits.append(receiver.agent.counters.values.commits - before.commits)
        }
        #expect(commits == [1, 3], "commits with the default frozen chunk, then with 64 MiB: \(commits)")
        #expect(workload.state != "T")
    }
}

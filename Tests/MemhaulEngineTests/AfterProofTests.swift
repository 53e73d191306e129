import Foundation
import Glibc
import MemhaulWire
import Testing
import MemhaulTestSupport
@testable import MemhaulReceiver
@testable import MemhaulSender
@testable import MemhaulSession

/// The after-proof hook and the RESTORE_* exchange between the real engine on
/// both sides, with a restore service that only pretends (no CRIU): the order
/// (proof first), the source's fate on success and on every failure.
@Suite(.serialized) struct AfterProofTests {
    /// A step shipping one file like the CRIU hand-over does, without a dump; it
    /// records what it saw of the source (frozen and released?).
    static func step(seen: SeenBox) -> AfterProof {
        AfterProof(capabilities: [.criuRestore], requirement: "start it with --restore") { ctx in
            let status = (try? String(contentsOfFile: "/proc/\(ctx.pid)/status", encoding: .utf8)) ?? ""
            seen.set(status.contains("State:\tT") && status.contains("TracerPid:\t0"))
            try ctx.channel.send(.restoreFile(RestoreFile(name: "core-1.img", offset: 0, data: ArraySlice("core".utf8))))
            try ctx.channel.send(.restoreFile(RestoreFile(name: "pagemap-1.img", offset: 0, data: [])))
            try ctx.channel.send(.restoreBegin(RestoreBegin(fileCount: 2, totalBytes: 4)))
            while true {
                switch try ctx.channel.receive() {
                case .restoreDone(let d): ctx.update { $0.restoredPID = Int32(d.pid) }; return
                case .keepalive: continue
                case .error(let e): throw MigrationError.peerError(code: e.code.rawValue, message: e.message)
                case let other: throw MigrationError.protocolViolation("got \(other.frameType)")
                }
            }
        }
    }

    final class SeenBox: @unchecked Sendable {
        private let lock = NSLock()
        private var value: Bool?
        func set(_ v: Bool) { lock.withLock { value = v } }
        var get: Bool? { lock.withLock { value } }
    }

    static func receiver(_ restore: @escaping @Sendable (RestoreService.Job) throws -> RestoreService.Outcome) throws -> TestReceiver {
        let r = try TestReceiver(pki: nil)
        r.agent.restore = RestoreService(restore: restore)
        return r
    }

    @Test func onRestoreDoneTheSourceIsKilled() throws {
        let receiver = try Self.receiver { job in
            #expect((try? String(contentsOfFile: job.criuDirectory + "/core-1.img", encoding: .utf8)) == "core")
            #expect(FileManager.default.fileExists(atPath: job.imageDirectory + "/criu/pagemap-1.img"))
            return .init(pid: 4242, restoreSeconds: 0.01, completeSeconds: 0.02)
        }
        let workload = try startWorkload(["--size", "16M", "--threads", "1", "--rate", "2000"])
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "after-ok")
        let seen = SeenBox()
        r.afterProof = Self.step(seen: seen)
        r.after = .kill
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        let status = migration.status
        #expect(status.state == .completed, "\(status.error ?? "")")
        #expect(status.digest != nil && status.restoredPID == 4242)
        #expect(seen.get == true, "the step saw the source stopped and untraced")
        // The source is killed once B runs the process (gone or a zombie; who reaps it varies).
        var gone = false
        for _ in 0..<500 where !gone {
            gone = workload.state == nil || workload.state == "Z"
            if !gone { usleep(10_000) }
        }
        #expect(gone, "source state \(String(describing: workload.state))")
        // "running" once the sender's CLOSE committed the move (it may trail the sender's return).
        var info = receiver.agent.sessionInfo.last
        for _ in 0..<3000 where info?.state != "running" {
            usleep(10_000)
            info = receiver.agent.sessionInfo.last
        }
        #expect(info?.state == "running" && info?.restoredPID == 4242, "\(String(describing: info))")
    }

    /// The connection breaks after RESTORE_DONE, before the sender's CLOSE
    /// commits the move: the sender resumes its source, so the receiver must
    /// kill its restored copy. Never two copies running.
    @Test func aBreakBeforeTheCommitKillsTheRestoredCopy() throws {
        let restored = try ChildProcess(["/bin/sleep", "600"], stdin: .null)
        defer { restored.kill() }
        let receiver = try Self.receiver { _ in .init(pid: restored.pid, restoreSeconds: 0.01, completeSeconds: 0.02) }
        let workload = try startWorkload(["--size", "16M", "--threads", "1", "--rate", "2000"])
        defer { workload.kill() }
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "after-break")
        let inner = Self.step(seen: SeenBox())
        r.afterProof = AfterProof(capabilities: inner.capabilities, requirement: inner.requirement) { ctx in
            try inner.run(ctx)  // up to RESTORE_DONE
            ctx.channel.stream.abort()  // the link goes before CLOSE
            throw MigrationError.connectionClosed
        }
        r.after = .kill
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        #expect(migration.status.state == .failed)
        #expect(workload.state != "T" && workload.state != nil, "the source runs on")
        #expect(!workload.holdsUserfaultfd && !workload.hasUffdWriteProtect)
        // The receiver noticed and killed its copy (a zombie of this test process until reaped).
        for _ in 0..<3000 where restored.state != "Z" && restored.state != nil { usleep(10_000) }  // a bound, not a timing
        #expect(restored.state == "Z" || restored.state == nil, "the restored copy still runs")
        var info = receiver.agent.sessionInfo.last
        for _ in 0..<500 where info?.state == "running" || info?.state == "restoring" {
            usleep(10_000)
            info = receiver.agent.sessionInfo.last
        }
        #expect(info?.state != "running" && info?.restoredPID == nil, "\(String(describing: info))")
    }

    @Test func aFailedRestoreResumesTheSourceUntracked() throws {
        let receiver = try Self.receiver { _ in throw ReceiverSession.Refusal(code: .restoreFailed, description: "criu restore failed (exit 1): Error (x.c:1): no") }
        let workload = try startWorkload(["--size", "16M", "--threads", "1", "--rate", "2000"])
        defer { workload.kill() }
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "after-fails")
        r.afterProof = Self.step(seen: SeenBox())
        r.after = .kill
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        let status = migration.status
        #expect(status.state == .failed)
        #expect(status.error?.contains("restore-failed") == true && status.error?.contains("Error (x.c:1): no") == true, "\(status.error ?? "")")
        #expect(status.digest != nil, "the proof came first")
        #expect(workload.state != "T" && workload.state != nil, "the source runs on")
        #expect(!workload.holdsUserfaultfd && !workload.hasUffdWriteProtect)
    }

    @Test func aReceiverWithoutRestoreRefusesBeforeAnythingIsFrozen() throws {
        let receiver = try TestReceiver(pki: nil)
        let workload = try startWorkload(["--size", "16M", "--threads", "1", "--rate", "2000"])
        defer { workload.kill() }
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "after-none")
        r.afterProof = Self.step(seen: SeenBox())
        let migration = SenderMigration(request: r, connect: try connector(nil))
        migration.run()
        #expect(migration.status.state == .failed)
        #expect(migration.status.error?.contains("start it with --restore") == true)
        #expect(migration.status.rounds == 0 && migration.status.freezeMs == nil)
        #expect(workload.state != "T")
    }

    @Test func restoreFramesBeforeTheProofAreRefused() throws {
        let receiver = try Self.receiver { _ in .init(pid: 1, restoreSeconds: 0, completeSeconds: 0) }
        let stream = try TCPStreamConnect.open(port: receiver.port)
        let channel = FrameChannel(stream: stream)
        try channel.sendPreamble()
        try channel.send(.hello(Hello(capabilities: [.criuRestore], migrationID: "early", senderName: "t")))
        guard case .welcome(let w) = try channel.receive() else { Issue.record("no WELCOME"); return }
        #expect(w.capabilities.contains(.criuRestore))
        try channel.send(.restoreFile(RestoreFile(name: "core-1.img", offset: 0, data: [])))
        guard case .error(let e) = try channel.receive() else { Issue.record("no ERROR"); return }
        #expect(e.code == .unexpectedMessage && e.message.contains("proof comes first"), "\(e.message)")
    }
}

import MemhaulTLS
enum TCPStreamConnect {
    static func open(port: UInt16) throws -> TCPStream { try TCPStream.connect(host: "127.0.0.1", port: port).boundingReads() }
}

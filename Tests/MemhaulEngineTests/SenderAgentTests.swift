import Foundation
import Glibc
import MemhaulControl
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// The sender agent's control operations against a real receiver process.
@Suite(.serialized) struct SenderAgentTests {
    func waitFinal(_ control: SenderControl, _ id: String) throws -> [String: Any] {
        var status: [String: Any] = [:]
        try SafetyBound.eventually("the end of migration \(id)", every: 20_000) {
            status = try control.handle(ControlRequest(op: "status", args: ["migration": id]))["status"] as! [String: Any]
            return (status["state"] as? String).map { ["completed", "failed", "cancelled"].contains($0) } ?? false
        }
        return status
    }

    @Test func receiverKilledFailsClearlyAndTheAgentKeepsServing() throws {
        let pki = try TestPKI()
        let control = SenderControl(connect: try connector(pki), log: { _ in })
        var receiver = try ReceiverProcess(pki: pki)
        let workload = try startWorkload(["--size", "128M", "--threads", "2", "--rate", "0"])
        _ = try control.handle(ControlRequest(op: "migrate", args: [
            "pid": Int(workload.pid), "to": "127.0.0.1:\(receiver.port)", "id": "agent-1",
            "downtime_limit_ms": 0.001, "auto_converge": false, "max_bandwidth_bytes_per_second": 30e6, "resume_timeout_s": 1]))
        // A second migration of the same PID is refused while the first runs.
        #expect(throws: ControlError.self) {
            _ = try control.handle(ControlRequest(op: "migrate", args: ["pid": Int(workload.pid), "to": "127.0.0.1:1"]))
        }
        try SafetyBound.eventually("round 1 in the agent's status", every: 20_000) {
            let s = try control.handle(ControlRequest(op: "status", args: ["migration": "agent-1"]))["status"] as! [String: Any]
            return ((s["counters"] as? [String: Any])?["round"] as? Int ?? 0) >= 1
        }
        // Live: the report so far, the phase in progress included.
        let live = try #require(try control.handle(ControlRequest(op: "status", args: ["migration": "agent-1", "history": true]))["history"] as? [String: Any])
        #expect((live["rounds"] as? [Any])?.isEmpty == false)
        #expect((live["phases"] as? [[String: Any]])?.compactMap { $0["name"] as? String }.prefix(2) == ["setup", "pre_copy"])
        #expect(live["ended_at"] == nil)
        receiver.child.kill(SIGKILL)
        receiver.child.wait()
        let failed = try waitFinal(control, "agent-1")
        #expect(failed["state"] as? String == "failed")
        #expect(((failed["error"] as? [String: Any])?["message"] as? String)?.isEmpty == false)
        #expect((failed["error"] as? [String: Any])?["code"] as? String != nil)
        #expect(workload.state != "T")
        #expect(!workload.hasUffdWriteProtect)

        // The agent serves the next migration of the same process.
        receiver = try ReceiverProcess(pki: pki)
        _ = try control.handle(ControlRequest(op: "migrate", args: [
            "pid": Int(workload.pid), "to": "127.0.0.1:\(receiver.port)", "id": "agent-2", "max_rounds": 2, "after": "resume"]))
        let done = try waitFinal(control, "agent-2")
        #expect(done["state"] as? String == "completed", "\(done)")
        // `history`: the migration's report, the same keys as report.json.
        let history = try #require(try control.handle(ControlRequest(op: "status", args: ["migration": "agent-2", "history": true]))["history"] as? [String: Any])
        #expect(history["side"] as? String == "sender" && history["migration"] as? String == "agent-2")
        let rounds = try #require(history["rounds"] as? [[String: Any]])
        let doneRounds = (done["counters"] as? [String: Any])?["rounds"] as? Int
        #expect(rounds.count == doneRounds, "\(rounds.count) rounds in the history, status says \(doneRounds ?? -1)")
        #expect(rounds.first?["page_bytes"] as? Int ?? 0 > 0)
        let all = try control.handle(ControlRequest(op: "status"))["migrations"] as! [[String: Any]]
        #expect(all.map { $0["migration"] as? String } == ["agent-1", "agent-2"])
    }

    @Test func controlArgumentsAreChecked() throws {
        let control = SenderControl(connect: { _ in throw MigrationError.connectionClosed }, log: { _ in })
        func code(_ op: String, _ args: [String: Any]) -> String? {
            do { _ = try control.handle(ControlRequest(op: op, args: args)); return nil } catch { return error.code.rawValue }
        }
        #expect(code("migrate", ["to": "h:1"]) == "bad_request")
        #expect(code("migrate", ["pid": 1, "to": "nohostport"]) == "bad_request")
        #expect(code("migrate", ["pid": 1, "to": "h:1", "after": "explode"]) == "bad_request")
        #expect(code("migrate", ["pid": 1, "to": "h:1", "typo": 1]) == "bad_request")
        #expect(code("status", ["migration": "nope"]) == "not_found")
        #expect(code("cutover", [:]) == "bad_request")
        #expect(code("frobnicate", [:]) == "unknown_op")
        #expect(code("migrate", ["pid": 1, "to": "h:1", "report": "relative.json"]) == "bad_request")
        #expect(code("migrate", ["pid": 1, "to": "h:1", "report": 7]) == "bad_request")
        #expect(code("status", ["history": true]) == "bad_request")
    }

    /// `report` writes the migration report also when the migration fails (here
    /// at once: no receiver), with the error and the phases it reached.
    @Test func failedMigrationWritesItsReport() throws {
        let control = SenderControl(connect: { _ in throw MigrationError.connectionClosed }, log: { _ in })
        let path = temporaryDirectory("agent-report") + "/m.json"
        let target = try startWorkload(["--size", "4M"])
        _ = try control.handle(ControlRequest(op: "migrate", args: ["pid": Int(target.pid), "to": "127.0.0.1:1", "id": "agent-report", "report": path]))
        let status = try waitFinal(control, "agent-report")
        #expect(status["state"] as? String == "failed")
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let report = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(report["side"] as? String == "sender" && report["state"] as? String == "failed" && report["migration"] as? String == "agent-report")
        let error = try #require(report["error"] as? [String: Any])
        #expect(error["code"] as? String == "connection_closed", "\(error)")
        let phases = (report["phases"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
        #expect(phases == ["setup", "release"], "\(phases)")
        #expect((report["rounds"] as? [Any])?.isEmpty == true)
    }
}

import Foundation
import Glibc
import MemhaulControl
import Testing
import MemhaulTestSupport
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver

/// Default migration ids (`m-PID-<seconds>-<random>`) never collide for one PID.
@Suite(.serialized) struct DefaultMigrationIDTests {
    @Test func twoDefaultIDsForOnePIDDiffer() {
        let ids = (0..<64).map { _ in MigrationRequest.defaultID(pid: Int32.max) }
        #expect(Set(ids).count == ids.count, "\(ids)")
        for id in ids {
            #expect(id.utf8.count <= 64, "\(id)")
            let parts = id.split(separator: "-")
            #expect(parts.count == 4 && parts[0] == "m" && parts[1] == "\(Int32.max)", "\(id)")
            #expect(parts.last?.count == 6 && parts.last.map { UInt32($0, radix: 16) != nil } == true, "\(id)")
        }
    }

    /// Two agent migrations of one PID, back to back, both without an id: the
    /// second used to get the first one's id (same second) and fail.
    @Test func backToBackDefaultMigrationsOfOnePIDSucceed() throws {
        let receiver = try TestReceiver(pki: nil)
        let control = SenderControl(connect: try connector(nil), log: { _ in })
        let workload = try startWorkload(["--size", "4M", "--threads", "1", "--rate", "0"])
        var ids: [String] = []
        for _ in 0..<2 {
            let started = try control.handle(ControlRequest(op: "migrate", args: [
                "pid": Int(workload.pid), "to": "127.0.0.1:\(receiver.port)", "max_rounds": 0, "after": "resume"]))
            let id = try #require(started["migration"] as? String)
            ids.append(id)
            try SafetyBound.eventually("the end of migration \(id)") {
                let s = try control.handle(ControlRequest(op: "status", args: ["migration": id]))["status"] as! [String: Any]
                let state = s["state"] as? String ?? ""
                if ["completed", "failed", "cancelled"].contains(state) {
                    #expect(state == "completed", "\(s)")
                    return true
                }
                return false
            }
        }
        #expect(ids[0] != ids[1])
    }
}

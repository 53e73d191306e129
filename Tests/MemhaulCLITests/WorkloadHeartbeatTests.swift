import Foundation
import Testing
import MemhaulTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `memhaul-workload --heartbeat FILE`, the target's own clock of a service
/// gap (scripts/bench-restore): a stop of the process shows up as a gap at
/// least as long as the stop, and the file is never held open.
@Suite struct WorkloadHeartbeatTests {
    /// "max_gap_ms ticks last_tick_ns" once its last tick is after `realtimeNs` (polled: the file is the event).
    static func beat(_ path: String, after realtimeNs: UInt64) -> Double? {
        for _ in 0..<1000 {
            if let text = try? String(contentsOfFile: path, encoding: .utf8) {
                let f = text.split(separator: " ")
                if f.count == 3, let gap = Double(f[0]), let last = UInt64(f[2].dropLast()), last > realtimeNs { return gap }
            }
            usleep(10_000)
        }
        return nil
    }

    static func allThreadsStopped(_ pid: Int32) -> Bool {
        for _ in 0..<1000 {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            let states = tasks.compactMap { try? String(contentsOfFile: "/proc/\(pid)/task/\($0)/stat", encoding: .utf8) }
                .map { $0.split(separator: ")").last?.split(separator: " ").first ?? "" }
            if !states.isEmpty && states.allSatisfy({ $0 == "T" }) { return true }
            usleep(1_000)
        }
        return false
    }

    @Test func aStopIsSeenAsAGapAtLeastAsLongAndNoDescriptorStaysOpen() throws {
        let dir = temporaryDirectory("heartbeat")
        let path = dir + "/beat"
        let w = try WorkloadProcess(["--size", "1M", "--heartbeat", path], stdin: .null)
        _ = try #require(Self.beat(path, after: 0))
        let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(w.pid)/fd")) ?? []
        let targets = open.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(w.pid)/fd/\($0)") }
        #expect(!targets.contains { $0.hasPrefix(dir) }, "\(targets)")
        kill(w.pid, SIGSTOP)
        #expect(Self.allThreadsStopped(w.pid))  // only from here is it surely frozen
        let stoppedAt = Date()
        usleep(300_000)  // the stop itself: how long the target is frozen
        let stopped = Date().timeIntervalSince(stoppedAt) * 1000
        let continuedAt = UInt64(Date().timeIntervalSince1970 * 1e9)
        kill(w.pid, SIGCONT)
        let gap = try #require(Self.beat(path, after: continuedAt))
        #expect(gap >= stopped, "gap \(gap) ms, stopped \(stopped) ms")
        kill(w.pid, SIGKILL)
    }
}

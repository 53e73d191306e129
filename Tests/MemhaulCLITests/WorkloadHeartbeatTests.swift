import Foundation
import Testing
import MemhaulSystem
import MemhaulTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `memhaul-workload --heartbeat FILE`, the target's own clock of a service
/// gap (scripts/bench-restore) and of each stall (the benchmarks' frozen
/// window as the target lived it): a stop of the process shows up as a gap at
/// least as long as the stop, and as a stall line spanning it; the file is
/// never held open.
@Suite struct WorkloadHeartbeatTests {
    struct Beat {
        var longestGapMs: Double
        /// `END_REALTIME_NS GAP_NS` lines.
        var stalls: [(end: UInt64, gap: UInt64)]
    }

    /// "max_gap_ms ticks last_tick_ns" and the stall lines, once its last tick is after `realtimeNs` (polled: the file is the event).
    static func beat(_ path: String, after realtimeNs: UInt64) -> Beat? {
        for _ in 0..<1000 {
            if let text = try? String(contentsOfFile: path, encoding: .utf8) {
                let lines = text.split(separator: "\n")
                let f = lines.first?.split(separator: " ") ?? []
                if f.count == 3, let gap = Double(f[0]), let last = UInt64(f[2]), last > realtimeNs {
                    let stalls = lines.dropFirst().compactMap { line -> (UInt64, UInt64)? in
                        let f = line.split(separator: " ")
                        guard f.count == 2, let end = UInt64(f[0]), let gap = UInt64(f[1]) else { return nil }
                        return (end, gap)
                    }
                    return Beat(longestGapMs: gap, stalls: stalls)
                }
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
        let stoppedAt = WallClock.nanoseconds()
        usleep(300_000)  // the stop itself: how long the target is frozen
        let continuedAt = WallClock.nanoseconds()
        let stopped = Double(continuedAt - stoppedAt) / 1e6
        kill(w.pid, SIGCONT)
        let beat = try #require(Self.beat(path, after: continuedAt))
        #expect(beat.longestGapMs >= stopped, "gap \(beat.longestGapMs) ms, stopped \(stopped) ms")
        let spanning = beat.stalls.filter { $0.end >= continuedAt && $0.end - $0.gap <= stoppedAt }
        #expect(spanning.count == 1, "one stall line spans the stop: \(beat.stalls)")
        #expect(spanning.allSatisfy { Double($0.gap) / 1e6 >= stopped })
        kill(w.pid, SIGKILL)
    }
}

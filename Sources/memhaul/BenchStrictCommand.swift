import ArgumentParser
import Foundation
import MemhaulSender
import MemhaulSystem

extension BenchCommand {
    /// `memhaul bench strict --migrations 20`: a mixed workload set (sizes, hot
    /// set and uniform, rates) migrated with the default downtime limit, with
    /// and without `--strict`, alternated; prints each frozen window against
    /// the limit (memhaul's clock and the target's) and the warning of each
    /// that exceeded it, and counts them.
    struct Strict: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Frozen windows over the downtime limit on a mixed workload set, with and without --strict.")
        @Option(help: "Migrations per mode, cycling through the workload set.") var migrations: Int = 20
        @Option(name: .customLong("downtime-limit"), help: "Downtime limit, ms.") var downtimeLimit: Double = ConvergenceParameters().downtimeLimitMs

        struct Outcome {
            var workload: String
            var strict: Bool
            var window: BenchFrozenWindow
            var status: MigrationStatus { window.status }
            /// The status warning of an overrun (`downtime N ms exceeded the limit …`).
            var warning: String? { status.warnings.first { $0.hasPrefix("downtime") } }
        }

        /// Unbuffered: a long run shows its lines as they come.
        func progress(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

        func run() throws {
            let env = try BenchSupport.Environment()
            let receiver = try env.startReceiver()
            defer { withExtendedLifetime(env) { receiver.stop() } }  // the receiver stops before env deletes its scratch
            // (name, workload arguments): sizes 128 MiB – 1 GiB, idle, uniform and hot-set writers, 8 – 80 MB/s.
            let set: [(String, [String])] = [
                ("idle 512M", ["--size", "512M", "--threads", "0"]),
                ("uniform 256M @16MB/s", ["--size", "256M", "--threads", "2", "--rate", "4096", "--pattern", "uniform"]),
                ("hot:0.1 1G @40MB/s", ["--size", "1G", "--threads", "2", "--rate", "10240", "--pattern", "hot:0.1"]),
                ("uniform 128M @80MB/s", ["--size", "128M", "--threads", "2", "--rate", "20480", "--pattern", "uniform"]),
                ("hot:0.05 512M @8MB/s", ["--size", "512M", "--threads", "1", "--rate", "2048", "--pattern", "hot:0.05"]),
            ]
            let heartbeats = set.indices.map { env.scratch + "/heartbeat-\($0)" }
            let workloads = try set.indices.map { try env.startWorkload(set[$0].1 + ["--heartbeat", heartbeats[$0]]) }
            defer { for w in workloads { w.stop() } }
            var outcomes: [Outcome] = []
            progress("strict bench: \(migrations) migrations per mode over \(set.count) workloads, limit \(downtimeLimit) ms, loopback TLS, "
                     + "load average \(BenchSupport.loadAverage())")
            for i in 0..<migrations {
                let k = i % set.count
                for strict in i % 2 == 0 ? [false, true] : [true, false] {
                    let id = "bench-strict-\(strict ? "on" : "off")-\(i)-\(getpid())"
                    var r = MigrationRequest(pid: workloads[k].pid, host: "127.0.0.1", port: receiver.port, id: id)
                    r.after = .resume
                    r.parameters.downtimeLimitMs = downtimeLimit
                    r.parameters.strict = strict
                    let w = try BenchFrozenWindow.migrate(r, env: env, heartbeat: heartbeats[k])
                    env.removeImage(id)
                    let o = Outcome(workload: set[k].0, strict: strict, window: w)
                    outcomes.append(o)
                    let s = o.status
                    let over = (s.frozenMs ?? 0) > downtimeLimit ? "OVER" : "ok"
                    progress(String(format: "  %2d %@ %@ %@ frozen %7.1f ms vs limit %.0f %@ (target saw %7.1f)  downtime %7.1f ms  predicted %6.0f ms  aborted cutovers %d",
                                 i, BenchSupport.pad(set[k].0, 22), BenchSupport.pad(strict ? "strict" : "non-strict", 10), BenchSupport.pad(s.state.rawValue, 9),
                                 s.frozenMs ?? .nan, downtimeLimit, BenchSupport.pad(over, 4),
                                 w.livedMs, s.downtimeMs ?? .nan, s.expectedDowntimeMs ?? .nan, s.abortedCutovers))
                    if let warning = o.warning { progress("       warning: \(warning)") }
                    if let error = s.error { progress("       error: \(error)") }
                }
            }
            for strict in [false, true] {
                let mine = outcomes.filter { $0.strict == strict }
                let done = mine.filter { $0.status.state == .completed }
                let overDowntime = done.filter { ($0.status.downtimeMs ?? 0) > downtimeLimit }
                let overFrozen = mine.filter { ($0.status.frozenMs ?? 0) > downtimeLimit }
                let overLived = mine.filter { $0.window.livedMs > downtimeLimit }
                let aborts = mine.reduce(0) { $0 + $1.status.abortedCutovers }
                progress("\(strict ? "with --strict" : "without --strict"): \(done.count)/\(mine.count) completed, "
                      + "\(overDowntime.count) over the limit to the final commit (downtime_ms), "
                      + "\(overFrozen.count) over it freeze → release (frozen_ms, the proof included), "
                      + "\(overLived.count) as the target saw it (heartbeat), \(aborts) cutovers aborted")
                for o in overFrozen {
                    progress("    \(o.workload): \(o.warning ?? "(no warning)")")
                }
                for o in mine where o.status.state != .completed {
                    progress("    \(o.workload): \(o.status.state.rawValue): \(o.status.error ?? "")")
                }
            }
        }
    }
}

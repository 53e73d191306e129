import ArgumentParser
import Foundation
import MemhaulSender
import MemhaulSystem

extension BenchCommand {
    /// `memhaul bench strict --migrations 20`: a mixed workload set migrated
    /// with the default downtime limit, with and without `--strict`,
    /// alternated; counts the frozen windows that exceeded the limit.
    struct Strict: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Frozen windows over the downtime limit on a mixed workload set, with and without --strict.")
        @Option(help: "Migrations per mode, cycling through the workload set.") var migrations: Int = 10
        @Option(name: .customLong("downtime-limit"), help: "Downtime limit, ms.") var downtimeLimit: Double = ConvergenceParameters().downtimeLimitMs

        struct Outcome {
            var workload: String
            var strict: Bool
            var status: MigrationStatus
        }

        /// Unbuffered: a long run shows its lines as they come.
        func progress(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

        func run() throws {
            let env = try BenchSupport.Environment()
            let receiver = try env.startReceiver()
            defer { receiver.stop() }
            // (name, workload arguments): idle, steady writers, a hot set, and a write-everything one.
            let set: [(String, [String])] = [
                ("idle 128M", ["--size", "128M", "--threads", "0"]),
                ("uniform 256M @16MB/s", ["--size", "256M", "--threads", "2", "--rate", "4096", "--pattern", "uniform"]),
                ("hot:0.1 256M @40MB/s", ["--size", "256M", "--threads", "2", "--rate", "10240", "--pattern", "hot:0.1"]),
                ("uniform 128M @80MB/s", ["--size", "128M", "--threads", "2", "--rate", "20480", "--pattern", "uniform"]),
            ]
            let workloads = try set.map { try env.startWorkload($0.1) }
            defer { for w in workloads { w.stop() } }
            var outcomes: [Outcome] = []
            progress("strict bench: \(migrations) migrations per mode, limit \(downtimeLimit) ms, loopback TLS")
            for i in 0..<migrations {
                let k = i % set.count
                for strict in i % 2 == 0 ? [false, true] : [true, false] {
                    let id = "bench-strict-\(strict ? "on" : "off")-\(i)-\(getpid())"
                    var r = MigrationRequest(pid: workloads[k].pid, host: "127.0.0.1", port: receiver.port, id: id)
                    r.after = .resume
                    r.parameters.downtimeLimitMs = downtimeLimit
                    r.parameters.strict = strict
                    let m = SenderMigration(request: r, connect: try env.connector())
                    m.run()
                    try? FileManager.default.removeItem(atPath: env.scratch + "/images/" + id)
                    let s = m.status
                    outcomes.append(Outcome(workload: set[k].0, strict: strict, status: s))
                    progress(String(format: "  %2d %-22@ %-10@ %-9@ downtime %7.1f ms  frozen %7.1f ms  predicted %6.0f ms  aborts %d%@",
                                 i, set[k].0, strict ? "strict" : "non-strict", s.state.rawValue, s.downtimeMs ?? .nan, s.frozenMs ?? .nan,
                                 s.expectedDowntimeMs ?? .nan, s.abortedCutovers, s.error.map { "  error: \($0)" } ?? ""))
                }
            }
            for strict in [false, true] {
                let mine = outcomes.filter { $0.strict == strict }
                let done = mine.filter { $0.status.state == .completed }
                let overDowntime = done.filter { ($0.status.downtimeMs ?? 0) > downtimeLimit }
                let overFrozen = mine.filter { ($0.status.frozenMs ?? 0) > downtimeLimit }
                let aborts = mine.reduce(0) { $0 + $1.status.abortedCutovers }
                progress("\(strict ? "with --strict" : "without --strict"): \(done.count)/\(mine.count) completed, "
                      + "\(overDowntime.count) over the limit to the final commit (downtime_ms), "
                      + "\(overFrozen.count) over it freeze → release (frozen_ms, the proof included), \(aborts) cutovers aborted")
                for o in overFrozen {
                    let warning = o.status.warnings.first { $0.hasPrefix("downtime") } ?? "(no warning)"
                    progress("    \(o.workload): \(warning)")
                }
                for o in mine where o.status.state != .completed {
                    progress("    \(o.workload): \(o.status.state.rawValue): \(o.status.error ?? "")")
                }
            }
        }
    }
}

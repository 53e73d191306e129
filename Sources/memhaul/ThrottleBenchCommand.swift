import ArgumentParser
import Foundation
import MemhaulSender
import MemhaulSystem

extension BenchCommand {
    /// `memhaul bench throttle --size 256M`: time to converge of a write-everything
    /// workload under each throttle policy and backend, side by side in one run.
    struct Throttle: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Auto-converge on a write-everything workload: classic vs adaptive steps, cgroup vs SIGSTOP throttle (time to converge, EINTRs the target saw).")
        @Option(help: "Workload size (every page rewritten as fast as two threads can).") var size: String = "256M"
        @Option(name: .customLong("max-bandwidth"), help: "Wire cap, bytes/s (0 = unlimited).") var maxBandwidth: Double = 0
        @Option(help: "Runs of each configuration (interleaved).") var repeats: Int = 1
        @Option(name: .customLong("max-time"), help: "Forced cutover after S seconds.") var maxTime: Double = 300

        final class Samples: @unchecked Sendable {  // seen behind the lock
            let lock = NSLock()
            var seen: [(at: Double, eintr: Int, writes: Int)] = []
        }

        struct Outcome {
            var convergeSeconds: Double
            var rounds: Int
            var highestThrottle: Int
            var mechanism: String
            var reason: String
            var downtimeMs: Double
            var eintr: Int
            var writes: Int
        }

        func run() throws {
            let env = try BenchSupport.Environment(certs: nil)
            let receiver = try env.startReceiver()
            defer { withExtendedLifetime(env) { receiver.stop() } }  // the receiver stops before env deletes its scratch
            let configs: [(ThrottleSteps, ThrottleBackend)] = [(.classic, .signals), (.adaptive, .signals), (.classic, .cgroup), (.adaptive, .cgroup)]
            var results: [String: [Outcome]] = [:]
            print("throttle bench: \(size) workload, every page rewritten by 2 threads at full speed; loopback mutual TLS\(maxBandwidth > 0 ? ", cap \(Summary.bytes(maxBandwidth))/s" : "")")
            for run in 0..<repeats {
                for (steps, backend) in configs {
                    let o = try measure(env, receiver.port, steps, backend, run)
                    results["\(steps.rawValue)/\(backend.rawValue)", default: []].append(o)
                    print(String(format: "  %-8@ %-7@ converged in %7.2f s  rounds %3d  throttle up to %2d%% (%@)  downtime %7.1f ms  target EINTRs %5d  writes %@  [%@]",
                                 steps.rawValue, backend.rawValue, o.convergeSeconds, o.rounds, o.highestThrottle, o.mechanism,
                                 o.downtimeMs, o.eintr, String(o.writes), o.reason))
                }
            }
            func median(_ key: String) -> Double {
                let v = (results[key] ?? []).map(\.convergeSeconds).sorted()
                return v.isEmpty ? 0 : v[v.count / 2]
            }
            for backend in ["signals", "cgroup"] {
                let c = median("classic/\(backend)"), a = median("adaptive/\(backend)")
                print(String(format: "  %@: adaptive / classic time to converge: %.2f (%.2f s vs %.2f s, medians)", backend, a / max(0.001, c), a, c))
            }
            let s = median("adaptive/signals"), g = median("adaptive/cgroup")
            print(String(format: "  adaptive: cgroup / signals time to converge: %.2f (%.2f s vs %.2f s)", g / max(0.001, s), g, s))
        }

        func measure(_ env: BenchSupport.Environment, _ port: UInt16, _ steps: ThrottleSteps, _ backend: ThrottleBackend, _ run: Int) throws -> Outcome {
            let w = try env.startWorkload(["--size", size, "--threads", "2", "--rate", "0", "--pattern", "uniform",
                                           "--eintr-probe", "sigtimedwait", "--report-every", "0.5"])
            defer { w.stop() }
            // The target's own counters, every 0.5 s, stamped when they arrive.
            let samples = Samples()
            let child = HandOff(w)
            let reader = Thread {
                while let line = child.value.readLine() {
                    guard line.contains("\"stats\""), let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                          let e = obj["eintr"] as? Int, let n = obj["writes"] as? Int else { continue }
                    samples.lock.withLock { samples.seen.append((MonotonicClock.seconds(), e, n)) }
                }
            }
            reader.start()
            func sample(after t: Double) -> (eintr: Int, writes: Int) {
                for _ in 0..<2000 {
                    if let s = samples.lock.withLock({ samples.seen.first { $0.at > t } }) { return (s.eintr, s.writes) }
                    usleep(5000)
                }
                return (0, 0)
            }
            func sample(before t: Double) -> (eintr: Int, writes: Int) {
                samples.lock.withLock { samples.seen.last { $0.at <= t }.map { ($0.eintr, $0.writes) } ?? (0, 0) }
            }
            let before = sample(after: MonotonicClock.seconds())
            var r = MigrationRequest(pid: w.pid, host: "127.0.0.1", port: port, id: "bench-throttle-\(steps.rawValue)-\(backend.rawValue)-\(run)-\(getpid())")
            r.parameters.throttleSteps = steps
            r.parameters.maxRounds = 1000
            r.parameters.maxTimeSeconds = maxTime
            r.parameters.maxBandwidth = maxBandwidth > 0 ? maxBandwidth : nil
            r.throttle = backend
            r.after = .resume
            let m = SenderMigration(request: r, connect: try env.connector())
            let done = DispatchSemaphore(value: 0)
            let start = MonotonicClock.seconds()
            Thread.detachNewThread { m.run(); done.signal() }
            var cutoverAt: Double?
            var highest = 0
            while done.wait(timeout: .now() + 0.01) == .timedOut {
                let s = m.status
                highest = max(highest, s.throttlePercent)
                if cutoverAt == nil && (s.state == .cutover || s.state.isFinal) { cutoverAt = MonotonicClock.seconds() }
            }
            let s = m.status
            guard s.state == .completed else { throw CLIError("\(r.id) failed: \(s.error ?? s.state.rawValue)") }
            // EINTRs until the cutover (the throttled rounds), from the target's own counter.
            let after = sample(before: cutoverAt ?? MonotonicClock.seconds())
            return Outcome(convergeSeconds: (cutoverAt ?? MonotonicClock.seconds()) - start, rounds: s.rounds ?? 0, highestThrottle: highest,
                           mechanism: s.throttleMechanism?.rawValue ?? "none", reason: s.cutoverReason ?? "-",
                           downtimeMs: s.downtimeMs ?? 0, eintr: after.eintr - before.eintr, writes: after.writes - before.writes)
        }
    }
}

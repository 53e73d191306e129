import ArgumentParser
import Foundation
import MemhaulSender

extension BenchCommand {
    /// `memhaul bench delta`: a key-value workload (`--pattern kv:F`, one 8-byte field per
    /// write) migrated pre-copy with the delta cache off (the baseline) and on, alternated, in
    /// one invocation: wire bytes per re-dirtied page, rounds, total time and downtime.
    struct Delta: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delta encoding of re-dirtied pages: a key-value workload migrated with the delta cache off and on.")
        @Option(help: "Workload size.") var size: String = "1G"
        @Option(help: "Fraction of the pages that are hot keys (every write goes there).") var hot: Double = 0.05
        @Option(help: "Field updates per second (2 writer threads).") var rate: Int = 40000
        @Option(name: .customLong("delta-cache"), help: "The delta cache of the 'delta' runs (K/M/G suffixes).")
        var deltaCache = ByteCount(MigrationRequest.defaultDeltaCacheBytes)
        @Option(help: "Migrations per mode, alternated (baseline first in even repeats, delta first in odd ones).") var repeats: Int = 1
        @Option(help: "Receiver HOST:PORT (default: one started on loopback).") var receiver: String?
        @Option(help: "Certificates directory for --receiver (default: generated).") var certs: String?

        func validate() throws {
            guard hot > 0, hot <= 1 else { throw ValidationError("--hot must be in (0, 1]") }
            guard rate > 0 else { throw ValidationError("--rate must be > 0") }
            guard (1...20).contains(repeats) else { throw ValidationError("--repeats must be 1…20") }
            guard deltaCache.bytes >= 4096, deltaCache.bytes <= MigrationRequest.maxDeltaCacheBytes else {
                throw ValidationError("--delta-cache must be 4K…16G")
            }
        }

        struct Run {
            var status: MigrationStatus
            /// Pages and wire bytes of the rounds after the first full copy (the re-dirtied pages).
            var redirtiedPages: UInt64
            var redirtiedWire: UInt64
            /// Their page bytes per second of streaming (what the pipeline moved: the cost on a fast link).
            var pageRate: Double
            var perPage: Double { redirtiedPages == 0 ? 0 : Double(redirtiedWire) / Double(redirtiedPages) }
        }

        func run() throws {
            let env = try BenchSupport.Environment(certs: certs)
            let (host, port, local) = try env.destination(receiver)
            defer { withExtendedLifetime(env) { local?.stop() } }  // the receiver stops before env deletes its scratch
            let workload = try env.startWorkload(["--size", size, "--threads", "2", "--rate", String(rate), "--pattern", "kv:\(hot)"])
            defer { workload.stop() }

            func migrate(_ name: String, cache: UInt64, _ i: Int) throws -> Run {
                var r = MigrationRequest(pid: workload.pid, host: host, port: port, id: "bench-\(name)-\(i)-\(getpid())")
                r.deltaCacheBytes = cache
                r.after = .resume
                let m = SenderMigration(request: r, connect: try env.connector())
                m.run()
                let s = m.status
                guard s.state == .completed else { throw CLIError("\(name) failed: \(s.error ?? s.state.rawValue)") }
                let later = m.history.rounds.filter { $0.round > 0 }
                // Images of a local receiver go: two per repeat of the workload's size would fill the scratch.
                env.removeImage(r.id)
                let streamSeconds = later.reduce(0) { $0 + $1.streamMs } / 1000
                return Run(status: s, redirtiedPages: later.reduce(0) { $0 + $1.pages }, redirtiedWire: later.reduce(0) { $0 + $1.wireBytes },
                           pageRate: streamSeconds > 0 ? Double(later.reduce(0) { $0 + $1.pageBytes }) / streamSeconds : 0)
            }
            func line(_ name: String, _ r: Run) -> String {
                let s = r.status
                return String(format: "  %-8@ wire/re-dirtied page %7.0f B (%llu pages, streamed at %@/s)  rounds %3ld  downtime %7.1f ms  total %6.2f s  wire %@  delta pages %llu  cache hits %llu misses %llu  commit estimate %.0f ms  cutover: %@",
                              name, r.perPage, r.redirtiedPages, Summary.bytes(r.pageRate), s.rounds, s.downtimeMs ?? 0, (s.totalTimeMs ?? 0) / 1000,
                              Summary.bytes(Double(s.transferredBytes)), s.deltaPages, s.deltaCacheHits, s.deltaCacheMisses,
                              s.commitEstimateMs ?? 0, s.cutoverReason ?? "?")
            }
            print("delta bench: \(size) workload, kv:\(hot) hot set (\(Summary.bytes(Double(BenchSupport.parseSize(size) ?? 0) * hot))), \(rate) field updates/s, to \(host):\(port)")
            var base: [Run] = []
            var delta: [Run] = []
            // Alternated, off first in even repeats and delta first in odd ones: a migration runs
            // while the receiver's disk still writes back the previous image.
            for i in 0..<repeats {
                for on in i % 2 == 0 ? [false, true] : [true, false] {
                    if on {
                        delta.append(try migrate("delta", cache: deltaCache.bytes, i))
                        print(line("delta", delta.last!))
                    } else {
                        base.append(try migrate("off", cache: 0, i))
                        print(line("off", base.last!))
                    }
                }
            }
            func median(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
            let perPage = median(delta.map(\.perPage)) / max(1e-9, median(base.map(\.perPage)))
            let total = median(delta.map { $0.status.totalTimeMs ?? 0 }) / max(1e-9, median(base.map { $0.status.totalTimeMs ?? 0 }))
            let down = median(delta.map { $0.status.downtimeMs ?? 0 }) / max(1e-9, median(base.map { $0.status.downtimeMs ?? 0 }))
            let rateRatio = median(delta.map(\.pageRate)) / max(1e-9, median(base.map(\.pageRate)))
            print(String(format: "  delta/off (medians of %d): wire per re-dirtied page %.4f, re-dirtied page bytes streamed per second %.3f, total time %.3f, downtime %.3f, rounds %ld vs %ld",
                         repeats, perPage, rateRatio, total, down, Int(median(delta.map { Double($0.status.rounds) })), Int(median(base.map { Double($0.status.rounds) }))))
        }
    }
}

import ArgumentParser
import Foundation
import MemhaulSender
import MemhaulSystem

extension BenchCommand {
    /// `memhaul bench final-scan --sizes 256M,2G,4G`: the frozen final scan and
    /// the downtime of idle processes, the final round scanning only what
    /// changed (`changed`, the default) against the full populated walk
    /// (`full-walk`, the method before), alternated in one run.
    struct FinalScan: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "final-scan",
            abstract: "Final frozen scan and downtime of idle processes: changed-pages scan vs the full populated walk.")
        @Option(help: "Workload sizes, comma-separated.") var sizes: String = "256M,2G,4G"
        @Option(help: "Migrations per method and size (medians are printed).") var repeats: Int = 3

        func progress(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

        func run() throws {
            let env = try BenchSupport.Environment()
            let receiver = try env.startReceiver()
            defer { withExtendedLifetime(env) { receiver.stop() } }  // the receiver stops before env deletes its scratch
            progress("final-scan bench: idle workloads, loopback TLS, \(repeats) migrations per method and size, medians")
            for size in sizes.split(separator: ",").map(String.init) {
                let heartbeat = env.scratch + "/heartbeat-\(size)"
                let workload = try env.startWorkload(["--size", size, "--threads", "0", "--heartbeat", heartbeat])
                defer { workload.stop() }
                var scans: [FinalScanMethod: [Double]] = [:]
                var downtimes: [FinalScanMethod: [Double]] = [:]
                var frozen: [FinalScanMethod: [Double]] = [:]
                var lived: [FinalScanMethod: [Double]] = [:]
                for rep in 0..<repeats {
                    for method in FinalScanMethod.allCases {
                        let id = "bench-final-\(method.rawValue)-\(rep)-\(getpid())"
                        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: id)
                        r.after = .resume
                        r.finalScan = method
                        r.deadlines.verification = 600  // the proof of 4 GiB on a loaded machine is not what is measured
                        let w = try BenchFrozenWindow.migrate(r, env: env, heartbeat: heartbeat)
                        let s = w.status
                        lived[method, default: []].append(w.livedMs)
                        frozen[method, default: []].append(s.frozenMs ?? .nan)
                        env.removeImage(id)
                        guard s.state == .completed else { throw CLIError("\(id) failed: \(s.error ?? s.state.rawValue)") }
                        scans[method, default: []].append(s.finalScanMs ?? .nan)
                        downtimes[method, default: []].append(s.downtimeMs ?? .nan)
                    }
                }
                func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }
                let newScan = median(scans[.changed]!), oldScan = median(scans[.fullWalk]!)
                let newDown = median(downtimes[.changed]!), oldDown = median(downtimes[.fullWalk]!)
                progress(String(format: "  %-5@ final scan: changed %7.2f ms, full-walk %7.2f ms (ratio %.3f); downtime: changed %7.1f ms, full-walk %7.1f ms (ratio %.3f)",
                             size, newScan, oldScan, newScan / oldScan, newDown, oldDown, newDown / oldDown))
                progress(String(format: "        frozen (freeze → release, proof included): changed %7.1f ms, full-walk %7.1f ms; as the target saw it (its heartbeat): changed %7.1f ms, full-walk %7.1f ms",
                             median(frozen[.changed]!), median(frozen[.fullWalk]!), median(lived[.changed]!), median(lived[.fullWalk]!)))
                progress("        all final scans ms: changed \(scans[.changed]!.map { String(format: "%.2f", $0) }), full-walk \(scans[.fullWalk]!.map { String(format: "%.2f", $0) })")
            }
        }
    }
}

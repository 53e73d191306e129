import Foundation
import MemhaulSender

/// `memhaul bench migrate --proofs`: the frozen window and its parts with
/// each proof, on one workload, in one run. `full` (the proof before the
/// ledger) runs first and is the baseline of the ratios.
struct BenchProofs {
    let env: BenchSupport.Environment
    let host: String
    let port: UInt16
    let size: String
    let dirtyRate: UInt64
    let repeats: Int

    func run() throws {
        let heartbeat = env.scratch + "/heartbeat"
        var args = ["--size", size, "--mix", "zero=30,text=40,random=30", "--heartbeat", heartbeat]
        if dirtyRate > 0 { args += ["--threads", "1", "--rate", String(Int(Double(dirtyRate) / 4096)), "--pattern", "uniform"] }
        let workload = try env.startWorkload(args)
        defer { workload.stop() }
        let modes: [ProofMode] = [.full, .both, .incremental]
        var runs: [ProofMode: [BenchFrozenWindow]] = [:]
        for i in 0..<max(1, repeats) {
            for mode in modes {
                var r = MigrationRequest(pid: workload.pid, host: host, port: port, id: "bench-proof-\(mode)-\(i)-\(getpid())")
                r.proof = mode
                r.after = .resume
                let w = try BenchFrozenWindow.migrate(r, env: env, heartbeat: heartbeat)
                guard w.status.state == .completed else { throw CLIError("\(mode) failed: \(w.status.error ?? w.status.state.rawValue)") }
                runs[mode, default: []].append(w)
                // Images of a local receiver go: 3 proofs × repeats × size would fill the scratch.
                env.removeImage(r.id)
            }
        }
        func median(_ mode: ProofMode, _ f: (BenchFrozenWindow) -> Double?) -> Double {
            let v = runs[mode, default: []].map { f($0) ?? 0 }.sorted()
            return v.isEmpty ? 0 : v[v.count / 2]
        }
        print("proof bench: \(size) workload, \(dirtyRate == 0 ? "idle" : "dirtying \(dirtyRate) B/s"), pre-copy, --after resume, medians of \(max(1, repeats)), "
              + "to \(host):\(port), load average \(BenchSupport.loadAverage())")
        let baseline = median(.full) { $0.frozenMs }
        for mode in modes {
            var typical = runs[mode]![0]  // the medians of each part, not one run's
            typical.frozenMs = median(mode) { $0.frozenMs }
            typical.freezeMs = median(mode) { $0.freezeMs }
            typical.finalScanMs = median(mode) { $0.finalScanMs }
            typical.finalDeltaMs = median(mode) { $0.finalDeltaMs }
            typical.commitMs = median(mode) { $0.commitMs }
            typical.verifyMs = median(mode) { $0.verifyMs }
            typical.livedMs = median(mode) { $0.livedMs }
            print(String(format: "  %@ %@  (re-read %8.1f)  rounds %2.0f  frozen/full %.4f  (final scan: layout %.1f, walks %.1f in %.0f ioctls)",
                         BenchSupport.pad(mode.rawValue, 12), typical.parts, median(mode) { $0.status.fullProofMs }, median(mode) { Double($0.status.rounds) },
                         typical.frozenMs / max(0.001, baseline), median(mode) { $0.status.finalScanLayoutMs },
                         median(mode) { $0.status.finalScanWalkMs }, median(mode) { $0.status.finalScanIoctls.map(Double.init) }))
            // One run's steps (the median frozen window's): where its parts, "rest" included, went.
            let middle = runs[mode]!.sorted { $0.frozenMs < $1.frozenMs }[runs[mode]!.count / 2]
            print("    steps of the median run (ms since the previous): \(middle.steps)")
        }
    }
}

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
        var args = ["--size", size, "--mix", "zero=30,text=40,random=30"]
        if dirtyRate > 0 { args += ["--threads", "1", "--rate", String(Int(Double(dirtyRate) / 4096)), "--pattern", "uniform"] }
        let workload = try env.startWorkload(args)
        defer { workload.stop() }
        let modes: [ProofMode] = [.full, .both, .incremental]
        var runs: [ProofMode: [MigrationStatus]] = [:]
        for i in 0..<max(1, repeats) {
            for mode in modes {
                var r = MigrationRequest(pid: workload.pid, host: host, port: port, id: "bench-proof-\(mode)-\(i)-\(getpid())")
                r.proof = mode
                r.after = .resume
                let m = SenderMigration(request: r, connect: try env.connector())
                m.run()
                let s = m.status
                guard s.state == .completed else { throw CLIError("\(mode) failed: \(s.error ?? s.state.rawValue)") }
                runs[mode, default: []].append(s)
                // Images of a local receiver go: 3 proofs × repeats × size would fill the scratch.
                try? FileManager.default.removeItem(atPath: env.scratch + "/images/" + r.id)
            }
        }
        func median(_ mode: ProofMode, _ f: (MigrationStatus) -> Double?) -> Double {
            let v = runs[mode, default: []].map { f($0) ?? 0 }.sorted()
            return v.isEmpty ? 0 : v[v.count / 2]
        }
        print("proof bench: \(size) workload, \(dirtyRate == 0 ? "idle" : "dirtying \(dirtyRate) B/s"), pre-copy, --after resume, medians of \(max(1, repeats)), to \(host):\(port)")
        let baseline = median(.full) { $0.frozenMs }
        for mode in modes {
            let frozen = median(mode) { $0.frozenMs }
            print(String(format: "  %-12@ frozen %8.1f ms = freeze %6.1f + final delta %7.1f + verify %8.1f (re-read %8.1f)  rounds %2.0f  frozen/full %.4f",
                         mode.rawValue, frozen, median(mode) { $0.freezeMs }, median(mode) { ($0.downtimeMs ?? 0) - ($0.freezeMs ?? 0) },
                         median(mode) { $0.verifyMs }, median(mode) { $0.fullProofMs }, median(mode) { Double($0.rounds) },
                         frozen / max(0.001, baseline)))
        }
    }
}

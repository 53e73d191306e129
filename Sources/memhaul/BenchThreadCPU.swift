import Foundation
import MemhaulSystem

/// Where a benchmark's CPU went, per thread name (`/proc/PID/task/TID/comm`):
/// CPU time and time runnable but waiting for a CPU, from each thread's
/// `schedstat`. Threads come and go (the sender's workers live for one commit
/// chunk), so a thread polls every 20 ms and keeps each thread's last reading:
/// a thread's last ≤ 20 ms are missed, so the figures are lower bounds.
final class BenchThreadCPU: @unchecked Sendable {  // `latest` behind `lock`
    struct Usage { var cpu = 0.0, wait = 0.0 }
    private let pids: [Int32]
    private let lock = NSLock()
    private var latest: [String: (name: String, cpu: UInt64, wait: UInt64)] = [:]
    /// Threads alive at the start, as they were then (only what they did since counts).
    private var baseline: [String: (name: String, cpu: UInt64, wait: UInt64)] = [:]
    private var running = true
    private let done = DispatchSemaphore(value: 0)
    /// The whole machine's busy time at the start (`/proc/stat`), seconds.
    private let machineAtStart = BenchThreadCPU.machineBusySeconds()
    /// The whole machine's busy CPU seconds between `init` and `finish`: every
    /// process and kernel thread (the file system's kworkers, softirqs), which
    /// the per-thread figures miss; set by ``finish()``.
    private(set) var machineSeconds = 0.0

    init(pids: [Int32]) {
        self.pids = pids
        sample()
        baseline = latest
        Thread.detachNewThread { [self] in
            while lock.withLock({ running }) {
                sample()
                usleep(20_000)
            }
            done.signal()
        }
    }

    private func sample() {
        for pid in pids {
            guard let tids = try? Directory.entries("/proc/\(pid)/task") else { continue }
            for tid in tids {
                let base = "/proc/\(pid)/task/\(tid)"
                guard let stat = try? ProcFS.readString(base + "/schedstat"),
                      let comm = try? ProcFS.readString(base + "/comm") else { continue }
                let f = stat.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }
                guard f.count >= 2 else { continue }
                let name = (pid == getpid() ? "sender " : "receiver ") + comm.trimmingCharacters(in: .whitespacesAndNewlines)
                lock.withLock { latest["\(pid)/\(tid)"] = (name, f[0], f[1]) }
            }
        }
    }

    /// Stops sampling; seconds per thread name, busiest first.
    func finish() -> [(name: String, usage: Usage)] {
        lock.withLock { running = false }
        done.wait()
        sample()
        machineSeconds = Self.machineBusySeconds() - machineAtStart
        var byName: [String: Usage] = [:]
        for (key, t) in lock.withLock({ latest }) {
            let before = baseline[key]
            byName[t.name, default: Usage()].cpu += Double(t.cpu &- (before?.cpu ?? 0)) / 1e9
            byName[t.name, default: Usage()].wait += Double(t.wait &- (before?.wait ?? 0)) / 1e9
        }
        return byName.map { ($0.key, $0.value) }.sorted { $0.usage.cpu > $1.usage.cpu }
    }

    /// All CPUs' time not idle nor waiting for I/O since boot (`/proc/stat`'s `cpu` line), seconds.
    static func machineBusySeconds() -> Double {
        guard let stat = try? ProcFS.readString("/proc/stat"), let line = stat.split(separator: "\n").first else { return 0 }
        let f = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard f.count >= 8 else { return 0 }
        let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7]  // user nice system irq softirq steal
        return busy / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// `name cpu s (+ wait s)` per thread name with at least 5 ms.
    static func describe(_ usage: [(name: String, usage: Usage)]) -> String {
        usage.filter { $0.usage.cpu >= 0.005 }
            .map { String(format: "%@ %.2f s (+%.2f s runnable, waiting for a CPU)", $0.name, $0.usage.cpu, $0.usage.wait) }
            .joined(separator: "; ")
    }
}

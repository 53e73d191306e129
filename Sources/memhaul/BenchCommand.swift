import ArgumentParser
import Foundation
import MemhaulCompression
import MemhaulBench
import MemhaulControl
import MemhaulSession
import MemhaulSystem
import MemhaulSender
import MemhaulReceiver
import MemhaulImage
import MemhaulKernel
import MemhaulTLS

/// `memhaul bench …`: benchmarks that print figures. Each compares against a
/// baseline measured in the same run, because shared machines are noisy.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure memhaul against baselines in the same run (prints figures).",
        subcommands: [Scan.self, Compress.self, Tls.self, Transport.self, Migrate.self, Throttle.self, FinalScan.self, Strict.self, Delta.self])

    /// `memhaul bench scan --size 4G --dirty 1/7`
    struct Scan: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "PAGEMAP_SCAN scan-and-protect vs reading /proc/PID/pagemap, and the write-fault cost (in-process).")
        @Option(help: "Region size (K, M, G suffixes).") var size: String = "4G"
        @Option(help: "Dirty one page in N between rounds, as 1/N.") var dirty: String = "1/7"
        @Option(help: "Repetitions; the best run is printed.") var repeats: Int = 3

        func run() throws {
            guard let bytes = BenchSupport.parseSize(size) else { throw ValidationError("--size: bad size \(size)") }
            let parts = dirty.split(separator: "/")
            guard parts.count == 2, parts[0] == "1", let stride = Int(parts[1]), stride >= 1 else {
                throw ValidationError("--dirty must be 1/N")
            }
            var best: ScanBenchmarkResult?
            for _ in 0..<max(1, repeats) {
                let r = try ScanBenchmark.run(sizeBytes: bytes, dirtyStride: stride)
                if best == nil || r.scanProtectNsPerPage < best!.scanProtectNsPerPage { best = r }
            }
            print(best!)
        }
    }

    /// `memhaul bench compress`
    struct Compress: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "zstd page-batch encoding speed and ratio on mixed memory.")
        @Option(help: "MiB of mixed pages.") var megabytes: Int = 64
        func run() throws {
            for r in CompressionBenchmark.run(megabytes: megabytes) { print(r) }
        }
    }

    /// `memhaul bench tls`
    struct Tls: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Loopback TCP vs TLS 1.3 throughput of one connection.")
        @Option(help: "MiB to send.") var megabytes: Int = 1024
        func run() throws {
            for r in try TransportBenchmark.run(megabytes: megabytes) { print(r) }
        }
    }

    /// `memhaul bench transport --size 1G`: memhaul vs `zstd -1 -T2 | socat OPENSSL` → `zstd -d`,
    /// and vs CRIU's page server over TLS when `MEMHAUL_CRIU` names a CRIU ≥ 4.1.
    struct Transport: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send one process's memory over TLS on loopback: memhaul vs zstd|socat OPENSSL|zstd -d (and criu dump --page-server --tls with MEMHAUL_CRIU).")
        @Option(help: "Workload size (mixed zero/text/random pages).") var size: String = "1G"
        @Option(name: .customLong("compression-level"), help: "memhaul's zstd level, or auto.") var level: String = "auto"
        @Option(help: "Repetitions of each side; the best is kept.") var repeats: Int = 2
        @Option(help: "Directory the receiver keeps its images in (e.g. on tmpfs: /dev/shm/x); default: a scratch directory under TMPDIR.")
        var images: String?
        @Option(name: .customLong("commit-chunk"), help: "MiB of pages per receiver commit of the stop-and-copy round (frozen: ConvergenceParameters.frozenCommitChunkBytes).")
        var commitChunkMiB: UInt64 = ConvergenceParameters().frozenCommitChunkBytes >> 20
        @Option(name: .customLong("max-filled-gap"), help: "The receiver's --max-filled-gap (pages; 0: only page bytes reach the disk).")
        var maxFilledGapPages: UInt64?

        func validate() throws {
            guard level == "auto" || Int32(level) != nil else { throw ValidationError("--compression-level: a zstd level or auto") }
            guard (1...1 << 20).contains(commitChunkMiB) else { throw ValidationError("--commit-chunk must be 1…1048576 MiB") }
            guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") }
        }

        /// `a 3, b 1`, most first: the governor's history in one line.
        static func counts(_ d: [String: Int]) -> String {
            d.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        }

        func run() throws {
            let env = try BenchSupport.Environment()
            let workload = try env.startWorkload(["--size", size])
            defer { workload.stop() }
            let imageRoot = images ?? env.scratch + "/images"
            let receiver = try env.startReceiver(images: imageRoot, arguments: maxFilledGapPages.map { ["--max-filled-gap", String($0)] } ?? [])
            defer { withExtendedLifetime(env) { receiver.stop() } }  // the receiver stops before env deletes its scratch
            let load = ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "?").split(separator: " ").prefix(3).joined(separator: " ")

            // memhaul: stop-and-copy of the whole process, source resumed after each run.
            struct Run {
                var seconds: Double
                var status: MigrationStatus
                var written: BenchSupport.WriteCounters
                var threads: [(name: String, usage: BenchThreadCPU.Usage)]
                var commits: Double, commitSeconds: Double, fsyncSeconds: Double, fillBytes: Double
                var machineSeconds: Double
            }
            var best: Run?
            for i in 0..<repeats {
                var request = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: "bench-transport-\(getpid())-\(i)")
                request.parameters.maxRounds = 0
                request.parameters.commitChunkBytes = commitChunkMiB << 20
                request.parameters.frozenCommitChunkBytes = commitChunkMiB << 20
                request.after = .resume
                request.compressionLevel = Int32(level)
                let migration = SenderMigration(request: request, connect: try env.connector())
                let before = BenchSupport.WriteCounters.read(pid: receiver.child.pid)
                let countersBefore = try env.receiverCounters()
                let threads = BenchThreadCPU(pids: [getpid(), receiver.child.pid])
                migration.run()
                let usage = threads.finish()
                let s = migration.status
                guard s.state == .completed, let downtime = s.downtimeMs else { throw CLIError("memhaul run failed: \(s.error ?? s.state.rawValue)") }
                let countersAfter = try env.receiverCounters()
                func delta(_ key: String) -> Double {
                    ((countersAfter[key] as? NSNumber)?.doubleValue ?? 0) - ((countersBefore[key] as? NSNumber)?.doubleValue ?? 0)
                }
                if best == nil || downtime / 1000 < best!.seconds {
                    best = Run(seconds: downtime / 1000, status: s, written: BenchSupport.WriteCounters.read(pid: receiver.child.pid) - before,
                               threads: usage, commits: delta("commits"), commitSeconds: delta("commit_seconds"), fsyncSeconds: delta("fsync_seconds"),
                               fillBytes: delta("committed_fill_bytes"),
                               machineSeconds: threads.machineSeconds)
                }
                // Scratch images go at once: a 4 GiB run on tmpfs must not hold two.
                env.removeImage(request.id, under: imageRoot)
            }
            let run = best!
            let memoryBytes = Double(run.status.totalBytes)

            // Baseline: the same memory, dumped to tmpfs so reading it costs nothing.
            let dump = try env.dumpMemory(of: workload.pid)
            var baseline = Double.infinity
            let compressed: Int
            do {
                defer { unlink(dump.path) }
                for _ in 0..<repeats { baseline = min(baseline, try env.timeBaseline(file: dump.path)) }
                compressed = try env.baselineCompressedSize(file: dump.path)
            }

            // CRIU alone, when there is one: the same workload, its page server on the images' file system.
            var criu: (seconds: Double, durableSeconds: Double, pageBytes: UInt64, machineSeconds: Double)?
            if let binary = ProcessInfo.processInfo.environment["MEMHAUL_CRIU"], !binary.isEmpty {
                workload.stop()  // its memory back before a second copy starts
                for i in 0..<repeats {
                    let r = try env.timeCRIUDump(workloadArguments: ["--size", size], criu: binary, directory: (imageRoot as NSString).deletingLastPathComponent + "/criu-bench-\(getpid())-\(i)")
                    if criu == nil || r.seconds < criu!.seconds { criu = r }
                }
            }

            let ours = memoryBytes / run.seconds
            let theirs = Double(dump.bytes) / baseline
            let s = run.status
            print(String(format: """
                transport bench: %@ workload (pid %d), mutual TLS 1.3 on loopback, %d core(s), load average %@
                  memory moved                %@ (tracked regions; memhaul reads only pages with content)
                  memhaul (%@)       %.2f s  %7.1f MB/s  wire %@ (ratio %.3f of page bytes); governor: %@ (%d decisions: %@; windows by level: %@)
                  baseline zstd -1 -T2|socat  %.2f s  %7.1f MB/s  wire %@ (ratio %.3f)
                  throughput ratio memhaul/baseline: %.2fx
                """,
                size, workload.pid, ProcessInfo.processInfo.activeProcessorCount, load,
                Summary.bytes(memoryBytes), (s.compression ?? level).padding(toLength: 9, withPad: " ", startingAt: 0), run.seconds, ours / 1e6,
                Summary.bytes(Double(s.transferredBytes)), Double(s.transferredBytes) / max(1, Double(s.pageBytes)),
                s.compressionReason ?? "-", s.compressionDecisions, Self.counts(s.compressionReasons), Self.counts(s.compressionWindowsByLevel),
                baseline, theirs / 1e6, Summary.bytes(Double(compressed)), Double(compressed) / Double(dump.bytes),
                ours / theirs))
            if let criu {
                print(String(format: """
                      criu dump --page-server --tls %.2f s  %7.1f MB/s  pages %@ (page server does not fsync)
                      throughput ratio memhaul/criu: %.2fx
                      criu, then fsync of its files %.2f s (as durable as memhaul's image): ratio memhaul/criu-durable %.2fx
                      CPU of the whole machine during criu's dump: %.2f core-s; memhaul's best run: %.2f core-s (ratio memhaul/criu %.2f)
                    """,
                    criu.seconds, memoryBytes / criu.seconds / 1e6, Summary.bytes(Double(criu.pageBytes)), criu.seconds / run.seconds,
                    criu.durableSeconds, criu.durableSeconds / run.seconds,
                    criu.machineSeconds, run.machineSeconds, run.machineSeconds / max(0.001, criu.machineSeconds)))
            } else {
                print("  criu: not measured (set MEMHAUL_CRIU to a CRIU >= 4.1)")
            }
            print(String(format: """
                  receiver writes per page byte: %.3f (write calls, wchar), %.3f (to the disk, write_bytes; 0 on tmpfs), of which %.3f zeros filling short gaps (image.md "Filled gaps"); images in %@
                  receiver commits: %.0f, mean %.1f ms each (ROUND_END → commit point), fsync part %.1f ms
                  governor's last window: send blocked %.2f, compress CPU %.2f per worker; receiver network %@, storage CPU %@, storage busy %@
                  CPU by thread (best run): %@
                  CPU of the whole machine in that run: %.2f core-s (kernel workers and every other process included; %.2f s more than the threads above)
                """,
                Double(run.written.wchar) / max(1, Double(s.pageBytes)), Double(run.written.writeBytes) / max(1, Double(s.pageBytes)),
                run.fillBytes / max(1, Double(s.pageBytes)), imageRoot,
                run.commits, run.commitSeconds / max(1, run.commits) * 1000, run.fsyncSeconds / max(1, run.commits) * 1000,
                s.sendBlockedFraction ?? -1, s.compressCPUFraction ?? -1,
                s.receiverNetworkBusy.map { String(format: "%.2f", $0) } ?? "-", s.receiverStorageCPU.map { String(format: "%.2f", $0) } ?? "-",
                s.receiverStorageBusy.map { String(format: "%.2f", $0) } ?? "-",
                BenchThreadCPU.describe(run.threads), run.machineSeconds,
                run.machineSeconds - run.threads.reduce(0) { $0 + $1.usage.cpu }))
        }
    }

    /// `memhaul bench migrate --size 4G --dirty-rate 32M`: pre-copy vs stop-and-copy (the frozen window,
    /// its parts, and the target's own view of it), and tracking slowdown.
    struct Migrate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Frozen window of pre-copy vs stop-and-copy on one workload (its parts, and as the target saw it), and the workload's slowdown while tracked.")
        @Option(help: "Workload size.") var size: String = "4G"
        @Option(name: .customLong("dirty-rate"), help: "Bytes/s the workload dirties during the migration.") var dirtyRate: String = "32M"
        @Option(name: .customLong("downtime-limit"), help: "The pre-copy runs' downtime limit, ms.") var downtimeLimit: Double = ConvergenceParameters().downtimeLimitMs
        @Option(help: "Receiver HOST:PORT (default: one started on loopback).") var receiver: String?
        @Option(help: "Certificates directory for --receiver (default: generated).") var certs: String?
        @Option(name: .customLong("slowdown-seconds"), help: "Seconds per phase of the slowdown measurement (0 = skip).")
        var slowdownSeconds: Double = 4
        @Flag(help: "Instead: the frozen window and its parts with each proof (full first, the baseline), pre-copy, --dirty-rate 0 = idle.")
        var proofs = false
        @Option(help: "With --proofs: runs per proof (medians).") var repeats: Int = 1
        @Option(help: "Directory to keep each migration's report in (per-round figures; `memhaul report`); default: none kept.")
        var reports: String?
        @Option(name: .customLong("delta-cache"), help: "The sender's delta cache (as `memhaul migrate --delta-cache`; its size adds to the sender's peak RSS).")
        var deltaCache = ByteCount(MigrationRequest.defaultDeltaCacheBytes)

        func validate() throws {
            guard deltaCache.bytes <= MigrationRequest.maxDeltaCacheBytes else { throw ValidationError("--delta-cache must be at most 16G") }
            guard downtimeLimit > 0, downtimeLimit.isFinite else { throw ValidationError("--downtime-limit must be > 0") }
        }

        func run() throws {
            guard let rate = BenchSupport.parseSize(dirtyRate) else { throw ValidationError("--dirty-rate: bad value") }
            let env = try BenchSupport.Environment(certs: certs)
            let (host, port, local) = try env.destination(receiver)
            defer { withExtendedLifetime(env) { local?.stop() } }  // the receiver stops before env deletes its scratch

            if proofs {
                try BenchProofs(env: env, host: host, port: port, size: size, dirtyRate: rate, repeats: repeats).run()
                return
            }
            if slowdownSeconds > 0 {
                print("tracking slowdown (\(size) workload, 2 writer threads writing as fast as they can; write throughput tracked / untracked):")
                for (pattern, interval) in [("hot:0.1", 1.0), ("uniform", 1.0), ("uniform", 0.1)] {
                    let s = try env.measureSlowdown(size: size, seconds: slowdownSeconds, pattern: pattern, scanInterval: interval)
                    print(String(format: "  %-8@ scan every %4.0f ms: untracked %10.0f writes/s, tracked %10.0f writes/s, ratio %.3f",
                                 pattern, interval * 1000, s.untracked, s.tracked, s.tracked / s.untracked))
                }
            }

            let pagesPerSecond = Double(rate) / 4096
            let heartbeat = env.scratch + "/heartbeat"
            let workload = try env.startWorkload(["--size", size, "--threads", "2", "--rate", String(Int(pagesPerSecond)), "--pattern", "uniform",
                                                  "--heartbeat", heartbeat])
            defer { workload.stop() }
            func migrate(_ id: String, maxRounds: Int?, commitChunk: UInt64? = nil, tighteningRounds: Int? = nil) throws -> BenchFrozenWindow {
                var r = MigrationRequest(pid: workload.pid, host: host, port: port, id: "\(id)-\(getpid())")
                if let maxRounds { r.parameters.maxRounds = maxRounds }
                if let tighteningRounds { r.parameters.tighteningRounds = tighteningRounds }
                r.parameters.downtimeLimitMs = downtimeLimit
                if let commitChunk { r.parameters.commitChunkBytes = commitChunk }
                r.after = .resume
                r.deltaCacheBytes = deltaCache.bytes
                r.deadlines.verification = 600  // a slow proof on a loaded machine is measured, not failed
                let w = try BenchFrozenWindow.migrate(r, env: env, heartbeat: heartbeat, keepReportIn: reports)
                if local != nil { env.removeImage(r.id) }
                guard w.status.state == .completed else { throw CLIError("\(id) failed: \(w.status.error ?? w.status.state.rawValue)") }
                return w
            }
            // Peak RSS of the pre-copy run alone (the slowdown phase before it tracked in this process too).
            try BenchSupport.resetPeakRSS(pid: getpid())
            if let local { try BenchSupport.resetPeakRSS(pid: local.child.pid) }
            let pre = try migrate("bench-precopy", maxRounds: nil)
            let senderPeak = BenchSupport.peakRSS(pid: getpid())
            let receiverPeak = local.flatMap { BenchSupport.peakRSS(pid: $0.child.pid) }
            // The baseline of the tightening rounds: cut over as soon as the prediction fits (QEMU's rule).
            let atFit = try migrate("bench-precopy-fit", maxRounds: nil, tighteningRounds: 0)
            let sac = try migrate("bench-stopcopy", maxRounds: 0)
            // The cost of commit chunks (resume granularity): the same frozen round in one commit.
            let single = try migrate("bench-onecommit", maxRounds: 0, commitChunk: UInt64.max / 2)
            func line(_ name: String, _ w: BenchFrozenWindow) -> String {
                let s = w.status
                return String(format: "  %@ downtime %8.1f ms  rounds %3d  wire %@  pages %@  total %.2f s\n  %@ %@",
                              BenchSupport.pad(name, 14), s.downtimeMs ?? 0, s.rounds, Summary.bytes(Double(s.transferredBytes)),
                              Summary.bytes(Double(s.pageBytes)), (s.totalTimeMs ?? 0) / 1000, BenchSupport.pad("", 14), w.parts)
            }
            print("migrate bench: \(size) workload dirtying \(dirtyRate)B/s, downtime limit \(Int(downtimeLimit)) ms, to \(host):\(port == 0 ? "?" : String(port))"
                  + ", load average \(BenchSupport.loadAverage())")
            print(line("pre-copy", pre))
            print(line("  cut at fit", atFit) + "  (--tightening-rounds 0: cut over as soon as the prediction fits the limit)")
            print(line("stop-and-copy", sac))
            print(line("  one commit", single) + String(format: "  (the frozen round's %d MiB commit chunks cost %.1f%% of it)",
                                                      Int(ConvergenceParameters().frozenCommitChunkBytes >> 20),
                                                      ((sac.status.downtimeMs ?? 0) / max(0.001, single.status.downtimeMs ?? 0) - 1) * 100))
            func ratio(_ what: String, _ a: Double, _ b: Double) -> String {
                String(format: "  %@ ratio pre-copy/stop-and-copy: 1/%.1f (%.4f)", what, b / max(0.001, a), a / max(0.001, b))
            }
            print(ratio("downtime (freeze → final commit)", pre.status.downtimeMs ?? 0, sac.status.downtimeMs ?? 0))
            print(ratio("frozen window (freeze → release, proof included)", pre.frozenMs, sac.frozenMs))
            print(ratio("frozen window as the target saw it (heartbeat)", pre.livedMs, sac.livedMs))
            print(ratio("frozen window, cut at fit,", atFit.frozenMs, sac.frozenMs)
                  + String(format: "; tightening rounds' effect on it: %.2f×, on total time %.2f×", pre.frozenMs / max(0.001, atFit.frozenMs),
                           (pre.status.totalTimeMs ?? 0) / max(0.001, atFit.status.totalTimeMs ?? 0)))
            if let reason = pre.status.cutoverReason { print("  pre-copy cutover: \(reason)") }
            if let reason = atFit.status.cutoverReason { print("  cut-at-fit cutover: \(reason)") }
            func mib(_ bytes: UInt64?) -> String { bytes.map { String(format: "%.1f MiB", Double($0) / 1048576) } ?? "-" }
            // As `--delta-cache` documents it: the cache's size and 16 MiB of its buffers on top of 128 MiB.
            let cacheBuffers: UInt64 = deltaCache.bytes > 0 ? 16 << 20 : 0
            let goal: UInt64 = (128 << 20) + deltaCache.bytes + cacheBuffers
            print(String(format: "  peak RSS of the pre-copy run (VmHWM): sender %@ (this process; goal < 128 MiB + delta cache %@ + its buffers %@ = %@, ratio %.2f), receiver %@",
                         mib(senderPeak), mib(deltaCache.bytes), mib(cacheBuffers), mib(goal), Double(senderPeak ?? 0) / Double(goal), mib(receiverPeak)))
        }
    }
}

import Foundation
import MemhaulBench
import MemhaulSession
import MemhaulSystem
import MemhaulSender
import MemhaulReceiver
import MemhaulImage
import MemhaulKernel
import MemhaulTLS

/// Child processes and fixtures the benchmarks share.
enum BenchSupport {
    /// "4G", "512M", "64K", "1024".
    static func parseSize(_ text: String) -> UInt64? { ByteCount.parse(text) }

    /// `text` padded with spaces to `width` (String(format:)'s `%-12@` does not pad on Linux).
    static func pad(_ text: String, _ width: Int) -> String { text.padding(toLength: max(width, text.count), withPad: " ", startingAt: 0) }

    /// The 1, 5 and 15 minute load averages (`/proc/loadavg`): how shared the machine was during a figure.
    static func loadAverage() -> String {
        let text = (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? ""
        return text.split(separator: " ").prefix(3).joined(separator: " ")
    }

    /// Peak resident memory of `pid` since its start or the last ``resetPeakRSS(pid:)``:
    /// `VmHWM` in `/proc/PID/status`, in bytes; nil when the process is gone.
    static func peakRSS(pid: Int32) -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kib = line.split(separator: " ").dropFirst().first.flatMap({ UInt64($0) })
        else { return nil }
        return kib * 1024
    }

    /// Starts `pid`'s ``peakRSS(pid:)`` again from its current RSS (`5` into `/proc/PID/clear_refs`).
    static func resetPeakRSS(pid: Int32) throws {
        guard let handle = FileHandle(forWritingAtPath: "/proc/\(pid)/clear_refs") else { throw CLIError("cannot open /proc/\(pid)/clear_refs") }
        defer { try? handle.close() }
        try handle.write(contentsOf: Data("5".utf8))
    }

    /// The directory of this executable (the workload is built beside it).
    static var binaryDirectory: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return (exe as NSString).deletingLastPathComponent
    }

    final class Child {
        let process = Process()
        private let output = Pipe()
        private var buffer = Data()
        var pid: Int32 { process.processIdentifier }

        init(_ path: String, _ args: [String]) throws {
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = args
            process.standardOutput = output
            process.standardError = FileHandle.standardError
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }

        func readLine() -> String? {
            while true {
                if let nl = buffer.firstIndex(of: 0x0A) {
                    let line = String(decoding: buffer[buffer.startIndex..<nl], as: UTF8.self)
                    buffer.removeSubrange(buffer.startIndex...nl)
                    return line
                }
                let chunk = output.fileHandleForReading.availableData
                if chunk.isEmpty { return nil }
                buffer.append(chunk)
            }
        }

        func waitFor(_ needle: String) throws -> String {
            while let line = readLine() { if line.contains(needle) { return line } }
            throw CLIError("\(process.executableURL!.lastPathComponent) ended before \"\(needle)\"")
        }

        func stop() {
            kill(pid, SIGCONT)
            process.terminate()
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
    }

    final class Receiver {
        let child: Child
        let port: UInt16
        init(child: Child, port: UInt16) { self.child = child; self.port = port }
        func stop() { child.stop() }
    }

    /// A process's write counters (`/proc/PID/io`): `wchar`, bytes passed to
    /// write calls (files and sockets, any file system), and `write_bytes`,
    /// bytes sent to the block layer (0 on tmpfs).
    struct WriteCounters {
        var wchar: UInt64 = 0
        var writeBytes: UInt64 = 0

        static func read(pid: Int32) -> WriteCounters {
            var c = WriteCounters()
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/io", encoding: .utf8) else { return c }
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: ":")
                guard parts.count == 2, let v = UInt64(parts[1].trimmingCharacters(in: .whitespaces)) else { continue }
                if parts[0] == "wchar" { c.wchar = v }
                if parts[0] == "write_bytes" { c.writeBytes = v }
            }
            return c
        }

        static func - (a: WriteCounters, b: WriteCounters) -> WriteCounters {
            WriteCounters(wchar: a.wchar &- b.wchar, writeBytes: a.writeBytes &- b.writeBytes)
        }
    }

    final class Environment {
        let scratch: String
        let certs: String
        private let ownsCerts: Bool

        init(certs: String? = nil) throws {
            scratch = NSTemporaryDirectory() + "memhaul-bench-\(getpid())"
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            if let certs {
                self.certs = certs
                ownsCerts = false
            } else {
                self.certs = scratch + "/pki"
                _ = try CertificateBundle.create(directory: self.certs, force: true)
                ownsCerts = true
            }
        }

        deinit { try? FileManager.default.removeItem(atPath: scratch) }

        /// Deletes image `id` of a local receiver (under `root`, default the
        /// scratch images) once its session has let go of it: the receiver
        /// writes report.json there as the session ends, after the sender has
        /// seen the end, and holds the image lock until then. 60 s at most.
        func removeImage(_ id: String, under root: String? = nil) {
            let directory = (root ?? scratch + "/images") + "/" + id
            let deadline = MonotonicClock.seconds() + 60
            while MonotonicClock.seconds() < deadline {
                do throws(ImageError) {
                    try ImageReader.open(directory: directory, requireLock: true).close()
                    break
                } catch {
                    guard case .locked = error else { break }  // gone or not an image: nothing to wait for
                    usleep(10_000)
                }
            }
            try? FileManager.default.removeItem(atPath: directory)
        }

        func configuration(_ role: String) -> TLSConfiguration {
            TLSConfiguration(caFile: certs + "/ca.pem", certificateFile: certs + "/\(role).pem", privateKeyFile: certs + "/\(role).key")
        }

        func connector() throws -> SenderMigration.Connector {
            let context = try TLSClientContext(configuration: configuration("sender"))
            return { r in
                let tcp = try TCPStream.connect(host: r.host, port: r.port)
                return try context.connect(over: tcp, serverName: r.serverName ?? r.host)
            }
        }

        func startWorkload(_ args: [String]) throws -> Child {
            let child = try Child(binaryDirectory + "/memhaul-workload", args + ["--exit-after", "3600"])
            _ = try child.waitFor("\"ready\"")
            return child
        }

        /// A receiver on loopback keeping its images under `images` (default: the scratch directory).
        func startReceiver(images: String? = nil, arguments: [String] = []) throws -> Receiver {
            let child = try Child(binaryDirectory + "/memhaul", [
                "receive", "--listen", "127.0.0.1:0", "--images", images ?? scratch + "/images",
                "--certs", certs, "--control", scratch + "/receiver.sock"] + arguments)
            let line = try child.waitFor("listening")
            guard let port = line.split(separator: ":").last.flatMap({ UInt16($0) }) else { throw CLIError("receiver said \(line)") }
            return Receiver(child: child, port: port)
        }

        /// Where the bench migrates to: `--receiver HOST:PORT` when given, else a
        /// receiver started here (`local`, which the caller stops).
        func destination(_ receiver: String?) throws -> (host: String, port: UInt16, local: Receiver?) {
            if let receiver {
                let (host, port) = try MigrationRequest.parseDestination(receiver)
                return (host, port, nil)
            }
            let local = try startReceiver()
            return ("127.0.0.1", local.port, local)
        }

        /// The tracked regions of `pid`, read via /proc/PID/mem into a tmpfs file.
        func dumpMemory(of pid: Int32) throws -> (path: String, bytes: Int) {
            let path = "/dev/shm/memhaul-bench-\(getpid()).mem"
            let maps = try ProcMaps.read(pid: pid)
            kill(pid, SIGSTOP)
            defer { kill(pid, SIGCONT) }
            guard let mem = FileHandle(forReadingAtPath: "/proc/\(pid)/mem") else { throw CLIError("cannot open /proc/\(pid)/mem") }
            FileManager.default.createFile(atPath: path, contents: nil)
            guard let out = FileHandle(forWritingAtPath: path) else { throw CLIError("cannot create \(path)") }
            var total = 0
            for entry in maps where ProcMaps.trackability(of: entry) == .tracked {
                try mem.seek(toOffset: entry.start)
                var left = Int(entry.byteCount)
                while left > 0 {
                    let chunk = try mem.read(upToCount: min(left, 8 << 20)) ?? Data()
                    if chunk.isEmpty { break }
                    out.write(chunk)
                    left -= chunk.count
                    total += chunk.count
                }
            }
            try out.close()
            return (path, total)
        }

        /// Seconds for `zstd -1 -T2 < file | socat OPENSSL` → `socat OPENSSL-LISTEN | zstd -d > /dev/null`.
        func timeBaseline(file: String) throws -> Double {
            let port = 20000 + Int(getpid() % 20000)
            let tls = "cafile=\(certs)/ca.pem,verify=1"
            let script = """
                set -e
                socat -u OPENSSL-LISTEN:\(port),bind=127.0.0.1,reuseaddr,cert=\(certs)/receiver.pem,key=\(certs)/receiver.key,\(tls) STDOUT | zstd -d -q -c > /dev/null &
                rx=$!
                for i in $(seq 1 250); do ss -ltnH "sport = :\(port)" | grep -q . && break; sleep 0.02; done
                start=$(date +%s.%N)
                zstd -1 -T2 -q -c < \(file) | socat -u STDIN OPENSSL:localhost:\(port),cert=\(certs)/sender.pem,key=\(certs)/sender.key,\(tls)
                wait $rx
                end=$(date +%s.%N)
                echo "$start $end"
                """
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = ["-c", script]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            p.waitUntilExit()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Double($0) }
            guard p.terminationStatus == 0, parts.count == 2 else { throw CLIError("baseline pipeline failed (are zstd and socat installed?)") }
            return parts[1] - parts[0]
        }

        func baselineCompressedSize(file: String) throws -> Int {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/bin/bash")
            p.arguments = ["-c", "zstd -1 -T2 -q -c < \(file) | wc -c"]
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            p.waitUntilExit()
            return Int(String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }

        /// Writes/s of a max-rate workload untracked, then tracked with a scan every 100 ms.
        func measureSlowdown(size: String, seconds: Double, pattern: String, scanInterval: Double) throws -> (untracked: Double, tracked: Double) {
            let w = try startWorkload(["--size", size, "--threads", "2", "--rate", "0", "--pattern", pattern, "--report-every", "0.5"])
            defer { w.stop() }
            func average(for duration: Double) throws -> Double {
                var samples: [Double] = []
                let end = Date().addingTimeInterval(duration)
                while Date() < end, let line = w.readLine() {
                    guard line.contains("\"stats\""), let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                          let v = (obj["writes_per_sec"] as? NSNumber)?.doubleValue else { continue }
                    samples.append(v)
                }
                let steady = samples.dropFirst()
                return steady.isEmpty ? 0 : steady.reduce(0, +) / Double(steady.count)
            }
            _ = try average(for: 1)  // warm up
            let untracked = try average(for: seconds)
            let process = try AttachedProcess.attach(pid: w.pid)
            defer { try? process.detach() }
            let tracker = DirtyTracker(scanner: PagemapScanner(pagemap: process.pagemap))
            let ranges = process.registeredRanges
            _ = try tracker.initialRound(ranges: ranges)
            let stop = DispatchSemaphore(value: 0)
            let box = HandOff(tracker)
            let scanning = Thread {
                while stop.wait(timeout: .now() + scanInterval) == .timedOut { _ = try? box.value.nextRound(ranges: ranges) }
            }
            scanning.start()
            let tracked = try average(for: seconds)
            stop.signal()
            return (untracked, tracked)
        }
    }
}

import Foundation
import Testing
import MemhaulTestSupport

/// What `memhaul migrate` shows while it runs (issue 10): the bytes of round
/// 0 move per commit chunk, every stage is named, and with stderr a pipe the
/// per-round lines come as the rounds happen. A real 1 GiB workload, a local
/// receiver; synchronised on the output, never on time.
@Suite(.serialized) struct MigrateProgressCLITests {
    /// A receiver on a free loopback port, its logs discarded.
    final class Receiver {
        let child: ChildProcess
        let port: String
        init(_ dir: String) throws {
            child = try ChildProcess(["/bin/sh", "-c", "exec \"$0\" receive --listen 127.0.0.1:0 --images \"$1\" --insecure --control \"$2\" 2>/dev/null",
                                      builtBinary("memhaul"), dir + "/images", dir + "/r.sock"], stdin: .null)
            let line = try child.expectLine(startingWith: "listening")
            port = String(line.split(separator: ":").last!)
        }
        deinit { child.kill() ; _ = child.wait() }
    }

    /// An idle 1 GiB target: round 0 is many commit chunks, the later rounds
    /// find nothing new, so the dirty set never shrinks and auto-converge
    /// throttles; a downtime limit no real freeze meets forces the cutover at
    /// `--max-rounds`, so every stage runs.
    func migrateArguments(_ pid: Int32, port: String) -> [String] {
        ["migrate", "--pid", "\(pid)", "--to", "127.0.0.1:\(port)", "--insecure", "--after", "resume",
         "--downtime-limit", "0.001", "--max-rounds", "8"]
    }

    @Test func terminalShowsRoundZeroMovingAndEveryStage() throws {
        let dir = temporaryDirectory("progress-tty")
        let receiver = try Receiver(dir)
        let target = try WorkloadProcess(["--size", "1G", "--exit-after", "300"], stdin: .null)
        defer { target.kill(); _ = target.wait() }
        let typescript = dir + "/typescript"
        let command = ([builtBinary("memhaul")] + migrateArguments(target.pid, port: receiver.port)).map { "'\($0)'" }.joined(separator: " ")
        // script(1): memhaul's stderr is a pseudo-terminal; -e: its exit status.
        let script = try ChildProcess(["script", "-q", "-e", "-c", command, typescript], stdin: .null)
        _ = try script.readToEnd()
        #expect(script.wait() == 0)
        let text = String(decoding: try #require(FileManager.default.contents(atPath: typescript)), as: UTF8.self)

        // The live line is redrawn with "\r\e[K"; the segments of round 0 name its bytes sent.
        let segments = text.components(separatedBy: "\r").map { $0.replacingOccurrences(of: "\u{1B}[K", with: "") }
        let roundZero = segments.filter { $0.hasPrefix("round 0 ") }
        #expect(roundZero.contains { $0.hasPrefix("round 0 [#") }, "a bar on the terminal")
        let sentCounts = Set(roundZero.compactMap { s -> String? in
            guard let r = s.range(of: #"[0-9.]+ (B|KiB|MiB|GiB)/"#, options: .regularExpression) else { return nil }
            return String(s[r])
        })
        #expect(sentCounts.count >= 4, "distinct byte counts during round 0: \(sentCounts.sorted())")
        #expect(!text.contains("active round 0"), "the old progress line")
        for segment in roundZero {
            let percent = segment.range(of: #"[0-9]+%"#, options: .regularExpression).flatMap { Int(segment[$0].dropLast()) }
            #expect(percent.map { $0 <= 100 } ?? false, "\(segment)")
        }
        for stage in ["] setup: ", "] round 0: ", "] round 0 sent: ", "] round 1: ", "] throttled: ", "] frozen: ",
                      "] final delta: ", "] verifying: ", "] done: "] {
            #expect(text.contains(stage), "stage \(stage) missing from the terminal:\n\(text.prefix(4000))")
        }
        #expect(segments.contains { $0.hasPrefix("final delta ") }, "a live line of the final delta")
        #expect(segments.contains { $0.range(of: #"^round [0-9]+ throttled [0-9]+%"#, options: .regularExpression) != nil },
                "a live line of a throttled round")
        #expect(text.contains("migration ") && text.contains(": completed"), "the summary")
    }

    @Test func pipedStderrGetsOneLinePerRoundWhileItRuns() throws {
        let dir = temporaryDirectory("progress-pipe")
        let receiver = try Receiver(dir)
        let target = try WorkloadProcess(["--size", "256M", "--exit-after", "300"], stdin: .null)
        defer { target.kill(); _ = target.wait() }
        // stderr into the pipe we read (stdout, the summary, discarded); a
        // migration that cannot converge nor reach its round limit runs until
        // the signal this test sends: the lines read before it came while it ran.
        let args = [builtBinary("memhaul"), "migrate", "--pid", "\(target.pid)", "--to", "127.0.0.1:\(receiver.port)", "--insecure",
                    "--after", "resume", "--downtime-limit", "0.001", "--max-rounds", "100000", "--no-auto-converge"]
        let migrate = try ChildProcess(["/bin/sh", "-c", "exec \"$@\" 2>&1 >/dev/null", "sh"] + args, stdin: .null)
        defer { migrate.kill(); _ = migrate.wait() }
        var seen: [String] = []
        while !seen.contains(where: { $0.contains("] round 2 sent: ") }), let line = try migrate.readLine() { seen.append(line) }
        #expect(isRunning(migrate.pid), "still running after its third round")
        for expected in ["] setup: PID", "] round 0: ", "] round 0 sent: ", "] round 1 sent: ", "] round 2 sent: "] {
            #expect(seen.contains { $0.contains(expected) }, "\(expected) in \(seen)")
        }
        #expect(!seen.contains { $0.contains("\u{1B}[") || $0.contains("\r") }, "no terminal controls in a pipe")
        kill(migrate.pid, SIGTERM)
        var rest: [String] = []
        while let line = try migrate.readLine() { rest.append(line) }
        #expect(rest.contains { $0.contains("] cancelled") }, "\(rest)")
    }
}

/// Not exited (a zombie has exited): /proc/PID/stat's state.
func isRunning(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return false }
    return stat[stat.index(close, offsetBy: 2)] != "Z"
}

/// swift-log through our handler: every line has a date, a level, the
/// component and the migration id; `--log-format json` is one object a line;
/// with -v the engine's lines and the progress lines stay whole lines.
@Suite(.serialized) struct StructuredLogCLITests {
    @Test func everyLogLineCarriesDateLevelComponentAndMigration() throws {
        let dir = temporaryDirectory("logs")
        let receiver = try MigrateProgressCLITests.Receiver(dir)
        for format in ["json", "plain"] {
            let target = try sleeper()
            let id = "log-\(format)"
            let r = try runMemhaul(["migrate", "--pid", "\(target.pid)", "--to", "127.0.0.1:\(receiver.port)", "--insecure", "--id", id,
                                    "--max-rounds", "0", "--after", "resume", "-v", "--log-format", format])
            #expect(r.status == 0, "\(r.err)")
            let lines = r.err.split(separator: "\n").map(String.init)
            let progress = lines.filter { $0.hasPrefix("[") }
            let logs = lines.filter { !$0.hasPrefix("[") }
            #expect(progress.contains { $0.contains("] done: ") }, "\(r.err)")
            #expect(logs.count >= 3, "the insecure warning, a round, the end: \(r.err)")
            for line in logs {
                if format == "json" {
                    let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String], "\(line)")
                    #expect(object["migration"] == id && object["component"] == "sender", "\(line)")
                    #expect(["info", "notice", "warning"].contains(object["level"] ?? ""), "\(line)")
                    #expect(object["time"]?.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression) != nil, "\(line)")
                    #expect(!(object["message"] ?? "").isEmpty, "\(line)")
                } else {
                    let pattern = #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|notice|warning) +sender migration="# + id + ": "
                    #expect(line.range(of: pattern, options: .regularExpression) != nil, "\(line)")
                }
            }
            #expect(logs.contains { $0.contains("round 0") }, "-v logs the engine's rounds: \(r.err)")
        }
    }
}

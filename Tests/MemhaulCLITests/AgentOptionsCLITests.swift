import Foundation
import Testing
import MemhaulTestSupport

/// Bad limits and timeouts are refused before an agent starts, in one clear line.
@Suite(.serialized) struct AgentOptionsCLITests {
    func expectRefused(_ args: [String], _ what: String) throws {
        let r = try runMemhaul(args)
        #expect(r.status != 0)
        #expect(r.err.contains(what), "stderr: \(r.err)")
    }

    @Test func receiverLimitsAreChecked() throws {
        let images = temporaryDirectory("cli") + "/images"  // must not exist yet
        try expectRefused(["receive", "--images", images, "--insecure", "--max-connections", "0"], "--max-connections")
        try expectRefused(["receive", "--images", images, "--insecure", "--frame-timeout", "0"], "--frame-timeout")
        try expectRefused(["receive", "--images", images, "--insecure", "--peer-timeout", "0.1"], "--peer-timeout")
        try expectRefused(["receive", "--images", images, "--insecure", "--max-layout-regions", "0"], "--max-layout-regions")
        try expectRefused(["receive", "--images", images, "--insecure", "--max-pages-per-round", "0"], "--max-pages-per-round")
        try expectRefused(["receive", "--images", images, "--insecure", "--max-images-per-sender", "-1"], "--max-images-per-sender")
        #expect(!FileManager.default.fileExists(atPath: images), "nothing created for refused options")
    }

    @Test func commitChunkIsChecked() throws {
        try expectRefused(["migrate", "--pid", "1", "--to", "127.0.0.1:1", "--insecure", "--commit-chunk", "0"], "--commit-chunk")
    }

    @Test func peerDeadlinesAreChecked() throws {
        for flag in ["--welcome-timeout", "--ack-timeout", "--frozen-ack-timeout", "--drain-timeout", "--verify-timeout"] {
            try expectRefused(["migrate", "--pid", "1", "--to", "127.0.0.1:1", "--insecure", flag, "0"], "\(flag) must be > 0")
        }
    }

    /// The summary shows the whole frozen window and, when it overran the
    /// limit, the warning with the figures (a limit no real freeze can meet).
    @Test func migrateSummaryReportsADowntimeOverrun() throws {
        let dir = NSTemporaryDirectory() + "memhaul-cli-summary-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bin = ProcessInfo.processInfo.environment["MEMHAUL_BIN_DIR"]
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/.build/debug"
        let receiver = Process()
        receiver.executableURL = URL(fileURLWithPath: bin + "/memhaul")
        receiver.arguments = ["receive", "--listen", "127.0.0.1:0", "--images", dir + "/images", "--insecure", "--control", dir + "/r.sock"]
        let out = Pipe()
        receiver.standardOutput = out
        receiver.standardError = FileHandle.nullDevice
        try receiver.run()
        defer { kill(receiver.processIdentifier, SIGKILL); receiver.waitUntilExit() }
        let watchdog = SafetyBound.Watchdog(pid: receiver.processIdentifier, "the receiver's listening line")
        var text = ""
        while !text.contains("listening"), case let chunk = out.fileHandleForReading.availableData, !chunk.isEmpty {
            text += String(decoding: chunk, as: UTF8.self)
        }
        watchdog.end()
        let line = try #require(text.split(separator: "\n").first { $0.contains("listening") })
        let port = try #require(line.split(separator: ":").last.flatMap { UInt16($0) })
        let target = try sleeper()
        let r = try runMemhaul(["migrate", "--pid", "\(target.pid)", "--to", "127.0.0.1:\(port)", "--insecure",
                                "--max-rounds", "0", "--downtime-limit", "0.001", "--after", "resume"])
        #expect(r.status == 0, "\(r.out)\(r.err)")
        #expect(r.out.contains("  frozen: ") && r.out.contains("freeze to release (limit 0.001 ms)"), "\(r.out)")
        #expect(r.out.contains("warning: downtime ") && r.out.contains("exceeded the limit of 0.001 ms"), "\(r.out)")
    }
}

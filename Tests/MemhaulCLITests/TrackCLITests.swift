import Foundation
import Glibc
import Testing

/// Runs the built `memhaul`; returns (exit status, stdout, stderr).
func runMemhaul(_ args: [String], env: [String: String] = [:], asUser user: String? = nil) throws -> (status: Int32, out: String, err: String) {
    let dir = ProcessInfo.processInfo.environment["MEMHAUL_BIN_DIR"]
        ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/.build/debug"
    let p = Process()
    if let user {
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--reuid=\(user)", "--regid=\(user)", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", dir + "/memhaul"] + args
    } else {
        p.executableURL = URL(fileURLWithPath: dir + "/memhaul")
        p.arguments = args
    }
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}

/// A sleeping child to attach to; killed at the end.
final class Sleeper {
    let process = Process()
    var pid: Int32 { process.processIdentifier }
    init() throws {
        process.executableURL = URL(fileURLWithPath: "/bin/sleep")
        process.arguments = ["60"]
        try process.run()
    }
    deinit {
        // SIGKILL: children of a test process inherit a mask that blocks SIGTERM.
        kill(pid, SIGKILL)
        process.waitUntilExit()
    }
}

@Suite(.serialized) struct TrackCLITests {
    /// One non-empty line on stderr that says `what`, and a non-zero exit.
    func expectOneLineError(_ r: (status: Int32, out: String, err: String), _ what: String) {
        #expect(r.status != 0)
        let lines = r.err.split(separator: "\n").filter { !$0.isEmpty && !$0.hasPrefix("Usage") && !$0.contains("--help") }
        #expect(lines.count == 1, "stderr: \(r.err)")
        #expect(r.err.contains(what), "stderr: \(r.err)")
    }

    @Test func trackingAProcessPrintsRounds() throws {
        let s = try Sleeper()
        let r = try runMemhaul(["track", "--pid", "\(s.pid)", "--rounds", "2", "--interval", "50", "--json"])
        #expect(r.status == 0, "\(r.err)")
        let rounds = r.out.split(separator: "\n").filter { $0.contains("\"event\":\"round\"") }
        #expect(rounds.count == 3)
    }

    @Test func missingPIDIsOneClearLine() throws {
        expectOneLineError(try runMemhaul(["track", "--pid", "2147483000", "--rounds", "1"]), "2147483000")
    }

    @Test func untraceableProcessIsOneClearLine() throws {
        // An unprivileged memhaul may not trace a root process.
        let s = try Sleeper()
        expectOneLineError(try runMemhaul(["track", "--pid", "\(s.pid)", "--rounds", "1"], asUser: "65534"), "permission")
    }

    @Test func kernelWithoutPagemapScanIsOneClearLine() throws {
        let s = try Sleeper()
        let r = try runMemhaul(["track", "--pid", "\(s.pid)", "--rounds", "1"], env: ["MEMHAUL_INJECT_FAULTS": "ioctl(PAGEMAP_SCAN)=ENOTTY"])
        expectOneLineError(r, "PAGEMAP_SCAN")
        // And the target is left untracked.
        let smaps = try String(contentsOfFile: "/proc/\(s.pid)/smaps", encoding: .utf8)
        #expect(!smaps.split(separator: "\n").contains { $0.hasPrefix("VmFlags:") && $0.split(separator: " ").contains("uw") })
    }
}

import Foundation
import Glibc
import Testing
import MemhaulTestSupport

/// Runs the built `memhaul` (as `user` through setpriv, with no capabilities); returns (exit status, stdout, stderr).
func runMemhaul(_ args: [String], env: [String: String] = [:], asUser user: String? = nil) throws -> (status: Int32, out: String, err: String) {
    var argv = [builtBinary("memhaul")] + args
    if let user {
        argv = ["/usr/bin/setpriv", "--reuid=\(user)", "--regid=\(user)", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"] + argv
    }
    let r = try runProgram(argv, environment: env)
    return (r.status, r.out, r.err)
}

/// A sleeping child to attach to; killed at the end (ChildProcess's deinit).
func sleeper() throws -> ChildProcess { try ChildProcess(["/bin/sleep", "60"], stdin: .null) }

@Suite(.serialized) struct TrackCLITests {
    /// One non-empty line on stderr that says `what`, and a non-zero exit.
    func expectOneLineError(_ r: (status: Int32, out: String, err: String), _ what: String) {
        #expect(r.status != 0)
        let lines = r.err.split(separator: "\n").filter { !$0.isEmpty && !$0.hasPrefix("Usage") && !$0.contains("--help") }
        #expect(lines.count == 1, "stderr: \(r.err)")
        #expect(r.err.contains(what), "stderr: \(r.err)")
    }

    @Test func trackingAProcessPrintsRounds() throws {
        let s = try sleeper()
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
        let s = try sleeper()
        expectOneLineError(try runMemhaul(["track", "--pid", "\(s.pid)", "--rounds", "1"], asUser: "65534"), "permission")
    }

    @Test func kernelWithoutPagemapScanIsOneClearLine() throws {
        let s = try sleeper()
        let r = try runMemhaul(["track", "--pid", "\(s.pid)", "--rounds", "1"], env: ["MEMHAUL_INJECT_FAULTS": "ioctl(PAGEMAP_SCAN)=ENOTTY"])
        expectOneLineError(r, "PAGEMAP_SCAN")
        // And the target is left untracked.
        let smaps = try String(contentsOfFile: "/proc/\(s.pid)/smaps", encoding: .utf8)
        #expect(!smaps.split(separator: "\n").contains { $0.hasPrefix("VmFlags:") && $0.split(separator: " ").contains("uw") })
    }
}

import Foundation
import Testing
import MemhaulTestSupport
@testable import MemhaulCRIU

/// `memhaul migrate --restore criu` end to end through the CLI: a receiver
/// agent and `memhaul migrate`, both real processes, on loopback.
enum CRIUEndToEnd {
    /// `$MEMHAUL_CRIU` names a criu that memhaul accepts (≥ 4.1, `criu check` passes).
    static let realCRIU: String? = {
        guard let path = ProcessInfo.processInfo.environment["MEMHAUL_CRIU"], !path.isEmpty else { return nil }
        return (try? CRIURunner.open(explicit: path, environment: [:])) != nil ? path : nil
    }()
    static var haveRealCRIU: Bool { realCRIU != nil && haveCompiler }
    static let haveCompiler = FileManager.default.isExecutableFile(atPath: "/usr/bin/cc")

    /// A running `memhaul receive --restore criu`; its stderr in a file.
    final class Receiver {
        let process: ChildProcess
        let port: UInt16
        let stderrPath: String
        var controlPath: String { (stderrPath as NSString).deletingLastPathComponent + "/receiver.sock" }
        init(images: String, criu: String) throws {
            stderrPath = images + "/../receiver.err"
            process = try ChildProcess([builtBinary("memhaul"), "receive", "--listen", "127.0.0.1:0", "--images", images, "--insecure",
                                        "--control", images + "/../receiver.sock", "--restore", "criu", "--criu", criu],
                                       stdin: .null, stderr: .file(stderrPath))
            let text = (try? process.readLine(timeout: 60)) ?? nil
            guard let p = text?.split(separator: ":").last.flatMap({ UInt16($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
                throw CRIURunnerError.handOver("receiver did not start: \(text ?? "") \((try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "")")
            }
            port = p
        }
        var log: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
    }

    static func migrate(pid: Int32, port: UInt16, id: String, criu: String, route: CRIURoute? = nil) throws -> (status: Int32, json: [String: Any], output: String) {
        let r = try runMemhaul(["migrate", "--pid", String(pid), "--to", "127.0.0.1:\(port)", "--insecure", "--id", id,
                                       "--restore", "criu", "--criu", criu, "--json"] + (route.map { ["--criu-route", $0.rawValue] } ?? []))
        let line = r.output.split(separator: "\n").last { $0.hasPrefix("{") }.map(String.init) ?? "{}"
        let json = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
        return (r.status, json, r.output)
    }

    /// State letter of /proc/PID/status (nil: gone), whether it is traced, and whether any VMA is uffd-wp registered.
    static func inspect(_ pid: Int32) -> (state: String, traced: Bool, tracked: Bool)? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        let field = { (name: String) in
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }.map { $0.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces) } ?? ""
        }
        let smaps = (try? String(contentsOfFile: "/proc/\(pid)/smaps", encoding: .utf8)) ?? ""
        let tracked = smaps.split(separator: "\n").contains { $0.hasPrefix("VmFlags:") && $0.split(separator: " ").contains("uw") }
        return (String(field("State").prefix(1)), field("TracerPid") != "0", tracked)
    }

    static func waitGone(_ pid: Int32, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            guard let s = inspect(pid) else { return true }
            if s.state == "Z" || s.state == "X" { return true }
            usleep(20_000)
        }
        return false
    }

    /// A child process we own, killed at the end. Its stdio is /dev/null: CRIU
    /// refuses to dump a task whose stdio is a pipe to a process outside the dump.
    final class Child {
        let process: ChildProcess
        init(_ path: String, _ args: [String]) throws {
            process = try ChildProcess([path] + args, stdin: .null, stdout: .null, stderr: .null)
        }
        var pid: Int32 { process.pid }
    }
}

/// Failure paths with a fake `criu` (no CRIU needed: these run in CI). Each
/// must leave the source running on A, untracked, with CRIU's line in the error.
@Suite(.serialized) struct CRIUMigrationFailureTests {
    @Test func criuMissingFailsBeforeTheSourceIsTouched() throws {
        let dir = temporaryDirectory("criu")
        let source = try CRIUEndToEnd.Child("/bin/sleep", ["600"])
        let r = try runMemhaul(["migrate", "--pid", String(source.pid), "--to", "127.0.0.1:9", "--insecure",
                                       "--restore", "criu", "--criu", dir + "/no-criu"])
        #expect(r.status != 0)
        #expect(r.output.contains("criu not found at \(dir)/no-criu (--criu)"))
        let s = try #require(CRIUEndToEnd.inspect(source.pid))
        #expect(s.state == "S" && !s.traced && !s.tracked)
    }

    @Test func anOldCRIUIsRefusedBeforeTheSourceIsTouched() throws {
        let fake = try FakeCRIU(version: "Version: 3.17.1")
        let source = try CRIUEndToEnd.Child("/bin/sleep", ["600"])
        let r = try runMemhaul(["migrate", "--pid", String(source.pid), "--to", "127.0.0.1:9", "--insecure",
                                       "--restore", "criu", "--criu", fake.path])
        #expect(r.status != 0)
        #expect(r.output.contains("criu 3.17.1 (\(fake.path)) is too old: memhaul needs CRIU ≥ 4.1"))
        let s = try #require(CRIUEndToEnd.inspect(source.pid))
        #expect(s.state == "S" && !s.traced && !s.tracked)
    }

    @Test func aReceiverWithoutRestoreIsRefusedAtTheHandshake() throws {
        let fake = try FakeCRIU()
        let dir = temporaryDirectory("criu")
        try FileManager.default.createDirectory(atPath: dir + "/images", withIntermediateDirectories: true)
        // A receiver without --restore: start it by hand.
        let p = try ChildProcess([builtBinary("memhaul"), "receive", "--listen", "127.0.0.1:0", "--images", dir + "/images", "--insecure",
                                  "--control", dir + "/r.sock"], stdin: .null, stderr: .null)
        let line = try p.readLine(timeout: 60) ?? ""
        let port = try #require(line.split(separator: ":").last.flatMap { UInt16($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        let source = try CRIUEndToEnd.Child("/bin/sleep", ["600"])
        let r = try CRIUEndToEnd.migrate(pid: source.pid, port: port, id: "no-restore", criu: fake.path)
        #expect(r.status != 0)
        #expect(((r.json["error"] as? [String: Any])?["message"] as? String ?? "").contains("memhaul receive --restore criu"))
        #expect((r.json["counters"] as? [String: Any])?["rounds"] as? Int == 0)  // nothing was sent
        let s = try #require(CRIUEndToEnd.inspect(source.pid))
        #expect(s.state == "S" && !s.traced && !s.tracked)
    }

    /// The parent route needs the receiver's `criu-parent-route` capability
    /// (an older receiver would refuse RESTORE_BEGIN only after the dump): it is
    /// asked for in HELLO, so a receiver without it stops the move at WELCOME.
    @Test func theParentRouteAsksForItsCapability() throws {
        let runner = try CRIURunner.open(explicit: try FakeCRIU().path)
        var handOver = CRIUHandOver(runner: runner, options: CRIUOptions(), workRoot: temporaryDirectory("criu"), log: { _ in })
        #expect(handOver.route == .parent)  // the default
        #expect(handOver.step.capabilities == [.criuRestore, .criuParentRoute])
        #expect(handOver.step.requirement.contains("--criu-route lazy"))
        handOver.route = .lazy
        #expect(handOver.step.capabilities == [.criuRestore])
    }

    @Test func aRefusedDumpLeavesTheSourceRunningAndQuotesCRIU() throws {
        let fake = try FakeCRIU(body: #"""
            [ "$1" = dump ] || exit 0
            echo "(00.002000) Error (criu/sk-unix.c:850): unix: Can't dump half of stream unix connection." >> "$log"
            echo "(00.003000) Error (criu/cr-dump.c:2100): Dumping FAILED." >> "$log"
            exit 1
            """#)
        let dir = temporaryDirectory("criu")
        try FileManager.default.createDirectory(atPath: dir + "/images", withIntermediateDirectories: true)
        let receiver = try CRIUEndToEnd.Receiver(images: dir + "/images", criu: fake.path)
        let source = try CRIUEndToEnd.Child("/bin/sleep", ["600"])
        let r = try CRIUEndToEnd.migrate(pid: source.pid, port: receiver.port, id: "dump-refused", criu: fake.path)
        #expect(r.status != 0, "\(r.output)")
        #expect(r.json["state"] as? String == "failed")
        let error = (r.json["error"] as? [String: Any])?["message"] as? String ?? ""
        #expect(error.contains("criu dump failed (exit 1): Error (criu/sk-unix.c:850): unix: Can't dump half of stream unix connection."), "\(error)")
        #expect(r.json["digest"] != nil)  // the proof came first
        #expect(r.json["criu_dump_ms"] == nil && r.json["restored_pid"] == nil)
        let s = try #require(CRIUEndToEnd.inspect(source.pid))
        #expect(s.state == "S" && !s.traced && !s.tracked, "\(s)")
        // The receiver kept its complete image and saw the sender give up.
        #expect(receiver.log.contains("migration dump-refused complete"))
        #expect(FileManager.default.fileExists(atPath: dir + "/images/dump-refused"))
    }

    /// The receiver's side: `criu restore` fails; its line is quoted, the lazy-pages daemon is killed.
    @Test func aFailedRestoreQuotesCRIUAndStopsLazyPages() throws {
        let fake = try FakeCRIU(body: #"""
            case "$1" in
            lazy-pages) echo $$ > "$dir/../lazy.pid"; : > "$dir/lazy-pages.socket"; exec sleep 60;;
            restore) echo "(00.1) Error (criu/files-reg.c:2170): File home/x.log has bad size 100 (expect 200)" >> "$log"
                     echo "(00.2) Error (criu/cr-restore.c:2400): Restoring FAILED." >> "$log"; exit 1;;
            esac
            """#)
        let runner = try CRIURunner.open(explicit: fake.path, environment: [:])
        let dir = temporaryDirectory("criu")
        try FileManager.default.createDirectory(atPath: dir + "/criu", withIntermediateDirectories: true)
        do {
            _ = try runner.restore(directory: dir + "/criu", source: PatternSource([]), servedPID: 1, logPrefix: dir + "/criu",
                                   options: CRIUOptions(), log: { _ in })
            Issue.record("the restore succeeded")
        } catch {
            #expect("\(error)".hasPrefix("criu restore failed (exit 1): Error (criu/files-reg.c:2170): File home/x.log has bad size 100 (expect 200)"), "\(error)")
        }
        let lazy = try #require(Int32((try String(contentsOfFile: dir + "/lazy.pid", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(CRIUEndToEnd.waitGone(lazy, seconds: 5))
    }
}

/// The real thing, gated: CRIU ≥ 4.1 named by `$MEMHAUL_CRIU` (CI has none, so
/// these are reported skipped there). The target runs as the init of its own PID
/// namespace (`unshare --pid --fork`, no mount namespace): on one machine the
/// restored process cannot have the source's PID while the source still exists
/// (it is killed only after B runs), and CRIU restores a PID namespace's init as
/// PID 1 of a new one.
@Suite(.serialized) struct CRIURestoreEndToEndTests {
    static let targetSource = #"""
        #include <fcntl.h>
        #include <signal.h>
        #include <stdint.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <sys/mman.h>
        #include <time.h>
        #include <unistd.h>
        /* target MIB DIR: MIB MiB of memory it fills once and never changes, a hot buffer it keeps
           writing; DIR/ready-0 and, on each SIGUSR1, a new DIR/sum-N: "checksum counter pid". No
           file stays open (CRIU refuses an open file whose size changed). */
        static volatile sig_atomic_t want;
        static void on_usr1(int s) { (void)s; want = 1; }
        static uint64_t sum(const uint64_t *p, size_t n) { uint64_t h = 1469598103934665603ULL; for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL; return h; }
        static void put(const char *dir, const char *kind, uint64_t h, uint64_t counter) {
          static int n; char tmp[4096], final[4096], line[128];
          snprintf(tmp, sizeof tmp, "%s/.%s-%d", dir, kind, n); snprintf(final, sizeof final, "%s/%s-%d", dir, kind, n++);
          int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644); if (fd < 0) return;
          int len = snprintf(line, sizeof line, "%016llx %llu %d\n", (unsigned long long)h, (unsigned long long)counter, (int)getpid());
          if (write(fd, line, len) != len) return; close(fd); rename(tmp, final);
        }
        int main(int argc, char **argv) {
          size_t mib = strtoul(argv[1], 0, 10); const char *dir = argv[2]; size_t n = mib << 17;
          sigset_t none; sigemptyset(&none); sigprocmask(SIG_SETMASK, &none, 0);  /* the test runner's threads block signals */
          for (int fd = 3; fd < 4096; fd++) close(fd);  /* and leak a socket CRIU would call external */
          setsid();
          uint64_t *big = mmap(0, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
          uint64_t x = 0x9E3779B97F4A7C15ULL;
          for (size_t i = 0; i < n; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; big[i] = (i % 4096 < 512) ? 0 : x; }
          uint64_t *hot = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
          struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = on_usr1; sigaction(SIGUSR1, &sa, 0);
          uint64_t counter = 0;
          put(dir, "ready", sum(big, n), 0);
          for (;;) {
            for (int i = 0; i < 64; i++) hot[(counter * 64 + i) % (1 << 17)] = counter;
            counter++;
            if (want) { want = 0; put(dir, "sum", sum(big, n), counter); }
            struct timespec ts = {0, 1000000}; nanosleep(&ts, 0);
          }
        }
        """#

    static func waitFile(_ path: String, seconds: Double) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let s = try? String(contentsOfFile: path, encoding: .utf8), s.hasSuffix("\n") { return s }
            usleep(20_000)
        }
        return nil
    }

    /// Every route: the restored process's own checksum of its memory matches.
    @Test(.enabled(if: CRIUEndToEnd.haveRealCRIU, "needs $MEMHAUL_CRIU naming a CRIU ≥ 4.1 that passes `criu check` (and root, cc)"),
          arguments: CRIURoute.allCases)
    func aProcessMovesAndRunsOnWithItsMemory(route: CRIURoute) throws {
        let criu = CRIUEndToEnd.realCRIU!
        let dir = temporaryDirectory("criu")
        try Self.targetSource.write(toFile: dir + "/target.c", atomically: true, encoding: .utf8)
        let cc = try runTool("/usr/bin/cc", ["-O2", "-o", dir + "/target", dir + "/target.c"])
        try #require(cc.status == 0, "\(cc.output)")
        try FileManager.default.createDirectory(atPath: dir + "/images", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
        let receiver = try CRIUEndToEnd.Receiver(images: dir + "/images", criu: criu)
        let unshare = try CRIUEndToEnd.Child("/usr/bin/unshare", ["--pid", "--fork", dir + "/target", "64", dir + "/out"])
        defer { withExtendedLifetime(unshare) {}; withExtendedLifetime(receiver) {} }  // alive to the end
        let ready = try #require(Self.waitFile(dir + "/out/ready-0", seconds: 30))
        let children = try String(contentsOfFile: "/proc/\(unshare.pid)/task/\(unshare.pid)/children", encoding: .utf8)
        let source = try #require(Int32(children.trimmingCharacters(in: .whitespacesAndNewlines)))
        defer { kill(source, SIGKILL) }  // if the test fails before the move (killing unshare leaves it orphaned)
        let checksum = String(ready.prefix(16))
        kill(source, SIGUSR1)
        let before = try #require(Self.waitFile(dir + "/out/sum-1", seconds: 10))
        #expect(before.hasPrefix(checksum) && before.hasSuffix(" 1\n"))  // PID 1 of its namespace

        let id = "criu-e2e-\(route.rawValue)"
        let r = try CRIUEndToEnd.migrate(pid: source, port: receiver.port, id: id, criu: criu, route: route)
        try #require(r.status == 0, "\(r.output)\n\(receiver.log)")
        #expect(r.json["state"] as? String == "completed")
        let restored = try #require((r.json["restored_pid"] as? NSNumber)?.int32Value)
        defer { kill(restored, SIGKILL) }
        for key in ["freeze_ms", "verify_ms", "criu_dump_ms", "transfer_ms", "restore_ms", "pages_complete_ms", "frozen_window_ms"] {
            #expect(r.json[key] is NSNumber, "\(key) missing")
        }
        #expect((r.json["counters"] as? [String: Any])?["downtime_ms"] is NSNumber, "downtime_ms missing")
        // The source is gone; the restored process runs and its memory is right.
        #expect(CRIUEndToEnd.waitGone(source, seconds: 10))
        let s = try #require(CRIUEndToEnd.inspect(restored))
        #expect(s.state != "T" && !s.traced)
        kill(restored, SIGUSR1)
        let after = try #require(Self.waitFile(dir + "/out/sum-2", seconds: 10))
        #expect(after.hasPrefix(checksum), "checksum after the move: \(after), before: \(before)")
        let counters = [before, after].map { UInt64($0.split(separator: " ")[1]) ?? 0 }
        #expect(counters[1] > counters[0])  // it ran on from where it was
        #expect(receiver.log.contains("process running on this host as PID \(restored)"))
        // The receiver took the route asked for (parent: no lazy-pages daemon at all).
        #expect(receiver.log.contains("criu parent chain:") == (route == .parent), "\(receiver.log)")
        #expect(receiver.log.contains("lazy pages coming in") == (route == .lazy), "\(receiver.log)")
        let status = try runMemhaul(["ctl", "status", "--socket", receiver.controlPath])
        let session = ((try? JSONSerialization.jsonObject(with: Data(status.output.utf8))) as? [String: Any])
            .flatMap { ($0["result"] as? [String: Any])?["sessions"] as? [[String: Any]] }?.first { $0["migration"] as? String == id }
        #expect(session?["state"] as? String == "running", "\(status.output)")
        #expect((session?["restored_pid"] as? NSNumber)?.int32Value == restored)
    }
}

extension CRIURestoreEndToEndTests {
    /// A real dump on A, a restore that fails on B (a fake criu there): the
    /// source must run on at A, untracked, and the error quote B's CRIU.
    @Test(.enabled(if: CRIUEndToEnd.haveRealCRIU, "needs $MEMHAUL_CRIU naming a CRIU ≥ 4.1 that passes `criu check` (and root, cc)"))
    func aRestoreFailingOnTheReceiverLeavesTheSourceRunning() throws {
        let criu = CRIUEndToEnd.realCRIU!
        let fakeB = try FakeCRIU(body: #"""
            case "$1" in
            lazy-pages) : > "$dir/lazy-pages.socket"; exec sleep 60;;
            restore) echo "(00.1) Error (criu/files-reg.c:2170): File tmp/app.log has bad size 4096 (expect 8192)" >> "$log"; exit 1;;
            esac
            """#)
        let dir = temporaryDirectory("criu")
        try Self.targetSource.write(toFile: dir + "/target.c", atomically: true, encoding: .utf8)
        let cc = try runTool("/usr/bin/cc", ["-O2", "-o", dir + "/target", dir + "/target.c"])
        try #require(cc.status == 0, "\(cc.output)")
        try FileManager.default.createDirectory(atPath: dir + "/images", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
        let receiver = try CRIUEndToEnd.Receiver(images: dir + "/images", criu: fakeB.path)
        let unshare = try CRIUEndToEnd.Child("/usr/bin/unshare", ["--pid", "--fork", dir + "/target", "16", dir + "/out"])
        defer { withExtendedLifetime(unshare) {}; withExtendedLifetime(receiver) {} }
        _ = try #require(Self.waitFile(dir + "/out/ready-0", seconds: 30))
        let children = try String(contentsOfFile: "/proc/\(unshare.pid)/task/\(unshare.pid)/children", encoding: .utf8)
        let source = try #require(Int32(children.trimmingCharacters(in: .whitespacesAndNewlines)))
        defer { kill(source, SIGKILL) }

        let r = try CRIUEndToEnd.migrate(pid: source, port: receiver.port, id: "criu-restore-fails", criu: criu)
        #expect(r.status != 0)
        let error = (r.json["error"] as? [String: Any])?["message"] as? String ?? ""
        #expect(error.contains("restore-failed") && error.contains("File tmp/app.log has bad size 4096 (expect 8192)"), "\(error)")
        #expect(r.json["criu_dump_ms"] is NSNumber && r.json["restored_pid"] == nil)
        let s = try #require(CRIUEndToEnd.inspect(source))
        #expect(s.state != "T" && !s.traced && !s.tracked, "\(s)")
        kill(source, SIGUSR1)  // and it runs: it answers
        #expect(Self.waitFile(dir + "/out/sum-1", seconds: 10) != nil)
    }
}

extension CRIURestoreEndToEndTests {
    /// The receiver dies while it restores (its criu restore hangs; the test kills
    /// the agent): the sender loses the connection and resumes its source.
    @Test(.enabled(if: CRIUEndToEnd.haveRealCRIU, "needs $MEMHAUL_CRIU naming a CRIU ≥ 4.1 that passes `criu check` (and root, cc)"))
    func aReceiverLostDuringTheRestoreLeavesTheSourceRunning() throws {
        let criu = CRIUEndToEnd.realCRIU!
        let fakeB = try FakeCRIU(body: #"""
            case "$1" in
            lazy-pages) echo $$ > "$dir/../../pid-lazy"; : > "$dir/lazy-pages.socket"; exec sleep 60;;
            restore) echo $$ > "$dir/../../pid-restore"; : > "$dir/../../restoring"; exec sleep 60;;
            esac
            """#)
        let dir = temporaryDirectory("criu")
        try Self.targetSource.write(toFile: dir + "/target.c", atomically: true, encoding: .utf8)
        let cc = try runTool("/usr/bin/cc", ["-O2", "-o", dir + "/target", dir + "/target.c"])
        try #require(cc.status == 0, "\(cc.output)")
        try FileManager.default.createDirectory(atPath: dir + "/images", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/out", withIntermediateDirectories: true)
        let receiver = try CRIUEndToEnd.Receiver(images: dir + "/images", criu: fakeB.path)
        let unshare = try CRIUEndToEnd.Child("/usr/bin/unshare", ["--pid", "--fork", dir + "/target", "16", dir + "/out"])
        defer { withExtendedLifetime(unshare) {}; withExtendedLifetime(receiver) {} }
        _ = try #require(Self.waitFile(dir + "/out/ready-0", seconds: 30))
        let children = try String(contentsOfFile: "/proc/\(unshare.pid)/task/\(unshare.pid)/children", encoding: .utf8)
        let source = try #require(Int32(children.trimmingCharacters(in: .whitespacesAndNewlines)))
        defer { kill(source, SIGKILL) }
        // Kill the receiver agent once its criu restore runs (<images>/<id>/criu/../../restoring).
        let agent = receiver.process.pid
        let watcher = Thread {
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline, !FileManager.default.fileExists(atPath: dir + "/images/restoring") { usleep(10_000) }
            kill(agent, SIGKILL)
        }
        watcher.start()
        let r = try CRIUEndToEnd.migrate(pid: source, port: receiver.port, id: "criu-lost", criu: criu)
        #expect(r.status != 0)
        #expect(r.json["state"] as? String == "failed", "\(r.output)")
        #expect(r.json["criu_dump_ms"] is NSNumber && r.json["restored_pid"] == nil)
        let s = try #require(CRIUEndToEnd.inspect(source))
        #expect(s.state != "T" && !s.traced && !s.tracked, "\(s)")
        kill(source, SIGUSR1)
        #expect(Self.waitFile(dir + "/out/sum-1", seconds: 10) != nil)
        // The fake restore and lazy-pages the dead agent left behind (started by this test).
        for name in ["pid-lazy", "pid-restore"] {
            if let text = try? String(contentsOfFile: dir + "/images/" + name, encoding: .utf8),
               let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGKILL) }
        }
    }
}

/// A program run to its end: exit status and stdout+stderr together.
func runTool(_ path: String, _ args: [String]) throws -> (status: Int32, output: String) {
    let r = try runProgram([path] + args)
    return (r.status, r.out + r.err)
}

/// The built `memhaul` run to its end.
func runMemhaul(_ args: [String]) throws -> (status: Int32, output: String) { try runTool(builtBinary("memhaul"), args) }

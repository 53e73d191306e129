import Foundation
import Testing
import MemhaulTestSupport
@testable import MemhaulCRIU

/// A fake `criu`: a shell script that prints `version` for --version and,
/// for anything else, runs `body` (with $@ the CRIU arguments).
struct FakeCRIU {
    let dir: String
    var path: String { dir + "/criu" }

    init(version: String = "Version: 4.2\nGitID: v4.2", check: String = "echo 'Looks good.'; exit 0", body: String = "exit 0") throws {
        dir = temporaryDirectory("criu")
        let script = """
            #!/bin/sh
            if [ "$1" = --version ]; then printf '%s\\n' "\(version)"; exit 0; fi
            if [ "$1" = check ]; then \(check); fi
            # -o LOG wherever it is among the arguments
            log=/dev/null; dir=.; prev=
            for a in "$@"; do [ "$prev" = -o ] && log=$a; [ "$prev" = -D ] && dir=$a; prev=$a; done
            \(body)
            """
        // O_CLOEXEC: a child another test forks meanwhile must not keep it open
        // for writing, or exec of the script fails with ETXTBSY ("could not be completed").
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        guard fd >= 0 else { throw TestSetupError("cannot create \(path)") }
        let bytes = Array(script.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard written == bytes.count else { throw TestSetupError("cannot write \(path)") }
    }
}

@Suite struct CRIUVersionTests {
    @Test func parsesWhatCRIUPrints() {
        #expect(CRIUVersion.parse("Version: 4.2\nGitID: v4.2\n") == CRIUVersion(4, 2))
        #expect(CRIUVersion.parse("Version: 3.17.1\n") == CRIUVersion(3, 17, 1))
        #expect(CRIUVersion.parse("Version: 4.1.1-rc2\nGitID: v4.1.1-12-gabc\n") == CRIUVersion(4, 1, 1))
        #expect(CRIUVersion.parse("criu: unknown option\n") == nil)
        #expect(CRIUVersion.parse("Version: four\n") == nil)
        #expect(CRIUVersion.parse("") == nil)
    }

    @Test func theMinimumIs41() {
        #expect(CRIUVersion(4, 1) >= CRIUVersion.minimum)
        #expect(CRIUVersion(4, 2) >= CRIUVersion.minimum)
        #expect(CRIUVersion(5, 0) >= CRIUVersion.minimum)
        #expect(CRIUVersion(3, 17, 1) < CRIUVersion.minimum)
        #expect(CRIUVersion(4, 0, 9) < CRIUVersion.minimum)
    }
}

@Suite struct CRIURunnerErrorTests {
    @Test func criuMissingNamesTheFix() throws {
        let empty = temporaryDirectory("criu")
        #expect(throws: CRIURunnerError.notFound("criu not found: install CRIU ≥ 4.1 or pass --criu PATH")) {
            try CRIURunner.locate(explicit: nil, environment: ["PATH": empty], fallbackDirectories: [])
        }
        do {
            _ = try CRIURunner.locate(explicit: empty + "/nope", environment: [:])
            Issue.record("a missing --criu was accepted")
        } catch {
            #expect(error.description.contains("--criu") && error.description.contains(empty + "/nope"))
        }
        do {
            _ = try CRIURunner.locate(explicit: nil, environment: ["MEMHAUL_CRIU": empty + "/nope"])
            Issue.record("a missing MEMHAUL_CRIU was accepted")
        } catch {
            #expect(error.description.contains("MEMHAUL_CRIU"))
        }
    }

    @Test func theOrderIsExplicitThenEnvironmentThenPath() throws {
        let a = try FakeCRIU(), b = try FakeCRIU(), c = try FakeCRIU()
        #expect(try CRIURunner.locate(explicit: a.path, environment: ["MEMHAUL_CRIU": b.path, "PATH": c.dir]) == a.path)
        #expect(try CRIURunner.locate(explicit: nil, environment: ["MEMHAUL_CRIU": b.path, "PATH": c.dir]) == b.path)
        #expect(try CRIURunner.locate(explicit: nil, environment: ["PATH": c.dir]) == c.path)
    }

    @Test func anOldCRIUIsRefusedWithItsVersion() throws {
        let fake = try FakeCRIU(version: "Version: 3.17.1")
        do {
            _ = try CRIURunner.open(explicit: fake.path, environment: [:])
            Issue.record("criu 3.17.1 was accepted")
        } catch let error as CRIURunnerError {
            #expect(error == .tooOld(path: fake.path, version: CRIUVersion(3, 17, 1)))
            #expect(error.description.hasPrefix("criu 3.17.1 (\(fake.path)) is too old: memhaul needs CRIU ≥ 4.1"))
            #expect(error.description.contains("install CRIU ≥ 4.1 or pass --criu PATH"))
        }
    }

    @Test func aBinaryWithoutAVersionIsRefused() throws {
        let fake = try FakeCRIU(version: "hello")
        #expect(throws: CRIURunnerError.noVersion(path: fake.path, output: "hello")) {
            try CRIURunner.open(explicit: fake.path, environment: [:])
        }
    }

    @Test func aFailingCheckQuotesCRIU() throws {
        let fake = try FakeCRIU(check: #"echo "Error (criu/cr-check.c:1234): UFFD is not supported" >&2; exit 1"#)
        do {
            _ = try CRIURunner.open(explicit: fake.path, environment: [:])
            Issue.record("a failing criu check was accepted")
        } catch {
            #expect("\(error)".contains("UFFD is not supported"))
            #expect("\(error)".contains("check"))
        }
        // Without the check, the same binary opens.
        #expect(try CRIURunner.open(explicit: fake.path, environment: [:], check: false).version == CRIUVersion(4, 2))
    }

    @Test func aRefusedDumpQuotesCRIUsErrorLineAndKillsNothingElse() throws {
        let fake = try FakeCRIU(body: #"""
            echo "(00.001000) Warn  (criu/cr-dump.c:1): something harmless" >> "$log"
            echo "(00.002000) Error (criu/files-reg.c:1700): Can't dump ghost file /tmp/x of 123 size" >> "$log"
            echo "(00.003000) Error (criu/cr-dump.c:2100): Dumping FAILED." >> "$log"
            exit 1
            """#)
        let runner = try CRIURunner.open(explicit: fake.path, environment: [:])
        let dir = temporaryDirectory("criu")
        do {
            _ = try runner.dump(pid: 1, directory: dir + "/images", log: dir + "/dump.log", options: CRIUOptions())
            Issue.record("a failed dump succeeded")
        } catch let error as CRIURunnerError {
            guard case .failed(let step, let status, let detail, let log) = error else { Issue.record("\(error)"); return }
            #expect(step == "criu dump" && status == "exit 1" && log == dir + "/dump.log")
            #expect(detail == "Error (criu/files-reg.c:1700): Can't dump ghost file /tmp/x of 123 size")
        }
    }

    @Test func aDumpThatNeverOpensItsPageServerTimesOutAndIsKilled() throws {
        let fake = try FakeCRIU(body: "exec sleep 30")
        var timeouts = CRIURunner.Timeouts()
        timeouts.dump = 1
        let runner = try CRIURunner.open(explicit: fake.path, environment: [:], timeouts: timeouts)
        let dir = temporaryDirectory("criu")
        let start = Date()
        #expect(throws: CRIURunnerError.timedOut(step: "criu dump", seconds: 1, log: dir + "/dump.log")) {
            try runner.dump(pid: 1, directory: dir + "/images", log: dir + "/dump.log", options: CRIUOptions())
        }
        #expect(Date().timeIntervalSince(start) < 10)
    }

    /// CRIU's lazy dump corks its page-server socket, so its answer to
    /// PS_IOV_CLOSE sat 200 ms in the kernel (the cork timer), in every frozen
    /// window, until the socket closed, which CRIU does only after reading end
    /// of stream. This fake holds its answer until then: the runner must
    /// half-close after PS_IOV_CLOSE (before the fix it waited for the answer
    /// and the fake gave up after 20 s).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") || FileManager.default.isExecutableFile(atPath: "/usr/local/bin/python3")))
    func theDumpsPageServerGetsEndOfStreamRightAfterTheClose() throws {
        let fake = try FakeCRIU(body: #"""
            port=; prev=; for a in "$@"; do [ "$prev" = --port ] && port=$a; prev=$a; done
            exec python3 -c '
            import socket, struct, sys
            l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            l.bind(("127.0.0.1", int(sys.argv[1]))); l.listen(1)
            c, _ = l.accept(); iov = c.recv(32, socket.MSG_WAITALL)
            assert len(iov) == 32 and struct.unpack("<I", iov[:4])[0] == 0x1023, iov
            c.settimeout(20)
            assert c.recv(1) == b"", "data after PS_IOV_CLOSE"
            c.sendall(struct.pack("<i", 0)); c.close()' "$port"
            """#)
        let runner = try CRIURunner.open(explicit: fake.path, environment: [:])
        let dir = temporaryDirectory("criu")
        let r = try runner.dump(pid: 1, directory: dir + "/images", log: dir + "/dump.log", options: CRIUOptions())
        #expect(r.closeStatus == 0)
    }

    @Test func errorLineIsTheLastSpecificError() {
        // CRIU logs errors it goes on after (RLIMIT_NOFILE); the last one before the summary is why it stopped.
        #expect(CRIULog.errorLine(in: "(0.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n(0.2) Warn (x.c:1): w\n(0.3) Error (criu/sk-unix.c:874): unix: External socket is used.\n(0.4) Error (c.c:3): Dumping FAILED.\n")
                == "Error (criu/sk-unix.c:874): unix: External socket is used.")
        #expect(CRIULog.errorLine(in: "(0.3) Error (c.c:3): Dumping FAILED.\n") == "Error (c.c:3): Dumping FAILED.")
        #expect(CRIULog.errorLine(in: "just a line\nlast line\n") == "last line")
        #expect(CRIULog.errorLine(in: "") == nil)
    }
}

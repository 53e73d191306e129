import MemhaulSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The built memhaul-workload binary, driven over its control protocol.
@Suite(.serialized) struct WorkloadTests {
    @Test func readyLineListsItsRegions() throws {
        let w = try WorkloadProcess(["--size", "3M", "--regions", "3", "--control"])
        #expect(w.ready.contains("\"event\":\"ready\""))
        #expect(w.ready.contains("\"pid\":\(w.pid)"))
        #expect(!w.regions.isEmpty)
        #expect(w.regions.reduce(0) { $0 + ($1.end - $1.start) } == 3 << 20)
        for r in w.regions { #expect(r.start % 4096 == 0 && r.end % 4096 == 0 && r.start < r.end) }
        #expect(w.exitOnEOF() == 0)
    }

    @Test func signalDigestEqualsCommandDigestAndChangesAfterWrite() throws {
        let w = try WorkloadProcess(["--size", "2M", "--control", "--mix", "zero=30,text=40,random=30"])
        let d1 = try w.command("digest")
        #expect(d1.contains("\"event\":\"digest\""))
        let digest1 = try #require(jsonString(d1, "digest"))
        #expect(digest1.count == 32 && digest1.allSatisfy { $0.isHexDigit && !$0.isUppercase })
        kill(w.pid, SIGUSR1)
        let d2 = try #require(w.readLine())
        #expect(jsonString(d2, "digest") == digest1)
        #expect(d2 == d1)

        let start = w.regions[0].start
        let ok = try w.command("write \(hex(start + 5 * 4096)) 3 2")
        #expect(ok == "{\"event\":\"ok\",\"pages\":3}")
        let d3 = try w.command("digest")
        #expect(jsonString(d3, "digest") != digest1)
        kill(w.pid, SIGUSR1)
        #expect(try #require(w.readLine()) == d3)
        #expect(w.exitOnEOF() == 0)
    }

    @Test func mappingCommandsChangeTheRegionSet() throws {
        let w = try WorkloadProcess(["--size", "1M", "--control"])
        let mapped = try w.command("map 64K")
        let start = try #require(jsonString(mapped, "start").flatMap(parseHex))
        #expect(jsonString(mapped, "end").flatMap(parseHex) == start + 65536)
        var digest = try w.command("digest")
        #expect(digest.contains(hex(start)))
        #expect(try w.command("write \(hex(start)) 16") == "{\"event\":\"ok\",\"pages\":16}")
        #expect(try w.command("discard \(hex(start)) 8K") == "{\"event\":\"ok\"}")
        #expect(try w.command("free \(hex(start + 8192)) 8K") == "{\"event\":\"ok\"}")

        #expect(try w.command("mprotect \(hex(start)) 4K r") == "{\"event\":\"ok\"}")
        #expect(try w.command("write \(hex(start)) 1").contains("read-only"))
        #expect(try w.command("mprotect \(hex(start)) 4K rw") == "{\"event\":\"ok\"}")
        #expect(try w.command("write \(hex(start)) 1").contains("\"ok\""))

        let moved = try w.command("mremap \(hex(start)) 64K 128K")
        let newStart = try #require(jsonString(moved, "start").flatMap(parseHex))
        digest = try w.command("digest")
        #expect(digest.contains("\"start\":\"\(hex(newStart))\""))
        #expect(try w.command("unmap \(hex(newStart)) 128K") == "{\"event\":\"ok\"}")
        digest = try w.command("digest")
        #expect(!digest.contains("\"start\":\"\(hex(newStart))\""))
        #expect(try w.command("write \(hex(newStart)) 1").contains("not in a workload region"))
        #expect(try w.command("unmap 0x1001 4K").contains("\"error\""))
        #expect(try w.command("frobnicate").contains("unknown command"))
        #expect(try w.command("write nothex 1").contains("\"error\""))
        w.send("exit 7")
        #expect(w.readLine() == "{\"event\":\"ok\"}")
        #expect(w.waitExit() == 7)
    }

    @Test func pauseStopsRunningWritersForDigests() throws {
        let w = try WorkloadProcess(["--size", "4M", "--control", "--threads", "2", "--rate", "0", "--churn", "200"])
        #expect(try w.command("pause") == "{\"event\":\"ok\"}")
        let a = try w.command("digest")
        kill(w.pid, SIGUSR1)
        let b = try #require(w.readLine())
        #expect(a == b, "writers or churn ran while paused")
        #expect(try w.command("resume") == "{\"event\":\"ok\"}")
        // Writers run again: a later digest differs (rate 0 writes continuously).
        var changed = false
        for _ in 0..<50 where !changed { changed = try w.command("digest") != a }
        #expect(changed)
        #expect(w.exitOnEOF() == 0)
    }

    @Test func reportsWriteThroughput() throws {
        let w = try WorkloadProcess(["--size", "1M", "--threads", "1", "--rate", "0", "--report-every", "0.05", "--exit-after", "30"])
        let line = try #require(w.readLine())
        #expect(line.hasPrefix("{\"event\":\"stats\",\"writes_per_sec\":"))
        kill(w.pid, SIGKILL)
        w.waitExit()
    }

    @Test func hugePageRegionsAreAligned() throws {
        let w = try WorkloadProcess(["--size", "8M", "--regions", "2", "--thp", "on", "--control"])
        #expect(w.regions.allSatisfy { $0.start % (2 << 20) == 0 })
        let mapped = try w.command("map 4M thp")
        #expect(try #require(jsonString(mapped, "start").flatMap(parseHex)) % (2 << 20) == 0)
        #expect(w.exitOnEOF() == 0)
    }

    @Test func exitAfterEndsTheProcess() throws {
        let w = try WorkloadProcess(["--size", "1M", "--exit-after", "0.2"])
        #expect(w.readLine() == nil)
        #expect(w.waitExit() == 0)
    }

    @Test func badOptionsExitWithUsage() throws {
        let w = try WorkloadProcess(["--size", "banana"], expectReady: false)
        #expect(w.waitExit() == 2)
    }
}

// MARK: Support

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
func parseHex(_ s: String) -> UInt64? { s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : nil }

/// The string value of `"key":"…"` in a flat JSON line (first occurrence).
func jsonString(_ line: String, _ key: String) -> String? {
    guard let r = line.firstRange(of: "\"\(key)\":\"") else { return nil }
    let rest = line[r.upperBound...]
    guard let end = rest.firstIndex(of: "\"") else { return nil }
    return String(rest[..<end])
}

/// A memhaul-workload child with line pipes on stdin/stdout.
final class WorkloadProcess {
    struct Failure: Error, CustomStringConvertible { var description: String }

    static var binary: String {
        if let dir = getenv("MEMHAUL_BIN_DIR") { return String(cString: dir) + "/memhaul-workload" }
        // <repo>/Tests/MemhaulCLITests/WorkloadTests.swift
        var parts = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        return parts.joined(separator: "/") + "/.build/debug/memhaul-workload"
    }

    let pid: pid_t
    private let input: Int32
    private let output: Int32
    private var pending: [UInt8] = []
    private var inputOpen = true
    private var reaped = false
    private(set) var ready = ""
    private(set) var regions: [(start: UInt64, end: UInt64)] = []

    init(_ args: [String], expectReady: Bool = true) throws {
        var toChild: [Int32] = [0, 0]
        var fromChild: [Int32] = [0, 0]
        guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else { throw Failure(description: "pipe: \(Errno.current)") }
        for fd in toChild + fromChild { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        // Test runner threads block signals; the child starts with none blocked.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        let path = Self.binary
        let argv = ([path] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var p: pid_t = 0
        let rc = posix_spawn(&p, path, &actions, &attr, argv, environ)
        close(toChild[0])
        close(fromChild[1])
        guard rc == 0 else {
            close(toChild[1])
            close(fromChild[0])
            throw Failure(description: "posix_spawn \(path): \(Errno(rawValue: rc)) (build memhaul-workload first)")
        }
        pid = p
        input = toChild[1]
        output = fromChild[0]
        guard expectReady else { return }
        guard let line = readLine() else { throw Failure(description: "workload exited before its ready line") }
        ready = line
        var rest = Substring(line)
        while let s = rest.firstRange(of: "\"start\":\"") {
            rest = rest[s.upperBound...]
            let a = rest.prefix { $0 != "\"" }
            guard let e = rest.firstRange(of: "\"end\":\"") else { break }
            rest = rest[e.upperBound...]
            let b = rest.prefix { $0 != "\"" }
            if let x = parseHex(String(a)), let y = parseHex(String(b)) { regions.append((x, y)) }
        }
    }

    func send(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(input, $0.baseAddress, $0.count) }
    }

    /// Sends a control command and returns its one-line answer.
    func command(_ line: String) throws -> String {
        send(line)
        guard let answer = readLine() else { throw Failure(description: "workload died on \(line)") }
        return answer
    }

    func readLine() -> String? {
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeFirst(nl + 1)
                return line
            }
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = buf.withUnsafeMutableBytes { read(output, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            pending += buf[..<n]
        }
    }

    /// Closes stdin and returns the exit status (the workload exits on EOF).
    func exitOnEOF() -> Int32 {
        if inputOpen {
            close(input)
            inputOpen = false
        }
        return waitExit()
    }

    /// Exit code, or 128+signal.
    @discardableResult
    func waitExit() -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        reaped = true
        let sig = status & 0x7f
        return sig == 0 ? (status >> 8) & 0xff : 128 + sig
    }

    deinit {
        if !reaped {
            kill(pid, SIGKILL)
            waitExit()
        }
        if inputOpen { close(input) }
        close(output)
    }
}

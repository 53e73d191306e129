import Foundation
import CMemhaulLinux
import MemhaulSystem
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A child process spawned with posix_spawn, stdin and stdout on pipes.
///
/// Not Foundation.Process: its SIGCHLD reaper can reap a child (or swallow its
/// ptrace stops) before our waitpid sees it. The pipes are O_CLOEXEC from the
/// start, so children that other tests spawn concurrently never inherit them
/// (an inherited write end would keep our reads from seeing end of file). The
/// child starts with no signal blocked and default actions: test runner
/// threads block most signals, and posix_spawn would pass that on.
open class ChildProcess: @unchecked Sendable {  // one test drives it; kill/pid from others
    public let pid: pid_t
    /// `args[0]`, for messages.
    private let command: String
    private var stdinFD: Int32
    private let stdoutFD: Int32
    private let stderrFD: Int32
    private var buffer: [UInt8] = []
    private var exitCode: Int32?
    /// Set with `exitCode` when a signal ended the process.
    private var terminatingSignal: Int32?

    public enum Stdin { case pipe, null }
    /// Where stdout goes: a pipe (``readLine()``), /dev/null, or a file
    /// (created, truncated). CRIU refuses to dump a task whose stdio is a pipe
    /// to a process outside the dump, so its targets take `.null`.
    public enum Output: Sendable { case pipe, null, file(String) }

    /// Spawns `args[0]` (searched in PATH) with `environment` merged into ours.
    /// `captureStderr`: stderr on a pipe too, for ``readToEnd()``; else
    /// `stderr` (nil: inherited).
    public init(_ args: [String], environment: [String: String] = [:], stdin: Stdin = .pipe, stdout: Output = .pipe,
                stderr: Output? = nil, captureStderr: Bool = false) throws {
        let stdoutPipe: Bool
        if case .pipe = stdout { stdoutPipe = true } else { stdoutPipe = false }
        var inPipe: [Int32] = [-1, -1]
        var outPipe: [Int32] = [-1, -1]
        var errPipe: [Int32] = [-1, -1]
        guard cmh_pipe2(&inPipe, O_CLOEXEC) == 0, cmh_pipe2(&outPipe, O_CLOEXEC) == 0,
              !captureStderr || cmh_pipe2(&errPipe, O_CLOEXEC) == 0 else {
            let err = Errno.current
            for fd in inPipe + outPipe + errPipe where fd >= 0 { close(fd) }
            throw SystemError("pipe2", err)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if stdin == .pipe {
            posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        Self.redirect(&actions, 1, stdout, pipe: outPipe[1])
        if captureStderr {
            posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        } else if let stderr {
            Self.redirect(&actions, 2, stderr, pipe: -1)
        }
        var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env: [String: String] = [:]
        var e = environ
        while let p = e.pointee {
            let s = String(cString: p)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            e += 1
        }
        env.merge(environment) { $1 }
        var envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, args[0], &actions, &attr, &argv, &envp)
        close(inPipe[0])
        close(outPipe[1])
        if captureStderr { close(errPipe[1]) }
        if stdin == .null {
            close(inPipe[1])
            inPipe[1] = -1
        }
        guard rc == 0 else {
            for fd in [inPipe[1], outPipe[0], errPipe[0]] where fd >= 0 { close(fd) }
            throw SystemError("posix_spawn(\(args[0]))", Errno(rawValue: rc))
        }
        self.pid = pid
        command = args[0]
        stdinFD = inPipe[1]
        if stdoutPipe {
            stdoutFD = outPipe[0]
        } else {
            close(outPipe[0])
            stdoutFD = -1
        }
        stderrFD = captureStderr ? errPipe[0] : -1
    }

    private static func redirect(_ actions: inout posix_spawn_file_actions_t, _ fd: Int32, _ output: Output, pipe: Int32) {
        switch output {
        case .pipe: posix_spawn_file_actions_adddup2(&actions, pipe, fd)
        case .null: posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_WRONLY, 0)
        case .file(let path): posix_spawn_file_actions_addopen(&actions, fd, path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        }
    }

    /// The next line of stdout (without newline); nil at end of file. Throws
    /// after `timeout` seconds (``SafetyBound``) without one, so that a broken
    /// child cannot hang the suite (a guard, not a timing check).
    public func readLine(timeout: Int32 = Int32(SafetyBound.seconds)) throws -> String? {
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return line
            }
            var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, timeout * 1000)
            if ready == 0 { throw TestSetupError("PID \(pid): no output line within \(timeout) s") }
            if ready < 0 { if errno == EINTR { continue } else { throw SystemError("poll", .current) } }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = read(stdoutFD, &chunk, chunk.count)
            if n < 0 { if errno == EINTR { continue } else { throw SystemError("read", .current) } }
            if n == 0 {
                if buffer.isEmpty { return nil }
                let line = String(decoding: buffer, as: UTF8.self)
                buffer.removeAll()
                return line
            }
            buffer += chunk[0..<n]
        }
    }

    /// Reads lines until one starts with `prefix`; returns it.
    public func expectLine(startingWith prefix: String) throws -> String {
        while let line = try readLine() {
            if line.hasPrefix(prefix) { return line }
        }
        throw TestSetupError("PID \(pid): end of output before a line starting with \(prefix)")
    }

    /// Reads lines until one contains `text`; returns it.
    public func expectLine(containing text: String) throws -> String {
        while let line = try readLine() {
            if line.contains(text) { return line }
        }
        throw TestSetupError("PID \(pid): end of output before a line containing \(text)")
    }

    /// stdout and stderr (if captured) to their ends, read together so that
    /// neither pipe can fill up and stall the child. Throws if they are not at
    /// their ends within ``SafetyBound`` (a hung child cannot hang the suite).
    public func readToEnd() throws -> (out: [UInt8], err: [UInt8]) {
        var out = buffer, err: [UInt8] = []
        buffer.removeAll()
        var fds: [pollfd] = []
        if stdoutFD >= 0 { fds.append(pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)) }
        if stderrFD >= 0 { fds.append(pollfd(fd: stderrFD, events: Int16(POLLIN), revents: 0)) }
        var open = fds.count
        var chunk = [UInt8](repeating: 0, count: 65536)
        let deadline = MonotonicClock.seconds() + Double(SafetyBound.seconds)
        while open > 0 {
            let left = Int32(max(0, (deadline - MonotonicClock.seconds()) * 1000))
            let ready = poll(&fds, nfds_t(fds.count), left)
            if ready < 0 {
                if errno == EINTR { continue }
                throw SystemError("poll", .current)
            }
            if ready == 0 {
                throw TestSetupError("\(command) (PID \(pid)): output not at its end within the \(SafetyBound.seconds) s safety bound (a hang)")
            }
            for i in fds.indices where fds[i].fd >= 0 && fds[i].revents != 0 {
                let n = read(fds[i].fd, &chunk, chunk.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    fds[i].fd = -1  // poll ignores it from now on; closed in deinit
                    open -= 1
                } else if fds[i].fd == stdoutFD {
                    out += chunk[0..<n]
                } else {
                    err += chunk[0..<n]
                }
            }
        }
        return (out, err)
    }

    public func write(_ text: String) throws { try writeRaw(Array(text.utf8)) }

    public func writeRaw(_ data: [UInt8]) throws {
        var done = 0
        while done < data.count {
            let n = data.withUnsafeBytes { Glibc.write(stdinFD, $0.baseAddress! + done, $0.count - done) }
            if n < 0 { if errno == EINTR { continue } else { throw SystemError("write", .current) } }
            done += n
        }
    }

    /// Writes `line` and a newline; a child that is gone is noticed by the next read.
    public func send(_ line: String) { try? write(line + "\n") }

    public func closeStdin() {
        if stdinFD >= 0 { close(stdinFD) }
        stdinFD = -1
    }

    /// Waits until it has exited without reaping it (the pid stays valid); at
    /// most ``SafetyBound``, then the test fails and the child is killed.
    public func waitExitedNoReap() {
        SafetyBound.awaitExit(of: pid, command)
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
    }

    /// waitpid for the exit; returns the exit code, or 128+signal. At most
    /// ``SafetyBound``: then the test fails and the child is killed (137).
    @discardableResult
    public func wait() -> Int32 {
        if let exitCode { return exitCode }
        var status: Int32 = 0
        _ = SafetyBound.waitpid(pid, &status, command)
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        if (status & 0x7f) != 0 { terminatingSignal = status & 0x7f }
        exitCode = code
        return code
    }

    /// waitpid for the exit; the exit code, or nil if a signal ended the
    /// process (so an exit(128+N) is told from a death by signal N).
    public func waitExitCode() -> Int32? {
        let code = wait()
        return terminatingSignal == nil ? code : nil
    }

    public var hasBeenReaped: Bool { exitCode != nil }

    public func kill(_ sig: Int32 = SIGKILL) {
        if exitCode == nil { Glibc.kill(pid, sig) }
    }

    deinit {
        closeStdin()
        if exitCode == nil {
            Glibc.kill(pid, SIGKILL)
            Glibc.kill(pid, SIGCONT)  // a stopped (frozen) target dies only once continued
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        if stdoutFD >= 0 { close(stdoutFD) }
        if stderrFD >= 0 { close(stderrFD) }
    }
}

extension ChildProcess {
    /// The single-letter state from /proc/PID/stat (`R`, `S`, `T`, …).
    public var state: Character? { ProcFS.state(pid: pid) }
}

/// What a program run to its end printed, and how it ended.
public struct ProgramOutput: Sendable {
    /// The exit code, or 128+signal.
    public var status: Int32
    /// stdout as bytes (binary output) and as text.
    public var outBytes: [UInt8]
    public var out: String { String(decoding: outBytes, as: UTF8.self) }
    public var err: String

    /// Throws unless the program exited 0.
    @discardableResult
    public func requireSuccess(_ what: String) throws -> ProgramOutput {
        guard status == 0 else { throw TestSetupError("\(what) exited \(status): \(err)") }
        return self
    }
}

/// Runs `args[0]` (searched in PATH) to its end with stdin on /dev/null.
public func runProgram(_ args: [String], environment: [String: String] = [:]) throws -> ProgramOutput {
    let child = try ChildProcess(args, environment: environment, stdin: .null, captureStderr: true)
    let (out, err) = try child.readToEnd()
    return ProgramOutput(status: child.wait(), outBytes: out, err: String(decoding: err, as: UTF8.self))
}

/// Compiles a C test fixture (`source`) in a fresh scratch directory; returns
/// the executable's path. cc (gcc) if installed, else the clang that ships
/// with the Swift toolchain.
public func compileCProgram(_ source: String, name: String, flags: [String] = ["-O1"]) -> Result<String, TestSetupError> {
    let dir = temporaryDirectory(name)
    let sourcePath = dir + "/\(name).c"
    let binary = dir + "/\(name)"
    do {
        let fd = try FileDescriptor.open(sourcePath, O_WRONLY | O_CREAT | O_TRUNC)
        try Array(source.utf8).withUnsafeBytes { try fd.writeAll($0) }
    } catch {
        return .failure(TestSetupError("cannot write \(sourcePath): \(error)"))
    }
    var failures: [String] = []
    for compiler in ["cc", "clang"] {
        guard let cc = try? runProgram([compiler] + flags + ["-o", binary, sourcePath]) else {
            failures.append("cannot run \(compiler)")
            continue
        }
        if cc.status == 0 { return .success(binary) }
        failures.append("\(compiler) failed with \(cc.status): \(cc.err)")
    }
    return .failure(TestSetupError(failures.joined(separator: "; ")))
}

extension ChildProcess {
    /// A memhaul-workload control command (`--control`): sends `line`, returns its
    /// JSON answer, and throws if the workload died or answered `"event": "error"`.
    @discardableResult
    public func workloadCommand(_ line: String) throws -> [String: Any] {
        send(line)
        guard let answer = try readLine() else { throw TestSetupError("workload: no answer to \(line)") }
        let object = try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any] ?? [:]
        guard object["event"] as? String != "error" else { throw TestSetupError("workload: \(line): \(answer)") }
        return object
    }
}

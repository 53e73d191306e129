#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulSystem
import MemhaulTLS

/// A CRIU version, `major.minor[.patch]` as `criu --version` prints it.
public struct CRIUVersion: Comparable, Sendable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public var patch: Int
    public init(_ major: Int, _ minor: Int, _ patch: Int = 0) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    /// The oldest CRIU memhaul drives: lazy-pages restore from a remote page
    /// server, and pagemaps with 64-bit page counts (4.x).
    public static let minimum = CRIUVersion(4, 1)

    /// From `criu --version` output (`Version: 4.2` / `Version: 3.17.1`, then `GitID: …`).
    public static func parse(_ output: String) -> CRIUVersion? {
        for line in output.split(whereSeparator: \.isNewline) {
            let t = line.trimmingCharacters(in: .whitespaces)
            guard t.lowercased().hasPrefix("version:") else { continue }
            let token = t.dropFirst("version:".count).trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? ""
            let parts = token.split(separator: ".", omittingEmptySubsequences: false).map { Int($0.prefix { $0.isNumber }) }
            guard parts.count >= 2, let major = parts[0], let minor = parts[1] else { return nil }
            return CRIUVersion(major, minor, parts.count > 2 ? parts[2] ?? 0 : 0)
        }
        return nil
    }

    public var description: String { patch == 0 ? "\(major).\(minor)" : "\(major).\(minor).\(patch)" }
    public static func < (a: CRIUVersion, b: CRIUVersion) -> Bool { (a.major, a.minor, a.patch) < (b.major, b.minor, b.patch) }
}

/// Why CRIU could not be used or did not do its part; each one line that
/// names the missing piece and the fix, or quotes CRIU's own error.
public enum CRIURunnerError: Error, Equatable, CustomStringConvertible {
    case notFound(String)
    case tooOld(path: String, version: CRIUVersion)
    case noVersion(path: String, output: String)
    case checkFailed(path: String, detail: String)
    /// A CRIU step exited non-zero (or could not start): `detail` is CRIU's error line.
    case failed(step: String, status: String, detail: String, log: String)
    case timedOut(step: String, seconds: Double, log: String)
    /// Something around CRIU (the dump's files, the page server).
    case handOver(String)

    public var description: String {
        switch self {
        case .notFound(let m): m
        case .tooOld(let path, let v):
            "criu \(v) (\(path)) is too old: memhaul needs CRIU ≥ \(CRIUVersion.minimum) (lazy-pages restore from a page server); install CRIU ≥ \(CRIUVersion.minimum) or pass --criu PATH"
        case .noVersion(let path, let out):
            "\(path) printed no CRIU version (`criu --version`: \(out.isEmpty ? "no output" : out)); install CRIU ≥ \(CRIUVersion.minimum) or pass --criu PATH"
        case .checkFailed(let path, let detail):
            "`\(path) check` failed: \(detail); run it as root for details (CRIU needs root and a kernel with its features)"
        case .failed(let step, let status, let detail, let log):
            "\(step) failed (\(status)): \(detail) [log: \(log)]"
        case .timedOut(let step, let s, let log):
            "\(step) did not finish within \(Int(s)) s; killed [log: \(log)]"
        case .handOver(let m): m
        }
    }
}

/// How CRIU treats the process's TCP connections (dump and restore must agree).
public enum CRIUTCPMode: String, Sendable, CaseIterable {
    case none
    /// `--tcp-established`: connections move with the process (B must take over A's address).
    case established
    /// `--tcp-close`: connections are restored closed.
    case close
    var arguments: [String] {
        switch self {
        case .none: []
        case .established: ["--tcp-established"]
        case .close: ["--tcp-close"]
        }
    }
}

/// The CRIU options of one hand-over, common to dump and restore.
public struct CRIUOptions: Sendable, Equatable {
    /// `--shell-job`: the process's session or terminal is outside the dump.
    public var shellJob = false
    public var tcp: CRIUTCPMode = .none
    /// Passed as they are to this side's criu (dump on A, restore on B).
    public var extraArguments: [String] = []
    public init() {}
    var arguments: [String] { (shellJob ? ["--shell-job"] : []) + tcp.arguments + extraArguments }
}

/// Runs stock CRIU (≥ 4.1) for memhaul: `criu dump --lazy-pages` of a
/// frozen source, ended by memhaul itself (PS_IOV_CLOSE), and `criu
/// lazy-pages` + `criu restore --lazy-pages` with the pages served from a
/// memhaul image. Every wait is bounded; CRIU children are killed on failure.
public final class CRIURunner: Sendable {
    public struct Timeouts: Sendable {
        public var version = 10.0
        public var check = 60.0
        /// `criu dump` start → its page server accepting (the whole dump but the pages).
        public var dump = 120.0
        /// `criu restore` start → exit.
        public var restore = 120.0
        /// SIGCONT → every lazy page in the restored process.
        public var pagesComplete = 600.0
        public init() {}
    }

    /// -v2 (errors and warnings) for every CRIU step: at -v4 CRIU logs a line
    /// per run of pages (the dump: 0.3-0.5 s of the frozen window at 1 GiB; the
    /// parent route's restore: a line per page read per level). Errors, which
    /// ``CRIULog/errorLine(in:)`` quotes, are logged at -v1 already. A later
    /// `--criu-arg -v4` overrides it (CRIU takes the last -v).
    static let verbosity = "-v2"

    public let path: String
    public let version: CRIUVersion
    public let timeouts: Timeouts

    private init(path: String, version: CRIUVersion, timeouts: Timeouts) {
        self.path = path
        self.version = version
        self.timeouts = timeouts
    }

    /// The criu to use: `explicit` (`--criu PATH`), else `$MEMHAUL_CRIU`, else `criu` on PATH
    /// (then /usr/local/sbin, /usr/sbin, /sbin).
    public static func locate(explicit: String?, environment: [String: String] = ProcessInfo.processInfo.environment,
                              fallbackDirectories: [String] = ["/usr/local/sbin", "/usr/sbin", "/sbin"]) throws(CRIURunnerError) -> String {
        func usable(_ p: String) -> Bool { access(p, X_OK) == 0 && !isDirectory(p) }
        if let explicit, !explicit.isEmpty {
            guard usable(explicit) else { throw .notFound("criu not found at \(explicit) (--criu): no executable file there; install CRIU ≥ \(CRIUVersion.minimum) or fix --criu PATH") }
            return explicit
        }
        if let env = environment["MEMHAUL_CRIU"], !env.isEmpty {
            guard usable(env) else { throw .notFound("criu not found at \(env) (MEMHAUL_CRIU): no executable file there; install CRIU ≥ \(CRIUVersion.minimum) or fix MEMHAUL_CRIU / pass --criu PATH") }
            return env
        }
        let dirs = (environment["PATH"] ?? "").split(separator: ":").map(String.init) + fallbackDirectories
        for dir in dirs where !dir.isEmpty {
            let p = dir + "/criu"
            if usable(p) { return p }
        }
        throw .notFound("criu not found: install CRIU ≥ \(CRIUVersion.minimum) or pass --criu PATH")
    }

    private static func isDirectory(_ p: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: p, isDirectory: &isDir) && isDir.boolValue
    }

    /// Locates criu, checks its version (≥ 4.1) and, unless `check` is false, `criu check`.
    public static func open(explicit: String?, environment: [String: String] = ProcessInfo.processInfo.environment,
                            check: Bool = true, timeouts: Timeouts = Timeouts()) throws -> CRIURunner {
        let path = try locate(explicit: explicit, environment: environment)
        let scratch = NSTemporaryDirectory() + "memhaul-criu-probe-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(scratch) }
        let child = try CRIUChild(executable: path, arguments: ["--version"], step: "criu --version", outputPath: scratch)
        guard child.wait(seconds: timeouts.version) else {
            child.kill()
            throw CRIURunnerError.timedOut(step: "\(path) --version", seconds: timeouts.version, log: "-")
        }
        let out = child.output()
        guard let version = CRIUVersion.parse(out) else {
            throw CRIURunnerError.noVersion(path: path, output: String(out.split(whereSeparator: \.isNewline).first?.prefix(200) ?? ""))
        }
        guard version >= CRIUVersion.minimum else { throw CRIURunnerError.tooOld(path: path, version: version) }
        let runner = CRIURunner(path: path, version: version, timeouts: timeouts)
        if check { try runner.check() }
        return runner
    }

    /// `criu check`: exit 0 ("Looks good.") or the first error line it printed.
    public func check() throws {
        let scratch = NSTemporaryDirectory() + "memhaul-criu-check-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(scratch) }
        let child = try CRIUChild(executable: path, arguments: ["check"], step: "criu check", outputPath: scratch)
        guard child.wait(seconds: timeouts.check) else {
            child.kill()
            throw CRIURunnerError.timedOut(step: "\(path) check", seconds: timeouts.check, log: "-")
        }
        guard child.succeeded else {
            throw CRIURunnerError.checkFailed(path: path, detail: "\(child.exitDescription ?? "?"): \(CRIULog.errorLine(in: child.output()) ?? "no error printed")")
        }
    }

    // MARK: - Dump (host A)

    public struct DumpResult: Sendable {
        /// The images, one flat directory.
        public var directory: String
        public var log: String
        public var seconds: Double
        /// PS_IOV_CLOSE's answer (0: CRIU's page server ended cleanly).
        public var closeStatus: Int32
    }

    /// `criu dump --lazy-pages --leave-stopped` of `pid` (SIGSTOPped, untraced) into
    /// `directory` (created), ended by PS_IOV_CLOSE to the dump's own page server:
    /// no page data is written or sent (memhaul's image holds the memory). The
    /// source is left stopped, CRIU detached. The log goes to `log` (outside the
    /// images, which travel).
    public func dump(pid: Int32, directory: String, log: String, options: CRIUOptions) throws -> DumpResult {
        let directory = Self.absolute(directory), log = Self.absolute(log)
        let start = MonotonicClock.seconds()
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let port = try Self.freeLoopbackPort()
        let arguments = ["dump", "-t", String(pid), "-D", directory, "-o", log, Self.verbosity,
                         "--lazy-pages", "--leave-stopped", "--address", "127.0.0.1", "--port", String(port)] + options.arguments
        let child = try CRIUChild(executable: path, arguments: arguments, step: "criu dump", outputPath: log + ".out")
        do {
            let status = try closeDumpPageServer(port: port, child: child, log: log)
            let left = timeouts.dump - (MonotonicClock.seconds() - start)
            guard child.wait(seconds: max(left, 10)) else { throw CRIURunnerError.timedOut(step: "criu dump", seconds: timeouts.dump, log: log) }
            guard child.succeeded else { throw Self.failure("criu dump", child, log) }
            return DumpResult(directory: directory, log: log, seconds: MonotonicClock.seconds() - start, closeStatus: status)
        } catch {
            child.kill()
            throw error
        }
    }

    /// Connects to the page server `criu dump --lazy-pages` opens once its images
    /// are written, and says PS_IOV_CLOSE (what a lazy-pages daemon says when it has
    /// every page): the dump then ends. Gives up if the dump exits first.
    private func closeDumpPageServer(port: UInt16, child: CRIUChild, log: String) throws -> Int32 {
        let deadline = MonotonicClock.seconds() + timeouts.dump
        while true {
            if child.hasExited {
                child.wait(seconds: 1)
                throw Self.failure("criu dump", child, log)
            }
            if MonotonicClock.seconds() > deadline { throw CRIURunnerError.timedOut(step: "criu dump", seconds: timeouts.dump, log: log) }
            guard let stream = try? TCPStream.connect(host: "127.0.0.1", port: port, timeout: .seconds(1)) else {
                usleep(5_000)
                continue
            }
            defer { stream.close() }
            try stream.setTimeouts(read: .seconds(30), write: .seconds(30))
            var iov = [UInt8](repeating: 0, count: 32)  // struct page_server_iov { u32 cmd; u64 nr_pages, vaddr, dst_id }
            withUnsafeBytes(of: CRIUPageServer.Command.close.littleEndian) { iov.replaceSubrange(0..<4, with: $0) }
            try iov.withUnsafeBytes { try stream.writeAll($0) }
            // The dump corks this socket (TCP_CORK), so its 4-byte answer waits
            // for the kernel's 200 ms cork timer, unless the socket closes; and
            // it closes only after it read our end of stream. Half-close first.
            stream.shutdown()
            var status: Int32 = -1
            let got = try withUnsafeMutableBytes(of: &status) { try stream.readExactly(into: $0) }
            guard got else { throw CRIURunnerError.handOver("criu dump's page server closed without answering PS_IOV_CLOSE [log: \(log)]") }
            return Int32(littleEndian: status)
        }
    }

    // MARK: - Restore (host B)

    /// The in-process page server on its own thread.
    final class ServerRun: @unchecked Sendable {  // `result` behind `lock`
        let listener: TCPListener
        private let lock = NSLock()
        private var result: Result<CRIUPageServer.Stats, Error>?
        private let done = DispatchSemaphore(value: 0)

        init(source: CRIUPageSource, servedPID: UInt64, acceptTimeout: Double, log: @escaping @Sendable (String) -> Void) throws {
            listener = try TCPListener(host: "127.0.0.1", port: 0)
            let server = HandOff(CRIUPageServer(source: source, listener: listener, pid: servedPID, log: log))
            Thread.detachNewThread { [self] in
                let r = Result { try server.value.serveOneClient(acceptTimeout: .milliseconds(Int64(acceptTimeout * 1000))) }
                lock.withLock { result = r }
                done.signal()
            }
        }

        func wait(seconds: Double) throws -> CRIUPageServer.Stats {
            guard done.wait(timeout: .now() + seconds) == .success else {
                throw CRIURunnerError.handOver("the page server did not finish after criu lazy-pages exited")
            }
            done.signal()
            switch lock.withLock({ result })! {
            case .success(let stats): return stats
            case .failure(let error): throw CRIURunnerError.handOver("page server: \(error)")
            }
        }
    }

    /// A restored process, and the lazy-pages daemon still filling it.
    public final class Restored: Sendable {
        public let pid: Int32
        /// `criu restore` start → exit (the process exists, stopped as it was dumped).
        public let restoreSeconds: Double
        let lazy: CRIUChild
        let lazyLog: String
        let server: ServerRun

        init(pid: Int32, restoreSeconds: Double, lazy: CRIUChild, lazyLog: String, server: ServerRun) {
            self.pid = pid
            self.restoreSeconds = restoreSeconds
            self.lazy = lazy
            self.lazyLog = lazyLog
            self.server = server
        }

        /// Waits until the lazy-pages daemon has fetched every page and exited
        /// 0, and the page server saw PS_IOV_CLOSE. On failure or timeout the
        /// daemon is killed (the process must not run on with missing pages:
        /// the caller kills it).
        public func waitUntilComplete(seconds: Double) throws -> CRIUPageServer.Stats {
            defer { server.listener.close() }
            guard lazy.wait(seconds: seconds) else {
                lazy.kill()
                throw CRIURunnerError.timedOut(step: "criu lazy-pages (filling the restored process)", seconds: seconds, log: lazyLog)
            }
            guard lazy.succeeded else { throw CRIURunner.failure("criu lazy-pages", lazy, lazyLog) }
            return try server.wait(seconds: 10)
        }

        /// Failure path: stops the daemon (the caller kills the process).
        public func abandon() {
            lazy.kill()
            server.listener.close()
        }
    }

    /// Restores the dump in `directory` with its lazy pages from `source`:
    /// an in-process ``CRIUPageServer`` on loopback, `criu lazy-pages
    /// --page-server` against it, then `criu restore --lazy-pages -d
    /// --pidfile`. Returns once `criu restore` has exited 0: the process
    /// exists, stopped as it was dumped; its remaining pages keep coming
    /// (``Restored/waitUntilComplete(seconds:)``). `servedPID` is the dump's id
    /// of the process the image holds (its `pagemap-N.img`). Logs go to `logPrefix-*.log`.
    public func restore(directory: String, source: CRIUPageSource, servedPID: UInt64, logPrefix: String, options: CRIUOptions,
                        log: @escaping @Sendable (String) -> Void) throws -> Restored {
        let directory = Self.absolute(directory), logPrefix = Self.absolute(logPrefix)
        let start = MonotonicClock.seconds()
        let server = try ServerRun(source: source, servedPID: servedPID, acceptTimeout: timeouts.restore + 30, log: log)
        let listener = server.listener
        let socket = directory + "/lazy-pages.socket"
        let pidfile = logPrefix + "-restored.pid"
        unlink(socket)
        unlink(pidfile)
        let lazyLog = logPrefix + "-lazy-pages.log", restoreLog = logPrefix + "-restore.log"
        let lazy: CRIUChild
        do {
            lazy = try CRIUChild(executable: path, arguments: ["lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", String(listener.port),
                                                               "-D", directory, "-o", lazyLog, CRIURunner.verbosity],
                                 step: "criu lazy-pages", outputPath: lazyLog + ".out")
        } catch {
            listener.close()
            throw error
        }
        let restored: Restored
        var restore: CRIUChild?
        do {
            let deadline = MonotonicClock.seconds() + 30
            while access(socket, F_OK) != 0 {
                if lazy.hasExited { throw Self.failure("criu lazy-pages", lazy, lazyLog) }
                if MonotonicClock.seconds() > deadline { throw CRIURunnerError.timedOut(step: "criu lazy-pages (its socket)", seconds: 30, log: lazyLog) }
                usleep(2_000)
            }
            let child = try CRIUChild(executable: path, arguments: ["restore", "-D", directory, "--lazy-pages", "-d", "-o", restoreLog, CRIURunner.verbosity,
                                                                    "--pidfile", pidfile] + options.arguments,
                                      step: "criu restore", outputPath: restoreLog + ".out")
            restore = child
            guard child.wait(seconds: timeouts.restore) else { throw CRIURunnerError.timedOut(step: "criu restore", seconds: timeouts.restore, log: restoreLog) }
            guard child.succeeded else { throw Self.failure("criu restore", child, restoreLog) }
            let text = (try? String(contentsOfFile: pidfile, encoding: .utf8)) ?? ""
            guard let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else {
                throw CRIURunnerError.handOver("criu restore exited 0 but wrote no PID to \(pidfile) [log: \(restoreLog)]")
            }
            restored = Restored(pid: pid, restoreSeconds: MonotonicClock.seconds() - start, lazy: lazy, lazyLog: lazyLog, server: server)
        } catch {
            restore?.kill()
            lazy.kill()
            listener.close()
            throw error
        }
        return restored
    }

    /// `criu restore -d --pidfile` of a dump that holds all its pages (the rewrite route).
    public func restorePlain(directory: String, logPrefix: String, options: CRIUOptions) throws -> Int32 {
        let directory = Self.absolute(directory), logPrefix = Self.absolute(logPrefix)
        let pidfile = logPrefix + "-restored.pid", restoreLog = logPrefix + "-restore.log"
        unlink(pidfile)
        let child = try CRIUChild(executable: path, arguments: ["restore", "-D", directory, "-d", "-o", restoreLog, CRIURunner.verbosity, "--pidfile", pidfile] + options.arguments,
                                  step: "criu restore", outputPath: restoreLog + ".out")
        guard child.wait(seconds: timeouts.restore) else {
            child.kill()
            throw CRIURunnerError.timedOut(step: "criu restore", seconds: timeouts.restore, log: restoreLog)
        }
        guard child.succeeded else { throw Self.failure("criu restore", child, restoreLog) }
        let text = (try? String(contentsOfFile: pidfile, encoding: .utf8)) ?? ""
        guard let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else {
            throw CRIURunnerError.handOver("criu restore exited 0 but wrote no PID to \(pidfile) [log: \(restoreLog)]")
        }
        return pid
    }

    // MARK: - Support

    /// CRIU opens -o, --pidfile and the like relative to its work directory (-D): pass absolute paths.
    static func absolute(_ path: String) -> String {
        path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
    }

    static func failure(_ step: String, _ child: CRIUChild, _ log: String) -> CRIURunnerError {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        let line = CRIULog.errorLine(in: text) ?? CRIULog.errorLine(in: child.output()) ?? "no error line in the log"
        return .failed(step: step, status: child.exitDescription ?? "running", detail: line, log: log)
    }

    /// A loopback port nobody listens on now (CRIU's page server binds it next).
    static func freeLoopbackPort() throws -> UInt16 {
        let l = try TCPListener(host: "127.0.0.1", port: 0)
        defer { l.close() }
        return l.port
    }
}

/// Reading CRIU's logs.
public enum CRIULog {
    /// The line that says why CRIU failed: the last `Error (…)` line that is
    /// not the generic "… FAILED." summary (CRIU logs some errors it then
    /// ignores, such as failing to raise RLIMIT_NOFILE, so the first is often
    /// not the one), else the summary, else the last line printed.
    public static func errorLine(in text: String) -> String? {
        let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let errors = lines.filter { $0.contains("Error (") || $0.hasPrefix("Error") }
        let specific = errors.filter { !$0.hasSuffix("FAILED.") }
        let pick = specific.last ?? errors.last ?? lines.last
        return pick.map { strip($0) }.map { String($0.prefix(400)) }
    }

    /// Drops CRIU's `(00.123456) ` time stamp.
    static func strip(_ line: String) -> String {
        guard line.hasPrefix("("), let close = line.firstIndex(of: ")") else { return line }
        return line[line.index(after: close)...].trimmingCharacters(in: .whitespaces)
    }
}

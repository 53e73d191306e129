#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulSender
import MemhaulSession
import MemhaulSystem
import MemhaulWire

/// How the restored process gets its memory from the image.
public enum CRIURoute: String, Sendable, CaseIterable {
    /// CRIU's lazy-pages daemon pulls it from memhaul's page server (nothing copied before the restore).
    case lazy
    /// The dump is filled from the image (`image export --criu`), then a plain `criu restore`.
    case rewrite
    /// A chain of CRIU parent levels over the image's region files, then a plain
    /// `criu restore` that reads them in place (``CRIUParentChain``).
    case parent

    /// When nothing is asked for (CLI, control interface): parent, whose cost is
    /// bounded by one read of the image on B (the lazy route's page fill after
    /// the restore can outlast its bound for a large target that writes
    /// everywhere; README "Routes").
    public static let defaultRoute = CRIURoute.parent

    /// The route a RESTORE_BEGIN asks for (no route bit: lazy, what senders
    /// before the parent route sent).
    public init(_ options: RestoreBegin.Options) {
        self = options.contains(.parentChain) ? .parent : options.contains(.rewrite) ? .rewrite : .lazy
    }
}

/// Limits on the CRIU files of one restore, both sides (wire.md, "Restore on
/// the receiver"): the sender checks them for a clear error, the receiver
/// enforces them.
public struct RestoreLimits: Sendable, Equatable {
    /// Distinct files (a one-process dump has about 20-40).
    public var maxFiles = 1024
    /// Data bytes of all files (a lazy dump holds no anonymous memory: a few MiB).
    public var maxTotalBytes: UInt64 = 256 << 20
    public init() {}
}

/// The sender side of the CRIU hand-over (A), run after the proof with the
/// source frozen and released: `criu dump --lazy-pages --leave-stopped`, the
/// dump's files to the receiver over the migration's connection, RESTORE_BEGIN,
/// then RESTORE_DONE (the process runs on B) or ERROR. Any failure throws: the
/// migration then resumes the source (SIGCONT).
public struct CRIUHandOver: Sendable {
    public let runner: CRIURunner
    public let options: CRIUOptions
    public var route: CRIURoute = .defaultRoute
    /// Where dumps are written on A: `<workRoot>/<migration id>/` (images/ and dump.log).
    public let workRoot: String
    public var limits = RestoreLimits()
    /// RESTORE_BEGIN sent → RESTORE_DONE (restore, plus every page into the process).
    public var answerTimeout: Double = 900
    /// Keep the dump on A after success (it is always kept after a failure).
    public var keepDump = false
    private let log: @Sendable (String) -> Void

    public init(runner: CRIURunner, options: CRIUOptions, workRoot: String, log: @escaping @Sendable (String) -> Void) {
        self.runner = runner
        self.options = options
        self.workRoot = workRoot
        self.log = log
    }

    /// The migration's after-proof step.
    public var step: AfterProof {
        AfterProof(capabilities: route == .parent ? [.criuRestore, .criuParentRoute] : [.criuRestore],
                       requirement: route == .parent
                           ? "it does not restore processes by the parent route; start it with `memhaul receive --restore criu` (CRIU ≥ \(CRIUVersion.minimum) on that host) of a memhaul that has it, or pass --criu-route lazy"
                           : "it does not restore processes; start it with `memhaul receive --restore criu` (CRIU ≥ \(CRIUVersion.minimum) on that host)",
                       run: { try self.run(channel: $0.channel, pid: $0.pid, id: $0.migrationID, frozenSince: $0.frozenSince, update: $0.update) })
    }

    /// The options that travel in RESTORE_BEGIN (the restore repeats them on B).
    var wireOptions: RestoreBegin.Options {
        var o: RestoreBegin.Options = []
        if options.shellJob { o.insert(.shellJob) }
        switch route {
        case .lazy: break
        case .rewrite: o.insert(.rewrite)
        case .parent: o.insert(.parentChain)
        }
        switch options.tcp {
        case .none: break
        case .established: o.insert(.tcpEstablished)
        case .close: o.insert(.tcpClose)
        }
        return o
    }

    func run(channel: FrameChannel, pid: Int32, id: String, frozenSince: Double, update: ((inout MigrationStatus) -> Void) -> Void) throws {
        try Self.checkPrivateDirectory(workRoot)
        let dir = workRoot + "/" + id
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let images = dir + "/images"
        let (runner, options) = (runner, options)
        let dump = try Self.naming("running criu dump (the connection kept alive meanwhile)") {
            try channel.keepingAlive { try runner.dump(pid: pid, directory: images, log: dir + "/dump.log", options: options) }
        }
        update { $0.criuDumpMs = dump.seconds * 1000 }
        log("criu dump of PID \(pid): \(Int(dump.seconds * 1000)) ms, images in \(images)")

        let files = try Self.dumpFiles(images, limits: limits)
        let transferStart = MonotonicClock.seconds()
        var total: UInt64 = 0
        var buffer = [UInt8](repeating: 0, count: RestoreFile.maxChunk)
        try Self.naming("sending the CRIU dump's files to the receiver (\(files.count) files)") {
            for name in files {
                let fd = open(images + "/" + name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
                guard fd >= 0 else { throw CRIURunnerError.handOver("cannot open \(images)/\(name): \(String(cString: strerror(errno)))") }
                defer { close(fd) }
                var offset: UInt64 = 0
                repeat {
                    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                    guard n >= 0 else { throw CRIURunnerError.handOver("cannot read \(images)/\(name): \(String(cString: strerror(errno)))") }
                    if n == 0 && offset > 0 { break }
                    try channel.send(.restoreFile(RestoreFile(name: name, offset: offset, data: buffer[0..<n])))
                    offset += UInt64(n)
                    if n == 0 { break }
                } while true
                total += offset
            }
            try channel.send(.restoreBegin(RestoreBegin(fileCount: UInt32(files.count), options: wireOptions, totalBytes: total)))
        }
        let beginSent = MonotonicClock.seconds()
        let transfer = beginSent - transferStart
        update {
            $0.transferMs = transfer * 1000
            $0.criuFiles = files.count
            $0.criuBytes = total
        }
        log("criu images to the receiver: \(files.count) files, \(total) bytes in \(Int(transfer * 1000)) ms; waiting for the restore")

        let done = try Self.naming("waiting for the receiver's RESTORE_DONE (it kills any copy it restored unless this side's CLOSE follows)") {
            try awaitDone(channel)
        }
        let restoreMs = Double(done.restoreMicros) / 1000
        update {
            $0.restoreMs = restoreMs
            $0.pagesCompleteMs = Double(done.completeMicros) / 1000
            $0.restoredPID = Int32(clamping: done.pid)
            $0.frozenWindowMs = (beginSent - frozenSince) * 1000 + restoreMs
        }
        log("restored on the receiver: PID \(done.pid) running (restore \(Int(restoreMs)) ms, every page in after \(done.completeMicros / 1000) ms)")
        if !keepDump { try? FileManager.default.removeItem(atPath: dir) }
    }

    private func awaitDone(_ channel: FrameChannel) throws -> RestoreDone {
        let deadline = MonotonicClock.seconds() + answerTimeout
        while true {
            let left = deadline - MonotonicClock.seconds()
            guard left > 0, try channel.stream.waitReadable(timeout: .milliseconds(Int64(left * 1000))) else {
                throw CRIURunnerError.handOver("no RESTORE_DONE from the receiver within \(Int(answerTimeout)) s")
            }
            switch try channel.receive() {
            case .restoreDone(let d): return d
            case .keepalive(let k) where !k.isReply:
                try channel.send(.keepalive(Keepalive(nonce: k.nonce, isReply: true)))
            case .keepalive: continue
            case .error(let e):
                throw MigrationError.peerError(code: e.code.rawValue, message: e.message)
            case let other:
                throw MigrationError.protocolViolation("expected RESTORE_DONE, got \(other.frameType)")
            }
        }
    }

    /// A lost connection during the hand-over says which step it broke and
    /// what becomes of the source (the migration's release SIGCONTs it), not
    /// only the socket's errno. Other errors pass as they are.
    static func naming<R>(_ step: String, _ body: () throws -> R) throws -> R {
        do {
            return try body()
        } catch where MigrationError.isConnectionLoss(error) {
            throw CRIURunnerError.handOver("lost the connection to the receiver while \(step): \(error); the source is resumed on this host (SIGCONT) and runs on, untracked")
        }
    }

    /// The dumps are restored as root on B: their directory must be ours alone
    /// (created 0700 if missing; refused if it is a symlink, someone else's, or
    /// writable by others, as a /tmp path pre-created by another user would be).
    static func checkPrivateDirectory(_ path: String) throws {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw CRIURunnerError.handOver("cannot create the dump directory \(path): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR, st.st_uid == geteuid(), st.st_mode & 0o022 == 0 else {
            throw CRIURunnerError.handOver("the dump directory \(path) must be a directory of this user that nobody else can write (--criu-dir)")
        }
    }

    /// The dump's files to send, sorted: regular files only (CRIU leaves no
    /// others), names by the wire rule, exactly one process (the image holds
    /// one process's memory), within the limits.
    static func dumpFiles(_ images: String, limits: RestoreLimits) throws -> [String] {
        var names: [String] = []
        var total: UInt64 = 0
        for name in try FileManager.default.contentsOfDirectory(atPath: images).sorted() {
            var st = stat()
            guard lstat(images + "/" + name, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { continue }
            guard RestoreFileName.isValid(name.utf8) else {
                throw CRIURunnerError.handOver("criu dump wrote \(name), a name the wire does not carry (\(RestoreFileName.rule))")
            }
            names.append(name)
            total += UInt64(st.st_size)
        }
        let pagemaps = names.filter { $0.hasPrefix("pagemap-") && $0.hasSuffix(".img") }
        guard pagemaps.count == 1 else {
            throw CRIURunnerError.handOver("the dump holds \(pagemaps.count) processes' memory maps; memhaul migrated one process's memory (a target with children cannot be restored this way)")
        }
        guard names.count <= limits.maxFiles else { throw CRIURunnerError.handOver("the dump has \(names.count) files, more than the \(limits.maxFiles) a restore takes") }
        guard total <= limits.maxTotalBytes else { throw CRIURunnerError.handOver("the dump is \(total) bytes, more than the \(limits.maxTotalBytes) a restore takes") }
        return names
    }
}

/// The receiver side of the hand-over (B): restore the dump the sender
/// shipped with its memory from the complete image, resume it, and wait until
/// every page is in (until then the sender keeps its source, frozen, to fall
/// back to).
public enum CRIURestore {
    public struct Outcome: Sendable {
        public var pid: Int32
        public var restoreSeconds: Double
        public var completeSeconds: Double
        public var pagesServed: UInt64
    }

    /// `criuDirectory`: the dump's files; `imageDirectory`: the complete memhaul image.
    /// Logs go to `<imageDirectory>/criu-*.log`. On a failure after the restore
    /// the restored process is killed before this throws.
    public static func run(runner: CRIURunner, imageDirectory: String, criuDirectory: String, route: CRIURoute = .lazy, options: CRIUOptions,
                           log: @escaping @Sendable (String) -> Void) throws -> Outcome {
        let start = MonotonicClock.seconds()
        let source = try ImagePageSource(directory: imageDirectory, allowIncomplete: false)
        let pagemaps = ((try? FileManager.default.contentsOfDirectory(atPath: criuDirectory)) ?? [])
            .filter { $0.hasPrefix("pagemap-") && $0.hasSuffix(".img") }
        guard pagemaps.count == 1, let id = UInt64(pagemaps[0].dropFirst("pagemap-".count).dropLast(".img".count)) else {
            throw CRIURunnerError.handOver("the CRIU files hold \(pagemaps.count) processes' memory maps; the image holds one process")
        }
        if route != .lazy {
            let imagePages: UInt64
            if route == .rewrite {
                imagePages = try CRIUExport.rewrite(dumpDirectory: criuDirectory, source: source).imagePages
            } else {
                let chain = try CRIUParentChain.build(dumpDirectory: criuDirectory, source: source)
                imagePages = chain.imagePages
                log("criu parent chain: \(chain.imagePages) pages in \(chain.lazyEntries) entries over \(chain.levels) levels, "
                    + "\(Int((MonotonicClock.seconds() - start) * 1000)) ms")
                try CRIUParentChain.verifyUnchanged(source)
            }
            let pid = try runner.restorePlain(directory: criuDirectory, logPrefix: imageDirectory + "/criu", options: options)
            // The chain stays (a few KiB, inside the image): should the sender's CLOSE be
            // lost, `criu restore -D <criu dir>` by hand still finds the memory.
            guard kill(pid, SIGCONT) == 0 else {
                let e = String(cString: strerror(errno))
                kill(pid, SIGKILL)
                throw CRIURunnerError.handOver("SIGCONT to the restored PID \(pid): \(e)")
            }
            let running = MonotonicClock.seconds() - start
            return Outcome(pid: pid, restoreSeconds: running, completeSeconds: running, pagesServed: imagePages)
        }
        let restored = try runner.restore(directory: criuDirectory, source: source, servedPID: id, logPrefix: imageDirectory + "/criu",
                                          options: options, log: log)
        guard kill(restored.pid, SIGCONT) == 0 else {
            let e = String(cString: strerror(errno))
            restored.abandon()
            kill(restored.pid, SIGKILL)
            throw CRIURunnerError.handOver("SIGCONT to the restored PID \(restored.pid): \(e)")
        }
        let running = MonotonicClock.seconds() - start
        log("criu restore: PID \(restored.pid) resumed \(Int(running * 1000)) ms after the hand-over began (criu restore \(Int(restored.restoreSeconds * 1000)) ms); lazy pages coming in")
        let stats: CRIUPageServer.Stats
        do {
            stats = try restored.waitUntilComplete(seconds: runner.timeouts.pagesComplete)
        } catch {
            kill(restored.pid, SIGKILL)  // missing pages would read as zeros: never let it run on
            throw error
        }
        guard kill(restored.pid, 0) == 0 else {
            throw CRIURunnerError.handOver("the restored process (PID \(restored.pid)) exited while its pages came in [logs: \(imageDirectory)/criu-*.log]")
        }
        return Outcome(pid: restored.pid, restoreSeconds: running, completeSeconds: MonotonicClock.seconds() - start, pagesServed: stats.pages)
    }
}

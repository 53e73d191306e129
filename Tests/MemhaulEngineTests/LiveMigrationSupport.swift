import Foundation
import Glibc
import MemhaulImage
import Testing
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport

/// A real migration (TLS, receiver in this process) of a `--control` workload
/// that runs rounds until the test asks for the cutover, so that every change
/// the test drives happens while rounds run. The test steps on events: each
/// command's answer, and `waitRounds`, which returns once rounds have been
/// acknowledged after the call.
final class LiveMigration: @unchecked Sendable {  // immutable; counters live in RoundEvents
    let receiver: TestReceiver
    let workload: WorkloadProcess
    let migration: SenderMigration
    let id: String
    private let events: RoundEvents

    /// The sender's log, counted: it logs "round N …" once round N is acknowledged.
    final class RoundEvents: @unchecked Sendable {  // fields behind `condition`
        let condition = NSCondition()
        var acknowledged = 0
        var ended = false
        var cutoverAsked = false
        let lines = LogSink()
        func note(_ line: String) {
            lines.append(line)
            guard line.hasPrefix("round ") else { return }
            condition.lock()
            acknowledged += 1
            condition.broadcast()
            condition.unlock()
        }
    }

    /// `prepare` runs commands on the workload before the migration attaches.
    init(id: String, workload args: [String], prepare: (LiveMigration.Before) throws -> Void = { _ in }) throws {
        let pki = try TestPKI()
        receiver = try TestReceiver(pki: pki)
        workload = try startWorkload(args, control: true)
        self.id = id
        try prepare(Before(workload: workload))
        var r = MigrationRequest(pid: workload.pid, host: "127.0.0.1", port: receiver.port, id: id)
        // Never converge or give up on its own: the test decides when to cut over.
        r.parameters.downtimeLimitMs = -1
        r.parameters.maxRounds = 1_000_000
        r.parameters.autoConverge = false
        let events = RoundEvents()
        self.events = events
        migration = SenderMigration(request: r, connect: try connector(pki), log: { events.note($0) })
        let m = migration, w = workload
        Thread.detachNewThread {
            m.run()
            events.condition.lock()
            events.ended = true
            let asked = events.cutoverAsked
            events.condition.broadcast()
            events.condition.unlock()
            // Ended without being asked: a command may be waiting on a frozen or
            // resumed target; kill it so that the wait ends and the test fails.
            if !asked { w.kill() }
        }
    }

    /// The workload before the attach.
    struct Before {
        let workload: WorkloadProcess
        @discardableResult
        func command(_ line: String) throws -> [String: Any] { try LiveMigration.command(workload, line, state: "not started") }
    }

    /// Sends one command and returns its answer; an error answer throws.
    @discardableResult
    func command(_ line: String) throws -> [String: Any] {
        try Self.command(workload, line, state: "\(migration.status.state): \(migration.status.error ?? "")")
    }

    static func command(_ workload: ChildProcess, _ line: String, state: @autoclosure () -> String) throws -> [String: Any] {
        workload.send(line)
        guard let answer = try workload.readLine() else {
            throw TestSetupError("workload gone while running \(line) (migration \(state()))")
        }
        guard let object = try JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any],
              object["event"] as? String == "ok" || object["event"] as? String == "digest" else {
            throw TestSetupError("\(line): \(answer)")
        }
        return object
    }

    /// `command` for answers with a `"start"` address.
    func start(_ line: String) throws -> UInt64 {
        let a = try command(line)
        guard let s = a["start"] as? String, let v = UInt64(s.dropFirst(2), radix: 16) else { throw TestSetupError("\(line): no start in \(a)") }
        return v
    }

    /// The start of the workload's first main region, from its ready line.
    func mainRegionStart() throws -> String { try Self.mainRegionStart(workload) }

    static func mainRegionStart(_ workload: WorkloadProcess) throws -> String {
        guard let object = try JSONSerialization.jsonObject(with: Data(workload.ready.utf8)) as? [String: Any],
              let regions = object["regions"] as? [[String: Any]], let start = regions.first?["start"] as? String else {
            throw TestSetupError("no region in \(workload.ready)")
        }
        return start
    }

    /// Returns once `count` rounds have been acknowledged after this call: with
    /// two, at least one whole round (scan, send, commit) began after it.
    func waitRounds(_ count: Int = 2, timeoutSeconds: Double = 60) throws {
        let e = events
        e.condition.lock()
        defer { e.condition.unlock() }
        let target = e.acknowledged + count
        let deadline = Date(timeIntervalSinceNow: timeoutSeconds)
        while e.acknowledged < target && !e.ended {
            if !e.condition.wait(until: deadline) { break }
        }
        guard e.acknowledged >= target else {
            throw TestSetupError("\(count) rounds not acknowledged (migration \(migration.status.state): \(migration.status.error ?? ""))")
        }
    }

    var roundsAcknowledged: Int {
        events.condition.lock()
        defer { events.condition.unlock() }
        return events.acknowledged
    }

    var logLines: [String] { events.lines.lines }

    /// Asks for the cutover, waits for the end and requires a completed
    /// migration that cut over because it was asked to (so every change above
    /// happened while rounds ran); then opens the image.
    func finish(timeoutSeconds: Double = 120) throws -> ImageStore {
        events.condition.lock()
        events.cutoverAsked = true
        events.condition.unlock()
        migration.requestCutover()
        migration.waitUntilFinished(timeoutSeconds: timeoutSeconds)
        let s = migration.status
        guard s.state == .completed else {
            // Say where the image differs (the source is resumed, but a test's protected regions stay put).
            kill(workload.pid, SIGSTOP)
            if let store = try? openImageWhenReleased(receiver.images + "/" + id), let report = try? ImageVerifier.verify(store, pid: workload.pid) {
                store.close()
                throw TestSetupError("migration \(s.state): \(s.error ?? ""); image vs process now: \(report.mismatches)")
            }
            throw TestSetupError("migration \(s.state): \(s.error ?? "")")
        }
        #expect(s.cutoverReason == CutoverReason.requested.description, "cut over early: \(s.cutoverReason ?? "")")
        #expect(s.digest != nil)
        return try openImageWhenReleased(receiver.images + "/" + id)
    }

    /// Compares the image with the frozen workload byte for byte.
    func verify(_ store: ImageStore) throws {
        let report = try ImageVerifier.verify(store, pid: workload.pid)
        #expect(report.ok, "\(id): \(report.mismatches)")
        #expect(report.pagesCompared > 0)
    }

    /// Kills the workload (it is left stopped) and waits for it.
    func end() {
        migration.cancel()
        workload.kill()
        workload.wait()
        migration.waitUntilFinished(timeoutSeconds: 30)
    }
}

/// A /proc file read to its end. Foundation's String(contentsOfFile:) stops
/// after the first 4 KiB of a /proc file (st_size is 0), which silently cuts
/// /proc/PID/smaps short.
func readProcFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n < 0 { return nil }
        if n == 0 { break }
        bytes += chunk[..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// A `kB` field of /proc/PID/status (VmSwap, VmRSS…), or of `file` (/proc/meminfo).
func statusKB(_ pid: pid_t, _ field: String, file: String? = nil) -> Int? {
    guard let text = readProcFile(file ?? "/proc/\(pid)/status") else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
        return Int(line.dropFirst(field.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
    }
    return nil
}

/// A `kB` field (AnonHugePages, Swap…) of the smaps entry of the mapping that holds `address`.
func smapsKB(_ pid: pid_t, containing address: UInt64, _ field: String) -> Int? {
    guard let text = readProcFile("/proc/\(pid)/smaps") else { return nil }
    var inside = false
    for line in text.split(separator: "\n") {
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        if let range = words.first, range.contains("-"), !range.hasSuffix(":") {
            let bounds = range.split(separator: "-").compactMap { UInt64($0, radix: 16) }
            inside = bounds.count == 2 && address >= bounds[0] && address < bounds[1]
        } else if inside, line.hasPrefix(field + ":"), words.count >= 2 {
            return Int(words[1])
        }
    }
    return nil
}

/// Whether `pid` holds a userfaultfd, or has a mapping registered for uffd-wp (smaps VmFlags `uw`).
func holdsUserfaultfd(_ pid: pid_t) -> (fd: Bool, writeProtect: Bool) {
    let dir = "/proc/\(pid)/fd"
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    let fd = fds.contains { (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\($0)"))?.contains("userfaultfd") == true }
    let smaps = (readProcFile("/proc/\(pid)/smaps")) ?? ""
    let wp = smaps.split(separator: "\n").contains { $0.hasPrefix("VmFlags:") && $0.split(separator: " ").contains("uw") }
    return (fd, wp)
}

/// One page of another process, read through /proc/PID/mem (root).
func readPage(_ pid: pid_t, _ address: UInt64) throws -> [UInt8] {
    let fd = open("/proc/\(pid)/mem", O_RDONLY)
    guard fd >= 0 else { throw TestSetupError("open /proc/\(pid)/mem: errno \(errno)") }
    defer { close(fd) }
    var page = [UInt8](repeating: 0, count: 4096)
    let n = page.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4096, Int(bitPattern: UInt(address))) }
    guard n == 4096 else { throw TestSetupError("pread /proc/\(pid)/mem at 0x\(String(address, radix: 16)): \(n), errno \(errno)") }
    return page
}

/// One page of an image.
func imagePage(_ store: ImageStore, _ address: UInt64) throws -> [UInt8] {
    var page = [UInt8](repeating: 0, count: 4096)
    try page.withUnsafeMutableBytes { try store.read(at: address, into: $0) }
    return page
}

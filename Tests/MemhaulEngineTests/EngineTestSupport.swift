import Foundation
import Glibc
@testable import MemhaulSession
import MemhaulSystem
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulTestSupport
import MemhaulImage
import MemhaulTLS
import Testing

extension ChildProcess {
    /// Whether the target holds a userfaultfd.
    var holdsUserfaultfd: Bool {
        let dir = "/proc/\(pid)/fd"
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return fds.contains { (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\($0)"))?.contains("userfaultfd") == true }
    }

    /// Whether any mapping still carries uffd-wp (smaps VmFlags "uw").
    var hasUffdWriteProtect: Bool {
        let smaps = readProcFile("/proc/\(pid)/smaps") ?? ""
        return smaps.split(separator: "\n").contains { $0.hasPrefix("VmFlags:") && $0.split(separator: " ").contains("uw") }
    }
}

/// The data extents of an open file, by `SEEK_DATA`/`SEEK_HOLE` (byte offsets).
func dataRuns(of fd: Int32) throws -> [Range<UInt64>] {
    var runs: [Range<UInt64>] = []
    var offset: UInt64 = 0
    while let start = try FileDescriptor.nextData(of: fd, from: offset) {
        let end = try FileDescriptor.nextHole(of: fd, from: start)
        runs.append(start..<end)
        offset = end
    }
    return runs
}

/// A workload child (at most 300 s); `pid` is valid once it printed its ready line.
func startWorkload(_ args: [String], control: Bool = false) throws -> WorkloadProcess {
    try WorkloadProcess(args + ["--exit-after", "300"] + (control ? ["--control"] : []), stdin: control ? .pipe : .null)
}

/// A receiver agent on 127.0.0.1:<ephemeral> in this process.
final class TestReceiver: @unchecked Sendable {
    let agent: ReceiverAgent
    let images: String
    let port: UInt16
    let sink = LogSink()

    init(pki: TestPKI?, images: String? = nil, limits: ReceiverLimits = ReceiverLimits(), authorization: ReceiverAuthorization? = nil) throws {
        self.images = images ?? temporaryDirectory("images")
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        port = listener.port
        let handshake: ReceiverAgent.Handshake
        if let pki {
            let context = try TLSServerContext(configuration: pki.configuration("receiver"))
            handshake = { try context.accept(on: $0) }
        } else {
            handshake = { $0 }
        }
        let sink = self.sink
        agent = ReceiverAgent(listener: listener, imagesRoot: self.images, limits: limits, handshake: handshake, log: { sink.append($0) })
        agent.authorization = authorization
        let agent = self.agent
        Thread.detachNewThread { agent.serve() }
    }

    var logLines: [String] { sink.lines }

    /// Waits (at most `seconds`) for a log line containing every needle.
    func waitForLog(_ needles: String..., seconds: Double = 30) -> String? {
        let deadline = MonotonicClock.seconds() + seconds
        while MonotonicClock.seconds() < deadline {
            if let line = logLines.first(where: { line in needles.allSatisfy { line.contains($0) } }) { return line }
            usleep(10_000)
        }
        return nil
    }

    deinit { agent.close() }
}

func connector(_ pki: TestPKI?) throws -> SenderMigration.Connector {
    guard let pki else { return { r in try TCPStream.connect(host: r.host, port: r.port) } }
    let context = try TLSClientContext(configuration: pki.configuration("sender"))
    return { r in try context.connect(host: r.host, port: r.port) }
}

final class LogSink: @unchecked Sendable {  // lines behind the lock
    private let lock = NSLock()
    private var stored: [String] = []
    func append(_ line: String) { lock.withLock { stored.append(line) } }
    var lines: [String] { lock.withLock { stored } }
}

/// `memhaul receive` as a separate process (so it can be killed like a real agent).
final class ReceiverProcess {
    let child: ChildProcess
    let port: UInt16
    let images: String
    let control: String

    init(pki: TestPKI?, images: String? = nil, port: UInt16 = 0, extraArgs: [String] = []) throws {
        let images = images ?? temporaryDirectory("images")
        self.images = images
        control = temporaryDirectory("ctl") + "/receiver.sock"
        var args = ["receive", "--listen", "127.0.0.1:\(port)", "--images", images, "--control", control]
        if let pki { args += ["--certs", pki.directory] } else { args += ["--insecure"] }
        args += extraArgs
        child = try ChildProcess([builtBinary("memhaul")] + args, stdin: .null)
        let line = try child.expectLine(containing: "listening")
        guard let p = line.split(separator: ":").last.flatMap({ UInt16($0) }) else { throw TestSetupError("bad line \(line)") }
        self.port = p
    }
}

/// The image in `directory`, once released, equals `pid`'s memory byte for byte.
func expectImageMatchesSource(_ directory: String, pid: Int32, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let store = try openImageWhenReleased(directory)
    defer { store.close() }
    let report = try ImageVerifier.verify(store, pid: pid)
    #expect(report.ok, "\(report.mismatches)", sourceLocation: sourceLocation)
}

/// Opens an image once the receiver session has released it (its lock is
/// dropped when the session ends, just after the sender has finished).
/// The 120 s bound is for safety only: the session's end (a linger, the
/// report's write behind a busy disk) is what is waited for.
func openImageWhenReleased(_ directory: String) throws -> ImageStore {
    var lastError: Error?
    let deadline = MonotonicClock.seconds() + 120
    while MonotonicClock.seconds() < deadline {
        do { return try ImageStore.open(directory: directory) } catch {
            lastError = error
            if case ImageError.locked = error { usleep(10_000); continue }
            throw error
        }
    }
    throw lastError!
}

extension SenderMigration {
    /// Runs the migration on a thread of its own; the semaphore is signalled when `run()` returns.
    func runInBackground() -> DispatchSemaphore {
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { self.run(); done.signal() }
        return done
    }
}

import Foundation
import Glibc
@testable import MemhaulSession
import MemhaulSystem
@testable import MemhaulSender
@testable import MemhaulReceiver
import MemhaulImage
import MemhaulTLS

struct TestSetupError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// The repository root, from this file's path.
let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// A built executable: `$MEMHAUL_BIN_DIR` or `.build/debug`.
func builtBinary(_ name: String) -> String {
    let dir = ProcessInfo.processInfo.environment["MEMHAUL_BIN_DIR"] ?? repositoryRoot + "/.build/debug"
    return dir + "/" + name
}

func temporaryDirectory(_ tag: String) -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("memhaul-\(tag)-\(UUID().uuidString.prefix(8))").path
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A child process with its stdout on a pipe; killed in deinit if still alive.
final class Child: @unchecked Sendable {
    let pid: pid_t
    private let process: Process
    private let output: FileHandle
    private let input: FileHandle?
    private var buffer = Data()
    private(set) var exitStatus: Int32?
    /// The workload's `ready` line (startWorkload).
    var readyLine = ""

    init(_ path: String, _ args: [String], stdin: Bool = false, environment: [String: String] = [:]) throws {
        let out = Pipe()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = args
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        var inPipe: Pipe?
        if stdin {
            inPipe = Pipe()
            process.standardInput = inPipe
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        try process.run()
        self.process = process
        pid = process.processIdentifier
        output = out.fileHandleForReading
        input = inPipe?.fileHandleForWriting
    }

    /// The next stdout line, nil at end of file.
    func readLine() -> String? {
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[buffer.startIndex..<nl], as: UTF8.self)
                buffer.removeSubrange(buffer.startIndex...nl)
                return line
            }
            let chunk = output.availableData
            if chunk.isEmpty { return nil }
            buffer.append(chunk)
        }
    }

    /// Reads lines until one contains `needle`.
    func waitFor(_ needle: String) throws -> String {
        while let line = readLine() {
            if line.contains(needle) { return line }
        }
        throw TestSetupError("child \(pid) ended before printing \(needle)")
    }

    func send(_ line: String) { input?.write(Data((line + "\n").utf8)) }

    /// Closes the child's stdin (EOF).
    func closeInput() { try? input?.close() }

    /// The single-letter state from /proc/PID/stat.
    var state: Character? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].drop(while: { $0 == " " }).first
    }

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

    @discardableResult
    func wait() -> Int32 {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        exitStatus = status
        return status
    }

    func kill(_ sig: Int32 = SIGKILL) { Glibc.kill(pid, sig) }

    /// Waits for the exit through Foundation (which reaps its children itself, so
    /// a waitpid of ours can lose the status): the exit code, or nil when a
    /// signal ended the child.
    func waitExitCode() -> Int32? {
        process.waitUntilExit()
        exitStatus = process.terminationStatus
        return process.terminationReason == .exit ? process.terminationStatus : nil
    }

    deinit {
        if exitStatus == nil {
            Glibc.kill(pid, SIGKILL)
            Glibc.kill(pid, SIGCONT)
            wait()
        }
    }
}

/// A workload child; `pid` is valid once it printed its ready line.
func startWorkload(_ args: [String], control: Bool = false) throws -> Child {
    let child = try Child(builtBinary("memhaul-workload"), args + ["--exit-after", "300"] + (control ? ["--control"] : []), stdin: control)
    child.readyLine = try child.waitFor("\"ready\"")
    return child
}

/// Certificates for one test (never committed).
struct TestPKI {
    let directory: String
    init() throws {
        directory = temporaryDirectory("pki")
        _ = try CertificateBundle.create(directory: directory, force: true)
    }
    func configuration(_ role: String) -> TLSConfiguration {
        TLSConfiguration(caFile: directory + "/ca.pem", certificateFile: directory + "/\(role).pem", privateKeyFile: directory + "/\(role).key")
    }
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
    let child: Child
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
        child = try Child(builtBinary("memhaul"), args)
        let line = try child.waitFor("listening")
        guard let p = line.split(separator: ":").last.flatMap({ UInt16($0) }) else { throw TestSetupError("bad line \(line)") }
        self.port = p
    }
}

/// Opens an image once the receiver session has released it (its lock is
/// dropped when the session ends, just after the sender has finished).
func openImageWhenReleased(_ directory: String) throws -> ImageStore {
    var lastError: Error?
    for _ in 0..<1000 {
        do { return try ImageStore.open(directory: directory) } catch {
            lastError = error
            if case ImageError.locked = error { usleep(10_000); continue }
            throw error
        }
    }
    throw lastError!
}

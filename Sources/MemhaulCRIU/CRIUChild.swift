#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// One CRIU subprocess: stdin from /dev/null, stdout and stderr into a
/// file, every wait bounded. ``kill()`` is for failure paths.
final class CRIUChild: @unchecked Sendable {  // Process is thread-safe for these calls; `exited` is a semaphore
    let process = Process()
    let step: String
    let outputPath: String?
    private let exited = DispatchSemaphore(value: 0)

    init(executable: String, arguments: [String], step: String, outputPath: String?) throws {
        self.step = step
        self.outputPath = outputPath
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        if let outputPath {
            _ = FileManager.default.createFile(atPath: outputPath, contents: nil, attributes: [.posixPermissions: 0o600])
            guard let handle = FileHandle(forWritingAtPath: outputPath) else {
                throw CRIURunnerError.failed(step: step, status: "not started", detail: "cannot open \(outputPath)", log: outputPath)
            }
            process.standardOutput = handle
            process.standardError = handle
        } else {
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
        }
        process.terminationHandler = { [exited] _ in exited.signal() }
        do {
            try process.run()
        } catch {
            throw CRIURunnerError.failed(step: step, status: "not started", detail: "\(executable): \(error.localizedDescription)", log: outputPath ?? "-")
        }
    }

    var pid: Int32 { process.processIdentifier }

    /// The exit, as text: `exit N` or `signal N`; nil while running.
    var exitDescription: String? {
        if process.isRunning { return nil }
        return process.terminationReason == .uncaughtSignal ? "signal \(process.terminationStatus)" : "exit \(process.terminationStatus)"
    }

    /// True if it exited 0.
    var succeeded: Bool { !process.isRunning && process.terminationReason == .exit && process.terminationStatus == 0 }

    /// Waits at most `seconds` for the exit; false if it is still running.
    @discardableResult
    func wait(seconds: Double) -> Bool {
        guard exited.wait(timeout: .now() + max(seconds, 0)) == .success else { return false }
        exited.signal()  // later waits return at once
        // terminationHandler runs just before isRunning flips on some Foundations.
        for _ in 0..<1000 where process.isRunning { usleep(1000) }
        return true
    }

    var hasExited: Bool { exited.wait(timeout: .now()) == .success ? { exited.signal(); return true }() : false }

    /// SIGTERM, then SIGKILL after a grace period; waits for the exit.
    func kill(grace: Double = 2) {
        guard process.isRunning else { return }
        Glibc.kill(pid, SIGTERM)
        if wait(seconds: grace) { return }
        Glibc.kill(pid, SIGKILL)
        wait(seconds: 10)
    }

    /// What it printed (the first `limit` bytes).
    func output(limit: Int = 64 << 10) -> String {
        guard let outputPath, let data = FileManager.default.contents(atPath: outputPath) else { return "" }
        return String(decoding: data.prefix(limit), as: UTF8.self)
    }
}

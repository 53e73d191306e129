#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// Stops and resumes every thread of a target with group stop (SIGSTOP/SIGCONT).
///
/// Group stop reaches every thread, including ones cloned while the stop is in
/// flight (a new thread inherits the pending stop), so "frozen" is reached once
/// every task under /proc/PID/task reports state `T` and the task set is stable.
public struct TargetFreezer: Sendable {
    public let pid: Int32

    public init(pid: Int32) { self.pid = pid }

    /// `kill(pid, SIGSTOP)`, then waits until every thread is stopped.
    /// Returns the nanoseconds it took to reach a full stop.
    @discardableResult
    public func freeze(timeoutSeconds: Double = 10) throws -> UInt64 {
        let start = MonotonicClock.nanoseconds()
        _ = try Syscall.run("kill(SIGSTOP)") { kill(pid, SIGSTOP) }
        var spins = 0
        while true {
            let tasks = try TargetFreezer.threadStates(pid: pid)
            if tasks.isEmpty { throw EngineError.targetExited(pid: pid) }
            if tasks.allSatisfy({ $0.state == "T" || $0.state == "t" || $0.state == "Z" || $0.state == "X" }) {
                // Re-read once: a clone racing the stop shows up here.
                let again = try TargetFreezer.threadStates(pid: pid)
                if again.map(\.tid) == tasks.map(\.tid),
                   again.allSatisfy({ $0.state == "T" || $0.state == "t" || $0.state == "Z" || $0.state == "X" }) {
                    return MonotonicClock.nanoseconds() - start
                }
            }
            if Double(MonotonicClock.nanoseconds() - start) / 1e9 > timeoutSeconds {
                throw EngineError.freezeTimeout(pid: pid)
            }
            spins += 1
            if spins > 64 { usleep(50) } else { sched_yield() }
        }
    }

    /// The state letter of a process (`R`, `S`, `T`, …), nil if there is none.
    public static func state(pid: Int32) -> Character? { readState(path: "/proc/\(pid)/stat") }

    /// `kill(pid, SIGCONT)`.
    public func thaw() throws {
        _ = try Syscall.run("kill(SIGCONT)") { kill(pid, SIGCONT) }
    }

    /// `(tid, state)` for every thread, sorted by tid.
    static func threadStates(pid: Int32) throws -> [(tid: Int32, state: Character)] {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open("/proc/\(pid)/task", O_RDONLY | O_DIRECTORY)
        } catch {
            if error.errno == .ENOENT || error.errno == .ESRCH { return [] }  // the target is gone
            throw error
        }
        guard let dir = fdopendir(fd.rawValue) else { throw SystemError("fdopendir(/proc/\(pid)/task)", .current) }
        _ = fd.release()  // closedir closes it
        defer { closedir(dir) }
        var result: [(Int32, Character)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard let tid = Int32(name) else { continue }
            if let state = readState(path: "/proc/\(pid)/task/\(tid)/stat") { result.append((tid, state)) }
        }
        return result.sorted { $0.0 < $1.0 }
    }

    /// The state letter of a /proc stat file: the field after the last ')';
    /// nil if it cannot be read (the task is gone).
    static func readState(path: String) -> Character? {
        guard let fd = try? FileDescriptor.open(path, O_RDONLY) else { return nil }
        var buffer = [UInt8](repeating: 0, count: 512)
        guard let n = try? buffer.withUnsafeMutableBytes({ (b) throws(SystemError) in try fd.read(into: b) }), n > 0 else { return nil }
        guard let close = buffer[..<n].lastIndex(of: UInt8(ascii: ")")), close + 2 < n else { return nil }
        return Character(UnicodeScalar(buffer[close + 2]))
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
public enum MonotonicClock {
    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    public static func seconds() -> Double { Double(nanoseconds()) / 1e9 }
}

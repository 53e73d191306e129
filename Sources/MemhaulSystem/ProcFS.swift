#if canImport(Glibc)
import Glibc
#endif

/// `/proc` files and directories, read through the syscall seam: the one
/// reader of process states, shared by attach, the freezer and `image verify`.
public enum ProcFS {
    /// A whole `/proc` file: read to the end (Foundation stops at 4 KiB; proc
    /// files report size 0). No size limit: maps and smaps grow with the process.
    public static func read(_ path: String) throws -> [UInt8] {
        try SmallFile.read(path, limit: .max)
    }

    public static func readString(_ path: String) throws -> String {
        String(decoding: try read(path), as: UTF8.self)
    }

    /// `MemAvailable` of `/proc/meminfo` in bytes: what the kernel estimates can
    /// be had without swapping; nil if it cannot be read.
    public static func memAvailableBytes() -> UInt64? {
        guard let text = try? readString("/proc/meminfo") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            guard let kib = line.split(separator: " ").dropFirst().first.flatMap({ UInt64($0) }) else { return nil }
            return kib << 10
        }
        return nil
    }

    /// The state letter of `/proc/PID/stat` (or `/proc/PID/task/TID/stat`):
    /// R, S, D, T, t, Z, X…; nil if the process or thread is gone. The field
    /// after the last `)`, since the command name may hold anything.
    public static func state(pid: Int32, thread: Int32? = nil) -> Character? {
        let path = thread.map { "/proc/\(pid)/task/\($0)/stat" } ?? "/proc/\(pid)/stat"
        guard let text = try? read(path), let close = text.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        guard let letter = text[(close + 1)...].first(where: { $0 != UInt8(ascii: " ") }) else { return nil }
        return Character(UnicodeScalar(letter))
    }

    /// `(tid, state)` for every thread of `pid`, sorted by tid; empty if the process is gone.
    public static func threadStates(pid: Int32) throws(SystemError) -> [(tid: Int32, state: Character)] {
        let names: [String]
        do { names = try Directory.entries("/proc/\(pid)/task") } catch where error.errno == .ENOENT || error.errno == .ESRCH { return [] }  // the target is gone
        var result: [(tid: Int32, state: Character)] = []
        for name in names {
            guard let tid = Int32(name), let state = state(pid: pid, thread: tid) else { continue }
            result.append((tid, state))
        }
        return result.sorted { $0.tid < $1.tid }
    }
}

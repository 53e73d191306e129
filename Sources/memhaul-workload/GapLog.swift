#if canImport(Glibc)
import Glibc
#endif

/// `--gap-log PATH`: the target's own view of a freeze. A thread wakes every
/// 200 µs and appends each stall longer than 2 ms to PATH as
/// `END_MONOTONIC_NS GAP_NS` (CLOCK_MONOTONIC, as memhaul's clock), so a
/// benchmark can set the frozen window it measured beside the one the process lived.
func startGapLog(path: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw GapLogError(message: "--gap-log: open(\(path)): \(String(cString: strerror(errno)))") }
    spawnThread {
        var last = nowNanoseconds()
        var nap = timespec(tv_sec: 0, tv_nsec: 200_000)
        while true {
            nanosleep(&nap, nil)
            let now = nowNanoseconds()
            if now - last > 2_000_000 {
                let line = Array("\(now) \(now - last)\n".utf8)
                _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            }
            last = now
        }
    }
}

struct GapLogError: Error { var message: String }

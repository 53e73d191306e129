#if canImport(Glibc)
import Glibc
#endif

/// `--heartbeat FILE`: the target's own clock of its service gap. A thread
/// ticks every millisecond on CLOCK_REALTIME (the one clock a CRIU restore does
/// not shift: CLOCK_MONOTONIC may run in a time namespace on B) and keeps the
/// longest gap between two ticks; every 50 ms it replaces FILE with
/// "max_gap_ms ticks last_tick_realtime_ns\n". FILE is written to a temporary
/// name and renamed, and no descriptor stays open (CRIU refuses to restore an
/// open file whose size changed after the dump).
enum Heartbeat {
    static func start(path: String) {
        spawnThread {
            var last = realtimeNanoseconds(), longest: UInt64 = 0, ticks: UInt64 = 0, written = last
            while true {
                var pause = timespec(tv_sec: 0, tv_nsec: 1_000_000)
                nanosleep(&pause, nil)
                let now = realtimeNanoseconds()
                longest = max(longest, now &- last)
                last = now
                ticks += 1
                if now &- written >= 50_000_000 || ticks == 1 {
                    write(path: path, "\(Double(longest) / 1e6) \(ticks) \(now)\n")
                    written = now
                }
            }
        }
    }

    private static func realtimeNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    private static func write(path: String, _ line: String) {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        let bytes = Array(line.utf8)
        let ok = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
        close(fd)
        if ok { rename(temporary, path) }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// `--heartbeat FILE`: the target's own clock of how long it was stopped. A
/// thread ticks every millisecond on CLOCK_REALTIME (the one clock a CRIU
/// restore does not shift: CLOCK_MONOTONIC may run in a time namespace on B)
/// and every 50 ms replaces FILE with
///
///     max_gap_ms ticks last_tick_realtime_ns
///     END_REALTIME_NS GAP_NS        (one line per stall over 2 ms, the last 256)
///
/// The first line is the longest pause between two ticks (a freeze, a move:
/// scripts/bench-restore reads it); the stall lines let a benchmark find the
/// pause around an instant it noted (the frozen window as the target lived it).
/// FILE is written to FILE.tmp and renamed, and no descriptor stays open (CRIU
/// refuses to restore an open file whose size changed after the dump).
enum Heartbeat {
    static let tickNanoseconds: Int = 1_000_000
    static let stallNanoseconds: UInt64 = 2_000_000
    static let keptStalls = 256

    static func start(path: String) {
        spawnThread {
            var last = WallClock.nanoseconds(), longest: UInt64 = 0, ticks: UInt64 = 0, written = last
            var stalls: [(end: UInt64, gap: UInt64)] = []
            while true {
                var pause = timespec(tv_sec: 0, tv_nsec: tickNanoseconds)
                nanosleep(&pause, nil)
                let now = WallClock.nanoseconds()
                let gap = now &- last
                longest = max(longest, gap)
                if gap > stallNanoseconds {
                    if stalls.count == keptStalls { stalls.removeFirst() }
                    stalls.append((now, gap))
                }
                last = now
                ticks += 1
                if now &- written >= 50_000_000 || ticks == 1 {
                    write(path: path, "\(Double(longest) / 1e6) \(ticks) \(now)\n" + stalls.map { "\($0.end) \($0.gap)\n" }.joined())
                    written = now
                }
            }
        }
    }

    private static func write(path: String, _ text: String) {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        let bytes = Array(text.utf8)
        let ok = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
        close(fd)
        if ok { rename(temporary, path) }
    }
}

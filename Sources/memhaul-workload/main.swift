// memhaul-workload: a target process with known content and controlled writes,
// for tests and benchmarks (ARCHITECTURE.md, "Workload control protocol").
#if canImport(Glibc)
import Glibc
#endif

/// Self-pipe for SIGUSR1 (a signal handler may only write(2)).
nonisolated(unsafe) var signalPipe: [Int32] = [-1, -1]

let options: Options
do {
    options = try Options.parse(Array(CommandLine.arguments.dropFirst()))
} catch {
    printError(error.message)
    exit(2)
}

signal(SIGPIPE, SIG_IGN)
guard pipe(&signalPipe) == 0 else {
    printError("pipe: \(String(cString: strerror(errno)))")
    exit(1)
}
for fd in signalPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
_ = fcntl(signalPipe[1], F_SETFL, O_NONBLOCK)
var action = sigaction()
action.__sigaction_handler.sa_handler = { _ in
    var byte: UInt8 = 1
    _ = write(signalPipe[1], &byte, 1)
}
action.sa_flags = SA_RESTART
sigaction(SIGUSR1, &action, nil)
// A parent may spawn us with signals blocked (test runners do): unblock SIGUSR1.
var usr1 = sigset_t()
sigemptyset(&usr1)
sigaddset(&usr1, SIGUSR1)
pthread_sigmask(SIG_UNBLOCK, &usr1, nil)

let workload: Workload
do {
    workload = try Workload(options: options)
} catch {
    printError("\(error)")
    exit(1)
}
workload.startThreads()
if let path = options.heartbeat { Heartbeat.start(path: path) }
emit(workload.readyLine)

let start = nowNanoseconds()
let exitDeadline: UInt64? = options.exitAfter > 0 ? start + UInt64(options.exitAfter * 1e9) : nil
let reportInterval: UInt64 = options.reportEvery > 0 ? UInt64(options.reportEvery * 1e9) : 0
var nextReport = start + reportInterval
var lastReportWrites = 0
var lastReportTime = start
var stdinOpen = options.control
var pending: [UInt8] = []
var buffer = [UInt8](repeating: 0, count: 65536)

while true {
    let now = nowNanoseconds()
    if let d = exitDeadline, now >= d { exit(0) }
    if reportInterval > 0 && now >= nextReport {
        let w = workload.writes.load(ordering: .relaxed)
        let rate = Double(w - lastReportWrites) * 1e9 / Double(max(1, now - lastReportTime))
        emit("{\"event\":\"stats\",\"writes_per_sec\":\(Int(rate.rounded())),\"writes\":\(w),\(workload.probe.fields)}")
        lastReportWrites = w
        lastReportTime = now
        nextReport = now + reportInterval
    }
    var timeout: Int32 = -1
    var wake: UInt64?
    if let d = exitDeadline { wake = d }
    if reportInterval > 0 { wake = min(wake ?? nextReport, nextReport) }
    if let wake { timeout = Int32(min(UInt64(Int32.max), (wake > now ? wake - now : 0) / 1_000_000 + 1)) }

    var fds = [pollfd(fd: signalPipe[0], events: Int16(POLLIN), revents: 0)]
    if stdinOpen { fds.append(pollfd(fd: 0, events: Int16(POLLIN), revents: 0)) }
    let n = poll(&fds, nfds_t(fds.count), timeout)
    if n < 0 {
        if errno == EINTR { continue }
        exit(1)
    }
    if fds[0].revents != 0 {
        var drain = [UInt8](repeating: 0, count: 64)
        _ = read(signalPipe[0], &drain, drain.count)
        emit(workload.digestLine())
    }
    if stdinOpen, fds.count > 1, fds[1].revents != 0 {
        let got = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
        if got < 0 && errno == EINTR { continue }
        if got <= 0 { exit(0) }  // --control: stdin closed
        pending += buffer[..<got]
        while let nl = pending.firstIndex(of: 10) {
            let line = String(decoding: pending[..<nl], as: UTF8.self)
            pending.removeSubrange(...nl)
            let trimmed = line.hasSuffix("\r") ? String(line.dropLast()) : line
            if trimmed.isEmpty { continue }
            emit(workload.handle(trimmed))
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The single seam through which every memhaul system call goes.
///
/// `Syscall.run` retries `EINTR`, turns `-1`/`errno` into a ``SystemError``
/// that names the call, and consults the fault-injection table first, so tests
/// can make any named call fail (for example a kernel without `PAGEMAP_SCAN`)
/// without mocks anywhere else.
public enum Syscall {
    /// Faults to inject, keyed by call name (e.g. `"ioctl(PAGEMAP_SCAN)"`):
    /// the errno, and how many calls still succeed before it strikes.
    private static let injected = Mutex<[String: (errno: Errno, after: Int)]>(
        Syscall.faultsFromEnvironment().mapValues { (errno: $0, after: 0) })

    /// Environment variable read once at start-up, for tests that run the
    /// built binary: `MEMHAUL_INJECT_FAULTS="ioctl(PAGEMAP_SCAN)=ENOTTY,pidfd_getfd=EPERM"`.
    public static let faultEnvironmentVariable = "MEMHAUL_INJECT_FAULTS"

    private static func faultsFromEnvironment() -> [String: Errno] {
        guard let raw = getenv(faultEnvironmentVariable) else { return [:] }
        var faults: [String: Errno] = [:]
        for item in String(cString: raw).split(separator: ",") {
            guard let eq = item.lastIndex(of: "=") else { continue }
            let call = String(item[..<eq])
            if let err = Errno(name: String(item[item.index(after: eq)...])) { faults[call] = err }
        }
        return faults
    }

    /// Makes every later call named `call` fail with `errno` (tests only),
    /// after letting `after` calls of that name succeed first.
    public static func injectFault(_ call: String, _ errno: Errno?, after: Int = 0) {
        injected.withLock { $0[call] = errno.map { (errno: $0, after: after) } }
    }

    /// The injected fault for `call`, if any.
    @inline(__always)
    static func injectedFault(_ call: String) -> Errno? {
        injected.withLock { table -> Errno? in
            if table.isEmpty { return nil }
            guard let fault = table[call] else { return nil }
            if fault.after > 0 {
                table[call] = (errno: fault.errno, after: fault.after - 1)
                return nil
            }
            return fault.errno
        }
    }

    /// Runs `body`, a raw system call returning -1 and setting errno on failure.
    @inline(__always)
    public static func run<R: FixedWidthInteger>(
        _ call: @autoclosure () -> String,
        retryOnInterrupt: Bool = true,
        _ body: () -> R
    ) throws(SystemError) -> R {
        if let fault = injectedFault(call()) { throw SystemError(call(), fault) }
        while true {
            let result = body()
            if result != -1 { return result }
            let err = Errno.current
            if err == .EINTR && retryOnInterrupt { continue }
            throw SystemError(call(), err)
        }
    }

    /// Like ``run(_:retryOnInterrupt:_:)`` for calls that report the error as a
    /// negative return value instead of errno (e.g. pthread-style, io_uring).
    public static func runNegated<R: FixedWidthInteger & SignedInteger>(
        _ call: @autoclosure () -> String,
        _ body: () -> R
    ) throws(SystemError) -> R {
        if let fault = injectedFault(call()) { throw SystemError(call(), fault) }
        while true {
            let result = body()
            if result >= 0 { return result }
            let err = Errno(rawValue: Int32(-result))
            if err == .EINTR { continue }
            throw SystemError(call(), err)
        }
    }
}

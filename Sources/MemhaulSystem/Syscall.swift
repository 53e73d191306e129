#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The single seam through which every memhaul system call goes.
///
/// `Syscall.run` retries `EINTR`, turns `-1`/`errno` into a ``SystemError``
/// that names the call, and, in debug builds, consults the fault scopes first,
/// so tests can make any named call fail (for example a kernel without
/// `PAGEMAP_SCAN`) without mocks anywhere else.
///
/// ## Fault injection (debug builds only)
///
/// Faults are scoped and thread-local, in the manner of swift-system's mocking:
///
/// ```swift
/// Syscall.withFaults([.init("ioctl(PAGEMAP_SCAN)", .ENOTTY), .init("pidfd_getfd", .EPERM, after: 1)]) {
///     #expect(throws: PagemapScanError.self) { try scanner.collectWritten(ranges) }
/// }
/// ```
///
/// - A fault applies only to calls made on the thread running the scope's
///   body, so tests that inject faults can run in parallel with any other test.
///   Scopes nest: an inner fault for a call shadows an outer one.
/// - `after: N` lets the first N calls of that name in the scope succeed.
///   The count belongs to the scope, so it is shared by every thread in it.
/// - Work the code under test hands to another thread joins the scope only
///   where the code says so: ``currentFaults`` captures the scope on the
///   spawning thread, `withFaults(_ scope:_:)` re-enters it on the
///   spawned one (e.g. the image store's background apply). Both also exist,
///   as no-ops, in release builds, so such call sites need no `#if DEBUG`.
/// - A debug binary also reads ``faultEnvironmentVariable``
///   (`MEMHAUL_INJECT_FAULTS="ioctl(PAGEMAP_SCAN)=ENOTTY,pidfd_getfd=EPERM"`)
///   once, on its first system call: those faults form a process-wide base
///   scope that every thread sees, for tests that run the built binary.
///   Release binaries ignore the variable: none of this is compiled in.
/// - Cost when no scope is active anywhere in the process (and none came from
///   the environment): one relaxed atomic load per call; no lock.
public enum Syscall {
    /// Runs `body`, a raw system call returning -1 and setting errno on failure.
    @inline(__always)
    public static func run<R: FixedWidthInteger>(
        _ call: @autoclosure () -> String,
        retryOnInterrupt: Bool = true,
        _ body: () -> R
    ) throws(SystemError) -> R {
        #if DEBUG
        if activeScopes.load(ordering: .relaxed) != 0, let fault = injectedFault(call()) { throw SystemError(call(), fault) }
        #endif
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
    @inline(__always)
    public static func runNegated<R: FixedWidthInteger & SignedInteger>(
        _ call: @autoclosure () -> String,
        _ body: () -> R
    ) throws(SystemError) -> R {
        #if DEBUG
        if activeScopes.load(ordering: .relaxed) != 0, let fault = injectedFault(call()) { throw SystemError(call(), fault) }
        #endif
        while true {
            let result = body()
            if result >= 0 { return result }
            let err = Errno(rawValue: Int32(-result))
            if err == .EINTR { continue }
            throw SystemError(call(), err)
        }
    }
}

#if DEBUG
extension Syscall {
    /// One fault: calls named `call` fail with `errno`, after `after` of them succeeded.
    public struct Fault: Hashable, Sendable {
        public var call: String
        public var errno: Errno
        public var after: Int

        public init(_ call: String, _ errno: Errno, after: Int = 0) {
            self.call = call
            self.errno = errno
            self.after = after
        }
    }

    /// An active set of faults and their remaining "after" counts, chained to
    /// the scope it was opened in. A reference: every thread that enters it
    /// counts down the same calls.
    public final class FaultScope: Sendable {
        let parent: FaultScope?
        private let table: Mutex<[String: (errno: Errno, after: Int)]>

        init(_ faults: [Fault], parent: FaultScope?) {
            self.parent = parent
            var table: [String: (errno: Errno, after: Int)] = [:]
            for f in faults { table[f.call] = (f.errno, max(0, f.after)) }
            self.table = Mutex(table)
        }

        /// The innermost scope naming `call` decides: its errno once its count is spent.
        func strike(_ call: String) -> Errno? {
            var scope: FaultScope? = self
            while let s = scope {
                let verdict = s.table.withLock { table -> Errno?? in
                    guard let fault = table[call] else { return .none }
                    if fault.after > 0 {
                        table[call]!.after -= 1
                        return .some(nil)
                    }
                    return .some(fault.errno)
                }
                if let verdict { return verdict }
                scope = s.parent
            }
            return nil
        }
    }

    /// Environment variable read by a debug binary on its first system call:
    /// `MEMHAUL_INJECT_FAULTS="ioctl(PAGEMAP_SCAN)=ENOTTY,pidfd_getfd=EPERM"`.
    public static let faultEnvironmentVariable = "MEMHAUL_INJECT_FAULTS"

    /// Scopes entered on any thread right now, plus 1 for the environment's
    /// base scope until it is read and found empty. 0: nothing to look up.
    private static let activeScopes = Atomic<Int>(1)

    /// The process-wide faults of ``faultEnvironmentVariable``, read once.
    private static let baseScope: FaultScope? = {
        let faults = faultsFromEnvironment()
        if faults.isEmpty {
            activeScopes.subtract(1, ordering: .relaxed)
            return nil
        }
        return FaultScope(faults, parent: nil)
    }()

    static func faultsFromEnvironment() -> [Fault] {
        guard let raw = getenv(faultEnvironmentVariable) else { return [] }
        return parseFaults(String(cString: raw))
    }

    /// `call=ERRNO,call=ERRNO`; items without `=` or a known errno name are skipped.
    static func parseFaults(_ text: String) -> [Fault] {
        text.split(separator: ",").compactMap { (item: Substring) -> Fault? in
            guard let eq = item.lastIndex(of: "="), let err = Errno(name: String(item[item.index(after: eq)...])) else { return nil }
            return Fault(String(item[..<eq]), err)
        }
    }

    /// The calling thread's scope (a pointer to it, unretained: `withFaults`
    /// keeps the scope alive while it is installed, and always restores).
    private static let scopeKey: pthread_key_t = {
        var key = pthread_key_t()
        precondition(pthread_key_create(&key, nil) == 0, "pthread_key_create")
        return key
    }()

    /// The fault scope of the calling thread (nil outside any), to re-enter
    /// with `withFaults(_ scope:_:)` on a thread it spawns.
    public static var currentFaults: FaultScope? {
        guard let p = pthread_getspecific(scopeKey) else { return nil }
        return Unmanaged<FaultScope>.fromOpaque(p).takeUnretainedValue()
    }

    /// Runs `body` with `faults` injected into the calls it makes on this
    /// thread (and on threads that re-enter ``currentFaults``).
    ///
    /// `rethrows`, not typed throws, so the body may throw any error. (A body
    /// whose only `try` sits inside `#expect(...)` is inferred non-throwing:
    /// write `{ () throws in ... }` or bind the value first.)
    public static func withFaults<R>(_ faults: [Fault], _ body: () throws -> R) rethrows -> R {
        try withFaults(FaultScope(faults, parent: currentFaults ?? baseScope)) { () throws -> R in try body() }
    }

    /// Runs `body` in `scope` (captured with ``currentFaults``, typically on
    /// the thread that spawned this one); nil runs it with no scope added.
    public static func withFaults<R, E: Error>(_ scope: FaultScope?, _ body: () throws(E) -> R) throws(E) -> R {
        guard let scope else { return try body() }
        let previous = pthread_getspecific(scopeKey)
        activeScopes.add(1, ordering: .relaxed)
        pthread_setspecific(scopeKey, Unmanaged.passUnretained(scope).toOpaque())
        defer {
            pthread_setspecific(scopeKey, previous)
            activeScopes.subtract(1, ordering: .relaxed)
            withExtendedLifetime(scope) {}
        }
        return try body()
    }

    /// The fault for `call` on this thread: its scopes, innermost first, then
    /// the environment's (every scope chain ends there).
    @inline(never)
    static func injectedFault(_ call: String) -> Errno? {
        (currentFaults ?? baseScope)?.strike(call)
    }
}
#else
extension Syscall {
    /// Release builds inject no faults: a capture that carries nothing.
    public struct FaultScope: Sendable {}

    /// Always nil in release builds.
    @inline(__always)
    public static var currentFaults: FaultScope? { nil }

    /// Runs `body` (release builds have no fault scopes to enter).
    @inline(__always)
    public static func withFaults<R, E: Error>(_ scope: FaultScope?, _ body: () throws(E) -> R) throws(E) -> R {
        try body()
    }
}
#endif

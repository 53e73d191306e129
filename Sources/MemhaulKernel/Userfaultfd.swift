#if canImport(Glibc)
import Glibc
#endif
import CMemhaulLinux
import MemhaulSystem

/// Feature bits of `struct uffdio_api` that memhaul uses.
public struct UffdFeatures: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// UFFD_FEATURE_WP_ASYNC (6.7): write faults on protected pages resolve in the
    /// kernel (the page just becomes "written"), no handler thread.
    public static let wpAsync = UffdFeatures(rawValue: cmh_UFFD_FEATURE_WP_ASYNC)
    /// UFFD_FEATURE_WP_UNPOPULATED (6.4): never-touched pages can be write-protected too.
    public static let wpUnpopulated = UffdFeatures(rawValue: cmh_UFFD_FEATURE_WP_UNPOPULATED)
}

/// A userfaultfd context held by the agent. The context is bound to the mm of
/// the process that created it, so when it was injected into a target,
/// UFFDIO_REGISTER/UNREGISTER here act on the target's address space.
///
/// `@unchecked Sendable`: the descriptor never changes after init, `features` is
/// set once by UFFDIO_API before the object is shared, and the
/// kernel serialises the ioctls.
public final class Userfaultfd: @unchecked Sendable {
    public let fd: FileDescriptor
    /// Created with UFFD_USER_MODE_ONLY (the target lacked the privilege for a full
    /// uffd). Harmless for async write-protect, which resolves faults in the kernel.
    public let userModeOnly: Bool
    /// Features granted by UFFDIO_API.
    public private(set) var features: UffdFeatures = []

    public init(adopting fd: FileDescriptor, userModeOnly: Bool = false) {
        self.fd = fd
        self.userModeOnly = userModeOnly
    }

    /// `userfaultfd(2)` in the calling process (probes and tests).
    public static func createInSelf(userModeOnly: Bool = false) throws(SystemError) -> Userfaultfd {
        let flags = O_CLOEXEC | O_NONBLOCK | (userModeOnly ? Int32(UFFD_USER_MODE_ONLY) : 0)
        let raw = try Syscall.run("userfaultfd") { cmh_userfaultfd(flags) }
        return Userfaultfd(adopting: FileDescriptor(owning: raw), userModeOnly: userModeOnly)
    }

    /// The message for a kernel without async write-protect.
    public static let missingWPAsync = "kernel lacks UFFD_FEATURE_WP_ASYNC (needs Linux ≥ 6.7)"

    /// `ioctl(UFFDIO_API)` asking for WP_ASYNC | WP_UNPOPULATED; throws
    /// ``AttachError/missingKernelFeature(_:)`` when the kernel does not grant them.
    public func enableAsyncWriteProtect() throws {
        let wanted: UffdFeatures = [.wpAsync, .wpUnpopulated]
        var api = uffdio_api(api: cmh_UFFD_API, features: wanted.rawValue, ioctls: 0)
        do {
            _ = try Syscall.run("ioctl(UFFDIO_API)") { cmh_ioctl_ptr(fd.rawValue, cmh_UFFDIO_API, &api) }
        } catch let error {
            // EINVAL: a requested feature bit is unknown to this kernel.
            if error.errno == .EINVAL { throw AttachError.missingKernelFeature(Userfaultfd.missingWPAsync) }
            throw error
        }
        features = UffdFeatures(rawValue: api.features)
        guard features.contains(.wpAsync) else { throw AttachError.missingKernelFeature(Userfaultfd.missingWPAsync) }
        guard features.contains(.wpUnpopulated) else {
            throw AttachError.missingKernelFeature("kernel lacks UFFD_FEATURE_WP_UNPOPULATED (needs Linux ≥ 6.4)")
        }
    }

    /// `ioctl(UFFDIO_REGISTER)` with UFFDIO_REGISTER_MODE_WP over `range`.
    public func registerWriteProtect(_ range: AddressRange) throws(SystemError) {
        var reg = uffdio_register(
            range: uffdio_range(start: range.start, len: range.byteCount), mode: cmh_UFFDIO_REGISTER_MODE_WP, ioctls: 0)
        _ = try Syscall.run("ioctl(UFFDIO_REGISTER)") { cmh_ioctl_ptr(fd.rawValue, cmh_UFFDIO_REGISTER, &reg) }
    }

    /// `ioctl(UFFDIO_UNREGISTER)` over `range`; also lifts the write protection of its pages.
    public func unregister(_ range: AddressRange) throws(SystemError) {
        var r = uffdio_range(start: range.start, len: range.byteCount)
        _ = try Syscall.run("ioctl(UFFDIO_UNREGISTER)") { cmh_ioctl_ptr(fd.rawValue, cmh_UFFDIO_UNREGISTER, &r) }
    }

    /// Injects `userfaultfd(O_CLOEXEC|O_NONBLOCK)` into the stopped target, takes the
    /// descriptor with pidfd_getfd, and injects `close` so the target holds no uffd
    /// (a uffd left open in the target breaks CRIU dumps). Falls back to
    /// UFFD_USER_MODE_ONLY when the target may not create a full uffd (EPERM).
    static func inject(into injector: SyscallInjector, pidfd: FileDescriptor) throws -> Userfaultfd {
        let base = UInt64(UInt32(bitPattern: O_CLOEXEC | O_NONBLOCK))
        var userModeOnly = false
        var result = try injectedUserfaultfd(injector, flags: base)
        if result == -Int64(EPERM) {
            userModeOnly = true
            result = try injectedUserfaultfd(injector, flags: base | UInt64(UFFD_USER_MODE_ONLY))
        }
        guard result >= 0 else {
            throw AttachError.injectedCallFailed(call: "userfaultfd(injected)", errno: Errno(rawValue: Int32(-result)))
        }
        let targetFD = Int32(result)
        InjectionTestPause.at("after-userfaultfd")
        let taken: Result<Int32, SystemError> = Result { () throws(SystemError) -> Int32 in
            try Syscall.run("pidfd_getfd") { cmh_pidfd_getfd(pidfd.rawValue, targetFD, 0) }
        }
        // Close the target's copy whether or not we got ours.
        let closed = try injector.call(cmh_SYS_close, UInt64(targetFD))
        InjectionTestPause.at("after-close")
        let mine = try taken.get()
        let uffd = Userfaultfd(adopting: FileDescriptor(owning: mine), userModeOnly: userModeOnly)
        if closed < 0 {
            throw AttachError.injectedCallFailed(call: "close(injected)", errno: Errno(rawValue: Int32(-closed)))
        }
        return uffd
    }

    /// One injected `userfaultfd(flags)`, through the fault seam as "userfaultfd(injected)".
    private static func injectedUserfaultfd(_ injector: SyscallInjector, flags: UInt64) throws -> Int64 {
        if let fault = faultInjected("userfaultfd(injected)") { return -Int64(fault.rawValue) }
        return try injector.call(Int(cmh_SYS_userfaultfd), flags)
    }
}

/// Consults the fault-injection seam for a call that does not run in this
/// process (an injected system call): the errno to pretend, or nil.
func faultInjected(_ call: String) -> Errno? {
    do {
        _ = try Syscall.run(call) { Int32(0) }
        return nil
    } catch {
        return error.errno
    }
}

/// Debug builds only: `MEMHAUL_TEST_PAUSE_INJECTION=STEP` stops the injection at
/// the named step (`after-userfaultfd`, `after-close`), prints
/// `memhaul-test: injection paused at STEP` on stdout and waits for a byte (or EOF)
/// on stdin, so a test can kill the agent exactly there.
enum InjectionTestPause {
    #if DEBUG
    static let step: String? = getenv("MEMHAUL_TEST_PAUSE_INJECTION").map { String(cString: $0) }
    #endif

    static func at(_ name: String) {
        #if DEBUG
        guard step == name else { return }
        let line = Array("memhaul-test: injection paused at \(name)\n".utf8)
        _ = line.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        var byte: UInt8 = 0
        while read(0, &byte, 1) < 0 && errno == EINTR {}
        #endif
    }
}

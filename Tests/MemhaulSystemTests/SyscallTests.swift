import Glibc
import Testing
@testable import MemhaulSystem

@Suite struct SyscallTests {
    @Test func failedCallCarriesItsNameAndErrno() {
        #expect(throws: SystemError("open(/nonexistent/x)", .ENOENT)) {
            _ = try FileDescriptor.open("/nonexistent/x", O_RDONLY)
        }
    }

    @Test func injectedFaultFailsTheNamedCallOnly() throws {
        Syscall.injectFault("test-call", .ENOTTY)
        defer { Syscall.injectFault("test-call", nil) }
        #expect(throws: SystemError("test-call", .ENOTTY)) { _ = try Syscall.run("test-call") { Int32(0) } }
        #expect(try Syscall.run("other-call") { Int32(7) } == 7)
    }

    @Test func errnoHasReadableNames() {
        #expect(Errno.ENOTTY.name == "ENOTTY")
        #expect(Errno(name: "ESRCH") == .ESRCH)
        #expect(Errno.EPERM.description.hasPrefix("EPERM ("))
        #expect(SystemError("pidfd_getfd", .EPERM).description.hasPrefix("pidfd_getfd: EPERM"))
    }
}

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
        try Syscall.withFaults([.init("test-call", .ENOTTY)]) { () throws in
            #expect(throws: SystemError("test-call", .ENOTTY)) { _ = try Syscall.run("test-call") { Int32(0) } }
            #expect(try Syscall.run("other-call") { Int32(7) } == 7)
        }
        // The scope ended with the closure.
        #expect(try Syscall.run("test-call") { Int32(3) } == 3)
        #expect(Syscall.currentFaults == nil)
    }

    @Test func faultStrikesAfterTheGivenNumberOfCalls() throws {
        try Syscall.withFaults([.init("counted-call", .EIO, after: 2)]) { () throws in
            #expect(try Syscall.run("counted-call") { Int32(1) } == 1)
            #expect(try Syscall.runNegated("counted-call") { Int32(2) } == 2)
            #expect(throws: SystemError("counted-call", .EIO)) { _ = try Syscall.run("counted-call") { Int32(0) } }
            #expect(throws: SystemError("counted-call", .EIO)) { _ = try Syscall.runNegated("counted-call") { Int32(0) } }
        }
    }

    @Test func innerScopeShadowsTheOuterOne() {
        Syscall.withFaults([.init("nested-call", .EPERM), .init("outer-only", .EBUSY)]) {
            Syscall.withFaults([.init("nested-call", .EACCES)]) {
                #expect(throws: SystemError("nested-call", .EACCES)) { _ = try Syscall.run("nested-call") { Int32(0) } }
                #expect(throws: SystemError("outer-only", .EBUSY)) { _ = try Syscall.run("outer-only") { Int32(0) } }
            }
            #expect(throws: SystemError("nested-call", .EPERM)) { _ = try Syscall.run("nested-call") { Int32(0) } }
        }
    }

    /// A scope is the calling thread's: another thread's calls are untouched
    /// unless it re-enters the captured scope, which then shares its counts.
    @Test func scopeIsThreadLocalUntilReentered() throws {
        final class Box: @unchecked Sendable {  // written by the thread, read after the join
            var plain: Result<Int32, SystemError> = .success(0)
            var reentered: [Result<Int32, SystemError>] = []
        }
        let box = Box()
        try Syscall.withFaults([.init("thread-call", .ENOSPC, after: 1)]) {
            let captured = Syscall.currentFaults
            #expect(captured != nil)
            try joinThread {
                box.plain = Result { () throws(SystemError) in try Syscall.run("thread-call") { Int32(5) } }
                Syscall.withFaults(captured) {
                    for _ in 0..<2 { box.reentered.append(Result { () throws(SystemError) in try Syscall.run("thread-call") { Int32(6) } }) }
                }
            }
            #expect(throws: SystemError("thread-call", .ENOSPC)) { _ = try Syscall.run("thread-call") { Int32(0) } }
        }
        #expect(try box.plain.get() == 5)
        #expect(try box.reentered[0].get() == 6)
        #expect(throws: SystemError("thread-call", .ENOSPC)) { try box.reentered[1].get() }
    }

    @Test func environmentFaultsParse() {
        #expect(Syscall.parseFaults("ioctl(PAGEMAP_SCAN)=ENOTTY,pidfd_getfd=EPERM,bad,x=ENOPE") == [
            .init("ioctl(PAGEMAP_SCAN)", .ENOTTY), .init("pidfd_getfd", .EPERM),
        ])
    }

    @Test func errnoHasReadableNames() {
        #expect(Errno.ENOTTY.name == "ENOTTY")
        #expect(Errno(name: "ESRCH") == .ESRCH)
        #expect(Errno.EPERM.description.hasPrefix("EPERM ("))
        #expect(SystemError("pidfd_getfd", .EPERM).description.hasPrefix("pidfd_getfd: EPERM"))
    }
}

/// Runs `body` on a new pthread and waits for it.
private func joinThread(_ body: @escaping @Sendable () -> Void) throws {
    final class Work { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    var thread = pthread_t()
    let work = Unmanaged.passRetained(Work(body)).toOpaque()
    let rc = pthread_create(&thread, nil, { arg in
        Unmanaged<Work>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, work)
    try #require(rc == 0)
    pthread_join(thread, nil)
}

import CMemhaulLinux
import Glibc
import Testing
@testable import MemhaulKernel
import MemhaulTestSupport

extension AttachProcessTests {
    /// The syscall injector on its own: signals arriving mid-injection, targets dying mid-injection.
    @Suite struct AttachInjectorTests {
        @Test func injectedGetpidReturnsThePidAndTheTargetCarriesOn() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "read"])
            _ = try child.expectLine(startingWith: "ready")
            let injector = try SyscallInjector.begin(pid: child.pid)
            #expect(try injector.call(cmh_SYS_getpid) == Int64(child.pid))
            #expect(try injector.call(cmh_SYS_close, 9999) == -Int64(EBADF))
            try injector.finish()
            try child.write("after\n")
            #expect(try child.readLine() == "got after")
        }

        @Test func signalArrivingDuringInjectionIsDeliveredOnceAfterwards() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "read"])
            _ = try child.expectLine(startingWith: "ready")
            try AttachFixtures.waitUntilBlocked(child.pid, in: [0])
            let injector = try SyscallInjector.begin(pid: child.pid)
            // Queued while stopped: dequeued on the way to our injected syscall, held back.
            // sigqueue: si_code SI_QUEUE (-1) and a value, which the re-delivery must keep.
            #expect(sigqueue(child.pid, SIGUSR1, sigval(sival_int: 42)) == 0)
            #expect(try injector.call(cmh_SYS_getpid) == Int64(child.pid))
            #expect(injector.heldSignals == [SIGUSR1])
            try injector.finish()
            #expect(try child.readLine() == "usr1 code=-1 value=42")
            // The interrupted read was restarted (SA_RESTART) and still works.
            try child.write("next\n")
            #expect(try child.readLine() == "got next")
            child.closeStdin()
            #expect(try child.readLine() == nil)
            #expect(child.wait() == 0)
        }

        @Test func targetKilledMidInjectionIsAClearError() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "read"])
            _ = try child.expectLine(startingWith: "ready")
            let injector = try SyscallInjector.begin(pid: child.pid)
            kill(child.pid, SIGKILL)
            do {
                _ = try injector.call(cmh_SYS_getpid)
                Issue.record("injection into a killed target should fail")
            } catch let error as AttachError {
                guard case .targetExited(let pid, _) = error else {
                    Issue.record("unexpected \(error)")
                    return
                }
                #expect(pid == child.pid)
                #expect(error.description.contains("ESRCH"))
            }
        }
    }
}

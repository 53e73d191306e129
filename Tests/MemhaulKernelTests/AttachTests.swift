import CMemhaulLinux
import Glibc
import MemhaulSystem
import Testing
@testable import MemhaulKernel
import MemhaulTestSupport

extension AttachProcessTests {
    /// Attach/detach against real processes. Serialized: some tests inject faults into
    /// the process-wide syscall seam ("ptrace(SEIZE)", "ioctl(UFFDIO_API)").
    @Suite struct AttachTests {
        static let nanosleepCalls: Set<Int> = [35, 230]  // nanosleep, clock_nanosleep
        static let readCall: Set<Int> = [0]

        /// After detach: the target holds no uffd and no VMA is registered.
        func expectClean(_ pid: pid_t, sourceLocation: SourceLocation = #_sourceLocation) throws {
            #expect(AttachFixtures.userfaultfds(of: pid).isEmpty, sourceLocation: sourceLocation)
            #expect(try AttachFixtures.uffdWPMappings(of: pid).isEmpty, sourceLocation: sourceLocation)
        }

        @Test func sleepingTargetFinishesItsNanosleepAfterAttachAndDetach() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "sleep", "1500"])
            _ = try child.expectLine(startingWith: "ready")
            try AttachFixtures.waitUntilBlocked(child.pid, in: Self.nanosleepCalls)

            let process = try AttachedProcess.attach(pid: child.pid)
            #expect(!process.registered.isEmpty)
            #expect(process.registered.contains { $0.path == "[stack]" })
            #expect(process.skipped.contains { $0.entry.path == "[vdso]" })
            // While attached: the target holds no uffd, its writable memory is registered.
            #expect(AttachFixtures.userfaultfds(of: child.pid).isEmpty)
            #expect(try !AttachFixtures.uffdWPMappings(of: child.pid).isEmpty)
            #expect(ProcFS.state(pid: child.pid) != "t")  // not left traced
            try process.detach()
            try process.detach()  // idempotent
            try expectClean(child.pid)

            let line = try child.expectLine(startingWith: "slept")
            let fields = line.split(separator: " ")
            #expect(fields.count == 4 && fields[2] == "rc=0" && fields[3] == "errno=0", "\(line)")
            // A botched restart returns early; the restarted sleep still ends at the deadline.
            #expect((Int(fields[1]) ?? 0) >= 1400, "\(line)")
            #expect(child.wait() == 7)
        }

        @Test func pythonSleepIsRestartedCorrectly() throws {
            let script = """
                import time, sys
                t = time.monotonic()
                print('ready', flush=True)
                time.sleep(1.5)
                print('slept %.3f' % (time.monotonic() - t), flush=True)
                sys.exit(7)
                """
            let child = try ChildProcess(["python3", "-c", script])
            _ = try child.expectLine(startingWith: "ready")
            try AttachFixtures.waitUntilBlocked(child.pid, in: Self.nanosleepCalls)
            let process = try AttachedProcess.attach(pid: child.pid)
            try process.detach()
            try expectClean(child.pid)
            let line = try child.expectLine(startingWith: "slept")
            #expect((Double(line.split(separator: " ")[1]) ?? 0) >= 1.4, "\(line)")
            #expect(child.wait() == 7)
        }

        @Test func targetBlockedInReadKeepsReading() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "read"])
            _ = try child.expectLine(startingWith: "ready")
            try AttachFixtures.waitUntilBlocked(child.pid, in: Self.readCall)
            let process = try AttachedProcess.attach(pid: child.pid)
            try process.detach()
            try expectClean(child.pid)
            try child.write("hello\n")
            #expect(try child.readLine() == "got hello")
            child.closeStdin()
            #expect(try child.readLine() == nil)
            #expect(child.wait() == 0)
        }

        @Test func busyMultiThreadedTargetStaysConsistent() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "busy", "4", "64"])
            let ready = try child.expectLine(startingWith: "ready")
            let area = UInt64(ready.split(separator: " ")[2].dropFirst(2), radix: 16)!
            for _ in 0..<3 {
                let process = try AttachedProcess.attach(pid: child.pid)
                #expect(process.registeredRanges.contains { $0.start <= area && area < $0.end })
                _ = try process.refreshLayout()
                try process.detach()
                try expectClean(child.pid)
            }
            child.closeStdin()
            let line = try child.expectLine(startingWith: "ok")
            #expect(child.wait() == 0, "\(line)")
        }

        /// As root, and as `nobody`: without CAP_SYS_PTRACE and with
        /// vm.unprivileged_userfaultfd=0 the injected uffd is user-mode only, and a
        /// kernel write into a protected page must still not fault (WP_ASYNC resolves it).
        @Test(arguments: [false, true])
        func kernelWritesIntoProtectedPagesDoNotFault(asNobody: Bool) throws {
            let pages = 16
            let command = [try AttachFixtures.target(), "kwrite", "\(pages)"]
            let child = try ChildProcess(
                asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] + command : command)
            let ready = try child.expectLine(startingWith: "ready").split(separator: " ")
            let buffer = UInt64(ready[2].dropFirst(2), radix: 16)!
            let size = UInt64(ready[3])!
            let process = try AttachedProcess.attach(pid: child.pid)
            defer { try? process.detach() }
            #expect(process.registeredRanges.contains { $0.start <= buffer && buffer + size <= $0.end })
            let unprivileged = KernelFeatures.sysctl("/proc/sys/vm/unprivileged_userfaultfd") == "0"
            #expect(process.userModeOnly == (asNobody && unprivileged))

            // Write-protect the buffer, then let the kernel (read(2) into it) write every page.
            var wp = uffdio_writeprotect(
                range: uffdio_range(start: buffer, len: size), mode: cmh_UFFDIO_WRITEPROTECT_MODE_WP)
            #expect(cmh_ioctl_ptr(process.uffd.fd.rawValue, cmh_UFFDIO_WRITEPROTECT, &wp) == 0)
            #expect(try KernelFeatures.scanWritten(process.pagemap, AddressRange(start: buffer, end: buffer + size)) == 0)

            var payload = [UInt8](repeating: 0, count: Int(size))
            var sum: UInt = 0
            for i in payload.indices {
                payload[i] = UInt8(truncatingIfNeeded: i &* 7 &+ i >> 12)
                sum = sum &* 31 &+ UInt(payload[i])
            }
            try child.write("fill\n")
            try child.writeRaw(payload)
            #expect(try child.readLine() == "sum \(sum)")
            // The kernel's writes were recorded as writes.
            #expect(try KernelFeatures.scanWritten(process.pagemap, AddressRange(start: buffer, end: buffer + size)) == pages)
            try process.detach()
            child.closeStdin()
            #expect(child.wait() == 0)
        }

        @Test func groupStoppedTargetStaysStoppedAndResumesCorrectly() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "sleep", "1500"])
            _ = try child.expectLine(startingWith: "ready")
            try AttachFixtures.waitUntilBlocked(child.pid, in: Self.nanosleepCalls)
            kill(child.pid, SIGSTOP)
            for _ in 0..<10_000 where AttachFixtures.state(of: child.pid) != "T" { usleep(1000) }
            #expect(AttachFixtures.state(of: child.pid) == "T")
            let process = try AttachedProcess.attach(pid: child.pid)
            #expect(process.wasGroupStopped)
            try process.detach()
            try expectClean(child.pid)
            // Detach re-enters the group-stop (the state is briefly R on the way).
            for _ in 0..<10_000 where AttachFixtures.state(of: child.pid) != "T" { usleep(1000) }
            #expect(AttachFixtures.state(of: child.pid) == "T")
            kill(child.pid, SIGCONT)
            let line = try child.expectLine(startingWith: "slept")
            #expect(line.hasSuffix("rc=0 errno=0"), "\(line)")
            #expect(child.wait() == 7)
        }

        @Test func zombieLeaderIsInjectedThroughALiveThread() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "zombieleader"])
            _ = try child.expectLine(startingWith: "ready")
            for _ in 0..<10_000 where AttachFixtures.state(of: child.pid) != "Z" { usleep(1000) }
            #expect(AttachFixtures.state(of: child.pid) == "Z")
            let process = try AttachedProcess.attach(pid: child.pid)
            #expect(process.thread != child.pid)
            #expect(!process.registered.isEmpty)
            #expect(try !ProcMaps.readFlags(pid: child.pid, thread: process.thread).filter { $0.value.contains(.uffdWriteProtect) }.isEmpty)
            try process.detach()
            #expect(try ProcMaps.readFlags(pid: child.pid, thread: process.thread).filter { $0.value.contains(.uffdWriteProtect) }.isEmpty)
            #expect(AttachFixtures.userfaultfds(of: process.thread).isEmpty)
            try child.write("alive\n")
            #expect(try child.readLine() == "got alive")
            child.closeStdin()
            #expect(child.wait() == 0)
        }

        @Test func secondAttachIsRefused() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "read"])
            _ = try child.expectLine(startingWith: "ready")
            let first = try AttachedProcess.attach(pid: child.pid)
            #expect(throws: AttachError.alreadyTracked(pid: child.pid)) { _ = try AttachedProcess.attach(pid: child.pid) }
            #expect(AttachError.alreadyTracked(pid: child.pid).description.contains("already has userfaultfd write-protect registered"))
            try first.detach()
            // Once the first tracker is gone, attaching works again.
            let again = try AttachedProcess.attach(pid: child.pid)
            try again.detach()
            try expectClean(child.pid)
            try child.write("still here\n")
            #expect(try child.readLine() == "got still here")
        }

        @Test func layoutRefreshFollowsMmapMremapMprotectMunmap() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "layout"])
            _ = try child.expectLine(startingWith: "ready")
            let process = try AttachedProcess.attach(pid: child.pid)
            defer { try? process.detach() }
            func command(_ text: String) throws -> String {
                try child.write(text + "\n")
                return try child.readLine() ?? ""
            }
            func address(_ line: String) -> UInt64 { UInt64(line.split(separator: " ")[1].dropFirst(2), radix: 16)! }
            func isUW(_ start: UInt64) throws -> Bool {
                try AttachFixtures.uffdWPMappings(of: child.pid).contains { $0.start <= start && start < $0.end }
            }

            let a = address(try command("map 8"))
            #expect(try !isUW(a))
            var delta = try process.refreshLayout()
            #expect(delta.added.contains { $0.start <= a && a + 8 * 4096 <= $0.end })
            #expect(try isUW(a))
            delta = try process.refreshLayout()
            #expect(delta.added.isEmpty && delta.removed.isEmpty)

            // mremap to a new address drops the registration; refresh registers it again.
            let b = address(try command("mremap \(String(a, radix: 16)) 8 16"))
            #expect(b != a)
            #expect(try !isUW(b))
            delta = try process.refreshLayout()
            #expect(delta.removed.contains { $0.start <= a && a + 8 * 4096 <= $0.end })
            #expect(delta.added.contains { $0.start <= b && b + 16 * 4096 <= $0.end })
            #expect(try isUW(b))

            // Read-only: still tracked (it holds what was written before the mprotect).
            #expect(try command("touch \(String(b, radix: 16)) 16") == "rc 0")
            #expect(try command("protect \(String(b, radix: 16)) 16 r") == "rc 0")
            delta = try process.refreshLayout()
            #expect(delta.removed.isEmpty)
            #expect(delta.current.contains { $0.start <= b && b + 16 * 4096 <= $0.end })
            #expect(try isUW(b))
            // PROT_NONE with content: still tracked. A fresh, empty PROT_NONE reservation: skipped, with its reason.
            #expect(try command("protect \(String(b, radix: 16)) 16 none") == "rc 0")
            delta = try process.refreshLayout()
            #expect(delta.removed.isEmpty)
            #expect(delta.current.contains { $0.start <= b && b + 16 * 4096 <= $0.end })
            #expect(try command("protect \(String(b, radix: 16)) 16 rw") == "rc 0")
            delta = try process.refreshLayout()
            #expect(delta.current.contains { $0.start <= b && b + 16 * 4096 <= $0.end })
            let c = address(try command("map 4"))
            #expect(try command("protect \(String(c, radix: 16)) 4 none") == "rc 0")
            delta = try process.refreshLayout()
            #expect(delta.skipped.contains { $0.entry.start == c && $0.reason == .noAccessAndEmpty })
            #expect(try command("unmap \(String(c, radix: 16)) 4") == "rc 0")

            #expect(try command("unmap \(String(b, radix: 16)) 16") == "rc 0")
            delta = try process.refreshLayout()
            #expect(delta.removed.contains { $0.start <= b && b + 16 * 4096 <= $0.end })
            #expect(!delta.current.contains { $0.start <= b && b < $0.end })

            try process.detach()
            try expectClean(child.pid)
            child.closeStdin()
            #expect(child.wait() == 0)
        }

        @Test func attachingToAMissingProcessSaysSo() throws {
            let gone = try ChildProcess(["/bin/true"])
            _ = gone.wait()
            #expect(throws: AttachError.noSuchProcess(pid: gone.pid)) { _ = try AttachedProcess.attach(pid: gone.pid) }
            #expect(AttachError.noSuchProcess(pid: 42).description == "cannot attach to PID 42: no such process")
        }

        @Test func ptracePermissionErrorIsReadable() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "read"])
            _ = try child.expectLine(startingWith: "ready")
            try Syscall.withFaults([.init("ptrace(SEIZE)", .EPERM)]) {
                do {
                    _ = try AttachedProcess.attach(pid: child.pid)
                    Issue.record("attach should have failed")
                } catch let error as AttachError {
                    #expect(error == .permissionDenied(pid: child.pid))
                    #expect(error.description == "cannot trace PID \(child.pid): permission denied (need root or CAP_SYS_PTRACE; check kernel.yama.ptrace_scope)")
                }
            }
            try expectClean(child.pid)
        }

        @Test func missingAsyncWriteProtectFailsCleanly() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "read"])
            _ = try child.expectLine(startingWith: "ready")
            try Syscall.withFaults([.init("ioctl(UFFDIO_API)", .EINVAL)]) {
                do {
                    _ = try AttachedProcess.attach(pid: child.pid)
                    Issue.record("attach should have failed")
                } catch let error as AttachError {
                    #expect(error.description == "kernel lacks UFFD_FEATURE_WP_ASYNC (needs Linux ≥ 6.7)")
                }
            }
            // Nothing left behind, and the target still works.
            try expectClean(child.pid)
            try child.write("fine\n")
            #expect(try child.readLine() == "got fine")
        }

        @Test func failedPidfdGetfdStillClosesTheTargetsUffd() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "read"])
            _ = try child.expectLine(startingWith: "ready")
            Syscall.withFaults([.init("pidfd_getfd", .EPERM)]) {
                #expect(throws: SystemError("pidfd_getfd", .EPERM)) { _ = try AttachedProcess.attach(pid: child.pid) }
            }
            // The uffd created inside the target was closed there again.
            try expectClean(child.pid)
            try child.write("fine\n")
            #expect(try child.readLine() == "got fine")
        }

        @Test func injectedUserfaultfdFailureIsReported() throws {
            let child = try ChildProcess([try AttachFixtures.target(), "read"])
            _ = try child.expectLine(startingWith: "ready")
            Syscall.withFaults([.init("userfaultfd(injected)", .ENOSYS)]) {
                #expect(throws: AttachError.injectedCallFailed(call: "userfaultfd(injected)", errno: .ENOSYS)) {
                    _ = try AttachedProcess.attach(pid: child.pid)
                }
            }
            try expectClean(child.pid)
            try child.write("fine\n")
            #expect(try child.readLine() == "got fine")
        }
    }
}

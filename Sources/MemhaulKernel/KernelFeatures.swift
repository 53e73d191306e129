#if canImport(Glibc)
import Glibc
#endif
import CMemhaulLinux
import MemhaulSystem

/// One kernel capability memhaul needs (or reports), as found on this machine.
public struct KernelFeature: Hashable, Sendable {
    public var name: String
    public var ok: Bool
    /// Missing a required feature makes `memhaul probe` fail.
    public var required: Bool
    /// What was found, one line.
    public var detail: String
    /// What to do about it, one line (set when not ok).
    public var fix: String?

    public init(name: String, ok: Bool, required: Bool, detail: String, fix: String? = nil) {
        self.name = name
        self.ok = ok
        self.required = required
        self.detail = detail
        self.fix = ok ? nil : fix
    }
}

/// What the running kernel and our privileges allow, checked by doing it:
/// a uffd with async WP and a PAGEMAP_SCAN in our own process, and ptrace +
/// pidfd_getfd on a child we spawn.
public struct KernelFeatures: Sendable {
    public var kernelRelease: String
    public var features: [KernelFeature]

    public var requiredMissing: [KernelFeature] { features.filter { $0.required && !$0.ok } }
    public var allRequiredPresent: Bool { requiredMissing.isEmpty }

    public static let missingPagemapScan = "kernel lacks PAGEMAP_SCAN (Linux ≥ 6.7)"

    public static func probe() -> KernelFeatures {
        var out: [KernelFeature] = []
        let release = kernelRelease()
        out.append(KernelFeature(name: "kernel", ok: true, required: false, detail: "Linux \(release)"))
        out += probeUffdAndPagemapScan()
        out += probePtraceAndPidfd()

        let capPtrace = hasCapability(19)  // CAP_SYS_PTRACE
        out.append(KernelFeature(
            name: "CAP_SYS_PTRACE", ok: capPtrace, required: false,
            detail: capPtrace ? "effective" : "not effective (tracing is limited to own processes)",
            fix: "run as root or grant CAP_SYS_PTRACE (setcap cap_sys_ptrace+ep memhaul)"))
        let scope = sysctl("/proc/sys/kernel/yama/ptrace_scope")
        let scopeOK = scope == nil || scope == "0" || scope == "1" || (scope == "2" && capPtrace)
        out.append(KernelFeature(
            name: "kernel.yama.ptrace_scope", ok: scopeOK, required: false,
            detail: scope.map { "\($0)" } ?? "absent (Yama not built in)",
            fix: scope == "3" ? "ptrace is disabled until reboot (ptrace_scope=3)" : "sysctl kernel.yama.ptrace_scope=1 (or run as root)"))
        let unpriv = sysctl("/proc/sys/vm/unprivileged_userfaultfd")
        out.append(KernelFeature(
            name: "vm.unprivileged_userfaultfd", ok: true, required: false,
            detail: (unpriv ?? "absent")
                + (unpriv == "0" ? " (targets without CAP_SYS_PTRACE get a user-mode-only uffd: fine for async WP)" : "")))
        return KernelFeatures(kernelRelease: release, features: out)
    }

    // MARK: - userfaultfd + PAGEMAP_SCAN in our own process

    static func probeUffdAndPagemapScan() -> [KernelFeature] {
        var out: [KernelFeature] = []
        let uffd: Userfaultfd
        do {
            do {
                uffd = try Userfaultfd.createInSelf()
            } catch let error where error.errno == .EPERM {
                uffd = try Userfaultfd.createInSelf(userModeOnly: true)
            }
            out.append(KernelFeature(
                name: "userfaultfd", ok: true, required: true, detail: uffd.userModeOnly ? "available (user-mode only)" : "available"))
        } catch {
            let fix = error.errno == .ENOSYS ? "kernel built without CONFIG_USERFAULTFD" : "sysctl vm.unprivileged_userfaultfd=1 or run as root"
            out.append(KernelFeature(name: "userfaultfd", ok: false, required: true, detail: "\(error)", fix: fix))
            out.append(notChecked("uffd WP_ASYNC", "needs userfaultfd"))
            out.append(notChecked("PAGEMAP_SCAN", "needs userfaultfd"))
            return out
        }
        do {
            try uffd.enableAsyncWriteProtect()
            out.append(KernelFeature(name: "uffd WP_ASYNC", ok: true, required: true, detail: "WP_ASYNC and WP_UNPOPULATED granted"))
        } catch {
            out.append(KernelFeature(
                name: "uffd WP_ASYNC", ok: false, required: true, detail: "\(error)",
                fix: "needs Linux ≥ 6.7 (UFFD_FEATURE_WP_ASYNC)"))
            out.append(notChecked("PAGEMAP_SCAN", "needs uffd WP_ASYNC"))
            return out
        }
        out.append(probePagemapScan(uffd))
        return out
    }

    /// Registers a test page, then: touch, scan with WP_MATCHING (reports the page
    /// written and write-protects it), touch again (resolved in the kernel), scan
    /// again (reports it again).
    static func probePagemapScan(_ uffd: Userfaultfd) -> KernelFeature {
        let name = "PAGEMAP_SCAN"
        let size = 4096
        guard let raw = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else {
            return KernelFeature(name: name, ok: false, required: true, detail: "mmap: \(Errno.current)", fix: "out of memory?")
        }
        defer { munmap(raw, size) }
        let page = AddressRange(start: UInt64(UInt(bitPattern: raw)), end: UInt64(UInt(bitPattern: raw)) + UInt64(size))
        do {
            try uffd.registerWriteProtect(page)
        } catch {
            return KernelFeature(
                name: name, ok: false, required: true, detail: "\(error)",
                fix: "kernel lacks uffd write-protect for anonymous memory")
        }
        defer { try? uffd.unregister(page) }
        do {
            let pagemap = try FileDescriptor.open("/proc/self/pagemap", O_RDONLY)
            raw.storeBytes(of: 1, as: UInt8.self)
            let first = try scanWritten(pagemap, page)
            raw.storeBytes(of: 2, as: UInt8.self)
            let second = try scanWritten(pagemap, page)
            guard first == 1, second == 1 else {
                return KernelFeature(
                    name: name, ok: false, required: true,
                    detail: "write not reported (first scan \(first) pages, second \(second))",
                    fix: "kernel PAGEMAP_SCAN does not track uffd-wp async writes; use Linux ≥ 6.7")
            }
            return KernelFeature(name: name, ok: true, required: true, detail: "written pages found and re-protected")
        } catch {
            // ENOTTY/EINVAL from the ioctl: the kernel does not know PAGEMAP_SCAN.
            let missing = error.call == "ioctl(PAGEMAP_SCAN)" && (error.errno == .ENOTTY || error.errno == .EINVAL)
            return KernelFeature(
                name: name, ok: false, required: true, detail: "\(error)",
                fix: missing ? missingPagemapScan : "cannot read /proc/self/pagemap")
        }
    }

    /// One `ioctl(PAGEMAP_SCAN)` with PM_SCAN_WP_MATCHING over `range`: the number
    /// of written pages (which it write-protects again).
    static func scanWritten(_ pagemap: FileDescriptor, _ range: AddressRange) throws(SystemError) -> Int {
        var regions = [page_region](repeating: page_region(), count: 4)
        return try regions.withUnsafeMutableBufferPointer { buf throws(SystemError) -> Int in
            var arg = pm_scan_arg()
            arg.size = UInt64(MemoryLayout<pm_scan_arg>.size)
            arg.flags = cmh_PM_SCAN_WP_MATCHING | cmh_PM_SCAN_CHECK_WPASYNC
            arg.start = range.start
            arg.end = range.end
            arg.vec = UInt64(UInt(bitPattern: buf.baseAddress))
            arg.vec_len = UInt64(buf.count)
            arg.category_mask = cmh_PAGE_IS_WRITTEN
            arg.return_mask = cmh_PAGE_IS_WRITTEN
            let n = try Syscall.run("ioctl(PAGEMAP_SCAN)") { cmh_ioctl_ptr(pagemap.rawValue, cmh_PAGEMAP_SCAN, &arg) }
            var pages = 0
            for r in buf.prefix(Int(n)) { pages += Int((r.end - r.start) / 4096) }
            return pages
        }
    }

    // MARK: - ptrace + pidfd_getfd on a child

    static func probePtraceAndPidfd() -> [KernelFeature] {
        let child: pid_t
        do {
            child = try spawnSleeper()
        } catch {
            return [
                KernelFeature(name: "ptrace", ok: false, required: true, detail: "cannot spawn /bin/sleep: \(error)", fix: "install coreutils"),
                notChecked("pidfd_getfd", "needs a child process"),
            ]
        }
        defer {
            kill(child, SIGKILL)
            var status: Int32 = 0
            _ = cmh_waitpid_all(child, &status, 0)
        }
        var out: [KernelFeature] = []
        do {
            let tracee = try Tracee.seize(child)
            try tracee.interrupt()
            _ = try tracee.wait()
            try tracee.detach()
            out.append(KernelFeature(name: "ptrace", ok: true, required: true, detail: "PTRACE_SEIZE of a child works"))
        } catch {
            let scope = sysctl("/proc/sys/kernel/yama/ptrace_scope")
            out.append(KernelFeature(
                name: "ptrace", ok: false, required: true, detail: "\(error)",
                fix: scope == "3" ? "ptrace is disabled until reboot (kernel.yama.ptrace_scope=3)"
                    : "run as root or grant CAP_SYS_PTRACE; or sysctl kernel.yama.ptrace_scope=1"))
        }
        do {
            let pidfd = try AttachedProcess.openPidfd(child)
            let fd = try Syscall.run("pidfd_getfd") { cmh_pidfd_getfd(pidfd.rawValue, 0, 0) }
            close(fd)
            out.append(KernelFeature(name: "pidfd_getfd", ok: true, required: true, detail: "took a descriptor from a child"))
        } catch let error as SystemError where error.errno == .ENOSYS {
            out.append(KernelFeature(name: "pidfd_getfd", ok: false, required: true, detail: "\(error)", fix: "needs Linux ≥ 5.6"))
        } catch {
            out.append(KernelFeature(
                name: "pidfd_getfd", ok: false, required: true, detail: "\(error)",
                fix: "needs ptrace permission: run as root or grant CAP_SYS_PTRACE"))
        }
        return out
    }

    /// posix_spawn `/bin/sleep 60` with stdin from /dev/null.
    static func spawnSleeper() throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let args = ["/bin/sleep", "60"]
        var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        // The calling thread may block signals (dispatch workers do): do not pass that on.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, args[0], &actions, &attr, &argv, environ)
        if rc != 0 { throw SystemError("posix_spawn(/bin/sleep)", Errno(rawValue: rc)) }
        return pid
    }

    // MARK: - small readers

    static func notChecked(_ name: String, _ why: String) -> KernelFeature {
        KernelFeature(name: name, ok: false, required: true, detail: "not checked: \(why)", fix: "fix the feature above first")
    }

    static func sysctl(_ path: String) -> String? {
        guard let text = try? ProcFS.readString(path) else { return nil }
        return String(text[...].trimmingSpaces().split(separator: "\n").first ?? "")
    }

    static func kernelRelease() -> String {
        sysctl("/proc/sys/kernel/osrelease") ?? "unknown"
    }

    /// Whether capability `bit` is in CapEff of /proc/self/status.
    static func hasCapability(_ bit: Int) -> Bool {
        guard let text = try? ProcFS.readString("/proc/self/status") else { return false }
        for line in text.split(separator: "\n") where line.hasPrefix("CapEff:") {
            guard let mask = UInt64(line.dropFirst("CapEff:".count).trimmingSpaces(), radix: 16) else { return false }
            return mask & (1 << UInt64(bit)) != 0
        }
        return false
    }
}

import CMemhaulLinux
import Glibc
import MemhaulSystem
import Testing
@testable import MemhaulKernel

/// Parent of every suite that attaches to processes, run one test at a time: some
/// tests inject faults into the process-wide syscall seam ("ptrace(SEIZE)",
/// "ioctl(UFFDIO_API)"), which must not hit a concurrent attach of another test.
@Suite(.serialized) struct AttachProcessTests {}

/// A child process spawned with posix_spawn (not Foundation.Process: its SIGCHLD
/// reaper could swallow our ptrace stops), with pipes on stdin and stdout.
final class AttachChild {
    let pid: pid_t
    private var stdinFD: Int32
    private let stdoutFD: Int32
    private var buffer: [UInt8] = []
    private var exitStatus: Int32?

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    init(_ args: [String], environment: [String: String] = [:]) throws {
        var inPipe: [Int32] = [0, 0]
        var outPipe: [Int32] = [0, 0]
        // O_CLOEXEC: children spawned concurrently by other tests must not inherit them.
        guard cmh_pipe2(&inPipe, O_CLOEXEC) == 0, cmh_pipe2(&outPipe, O_CLOEXEC) == 0 else {
            throw SystemError("pipe2", .current)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var env: [String: String] = [:]
        var e = environ
        while let p = e.pointee {
            let s = String(cString: p)
            if let eq = s.firstIndex(of: "=") { env[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            e += 1
        }
        env.merge(environment) { $1 }
        var envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { envp.forEach { free($0) } }
        // Test threads (libdispatch workers) block most signals and posix_spawn
        // would pass that mask on: give the child an empty mask and default actions.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, args[0], &actions, &attr, &argv, &envp)
        close(inPipe[0])
        close(outPipe[1])
        guard rc == 0 else {
            close(inPipe[1])
            close(outPipe[0])
            throw SystemError("posix_spawn(\(args[0]))", Errno(rawValue: rc))
        }
        self.pid = pid
        self.stdinFD = inPipe[1]
        self.stdoutFD = outPipe[0]
    }

    /// The next line of stdout (without newline); nil at end of file. Fails after
    /// `timeout` seconds so a broken target cannot hang the suite (a guard, not a timing check).
    func readLine(timeout: Int32 = 60) throws -> String? {
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeSubrange(...nl)
                return line
            }
            var pfd = pollfd(fd: stdoutFD, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, timeout * 1000)
            if ready == 0 { throw Failure(description: "PID \(pid): no output line within \(timeout) s") }
            if ready < 0 { if errno == EINTR { continue } else { throw SystemError("poll", .current) } }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(stdoutFD, &chunk, chunk.count)
            if n < 0 { if errno == EINTR { continue } else { throw SystemError("read", .current) } }
            if n == 0 {
                if buffer.isEmpty { return nil }
                let line = String(decoding: buffer, as: UTF8.self)
                buffer.removeAll()
                return line
            }
            buffer += chunk[0..<n]
        }
    }

    /// Reads lines until one starts with `prefix`; returns it.
    func expectLine(startingWith prefix: String) throws -> String {
        while let line = try readLine() {
            if line.hasPrefix(prefix) { return line }
        }
        throw Failure(description: "PID \(pid): end of output before a line starting with \(prefix)")
    }

    /// Reads lines until one contains `text`; returns it.
    func expectLine(containing text: String) throws -> String {
        while let line = try readLine() {
            if line.contains(text) { return line }
        }
        throw Failure(description: "PID \(pid): end of output before a line containing \(text)")
    }

    func write(_ text: String) throws { try writeRaw(Array(text.utf8)) }

    func writeRaw(_ data: [UInt8]) throws {
        var done = 0
        while done < data.count {
            let n = data.withUnsafeBytes { Glibc.write(stdinFD, $0.baseAddress! + done, $0.count - done) }
            if n < 0 { if errno == EINTR { continue } else { throw SystemError("write", .current) } }
            done += n
        }
    }

    func closeStdin() {
        if stdinFD >= 0 { close(stdinFD) }
        stdinFD = -1
    }

    /// waitpid for exit; returns the exit code, or 128+signal.
    @discardableResult
    func wait() -> Int32 {
        if let exitStatus { return exitStatus }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        exitStatus = code
        return code
    }

    func kill(_ sig: Int32 = SIGKILL) {
        if exitStatus == nil { Glibc.kill(pid, sig) }
    }

    deinit {
        closeStdin()
        if exitStatus == nil {
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        close(stdoutFD)
    }
}

enum AttachFixtures {
    /// The C test target, compiled once per test run (cc is in the build image).
    static let targetSource = #"""
        #define _GNU_SOURCE
        #include <errno.h>
        #include <pthread.h>
        #include <signal.h>
        #include <stdint.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <sys/mman.h>
        #include <time.h>
        #include <unistd.h>

        static double now(void) {
            struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
            return t.tv_sec + t.tv_nsec / 1e9;
        }

        /* busy: threads write their own pages in a loop, each page holding a counter
           in its first and last word; any tear or lost write fails the final check. */
        #define PAGE 4096
        static volatile int stop;
        static char *area;
        static long pagesPerThread;
        static void *writer(void *arg) {
            long id = (long)arg;
            uint64_t n = 0;
            while (!stop) {
                for (long p = 0; p < pagesPerThread; p++) {
                    uint64_t *w = (uint64_t *)(area + (id * pagesPerThread + p) * PAGE);
                    if (w[0] != n || w[PAGE / 8 - 1] != n) {
                        printf("torn page %ld: %lu %lu want %lu\n", p, (unsigned long)w[0], (unsigned long)w[PAGE / 8 - 1], (unsigned long)n);
                        fflush(stdout); exit(2);
                    }
                    w[0] = n + 1; w[PAGE / 8 - 1] = n + 1;
                }
                n++;
            }
            return (void *)(uintptr_t)n;
        }

        static void on_usr1(int sig, siginfo_t *si, void *ctx) {
            (void)sig; (void)ctx;
            char msg[64];
            int n = snprintf(msg, sizeof msg, "usr1 code=%d value=%d\n", si->si_code, si->si_value.sival_int);
            write(1, msg, n);
        }

        static void *echo_thread(void *arg) {
            (void)arg;
            char line[4096];
            for (;;) {
                ssize_t n = read(0, line, sizeof line - 1);
                if (n <= 0) exit(n == 0 ? 0 : 3);
                line[n] = 0;
                printf("got %s", line);
            }
        }

        int main(int argc, char **argv) {
            setvbuf(stdout, NULL, _IOLBF, 0);
            const char *mode = argc > 1 ? argv[1] : "";
            if (!strcmp(mode, "sleep")) {
                /* One nanosleep call: a botched restart returns early or with a strange errno. */
                double ms = atof(argv[2]);
                struct timespec ts = { (time_t)(ms / 1000), (long)((ms - 1000 * (long)(ms / 1000)) * 1e6) };
                double t0 = now();
                printf("ready %d\n", getpid());
                int rc = nanosleep(&ts, NULL);
                int e = errno;
                printf("slept %.0f rc=%d errno=%d\n", (now() - t0) * 1000, rc, rc ? e : 0);
                return 7;
            }
            if (!strcmp(mode, "read")) {
                /* Blocked in read(2) on a pipe; echoes each line. SIGUSR1 (SA_RESTART) says "usr1". */
                char line[4096];
                struct sigaction sa = { .sa_sigaction = on_usr1, .sa_flags = SA_RESTART | SA_SIGINFO };
                sigemptyset(&sa.sa_mask);
                sigaction(SIGUSR1, &sa, NULL);
                printf("ready %d\n", getpid());
                for (;;) {
                    ssize_t n = read(0, line, sizeof line - 1);
                    if (n == 0) return 0;
                    if (n < 0) { printf("read failed errno=%d\n", errno); return 3; }
                    line[n] = 0;
                    printf("got %s", line);
                }
            }
            if (!strcmp(mode, "zombieleader")) {
                /* main exits with pthread_exit: the leader is a zombie, a thread echoes stdin. */
                pthread_t t;
                pthread_create(&t, NULL, echo_thread, NULL);
                printf("ready %d\n", getpid());
                pthread_exit(NULL);
            }
            if (!strcmp(mode, "busy")) {
                int threads = atoi(argv[2]);
                pagesPerThread = atol(argv[3]);
                area = mmap(NULL, threads * pagesPerThread * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                pthread_t t[64];
                for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, writer, (void *)i);
                printf("ready %d %p\n", getpid(), area);
                char c;
                while (read(0, &c, 1) > 0) {}
                stop = 1;
                uint64_t total = 0;
                for (int i = 0; i < threads; i++) { void *r; pthread_join(t[i], &r); total += (uintptr_t)r; }
                printf("ok %lu\n", (unsigned long)total);
                return 0;
            }
            if (!strcmp(mode, "kwrite")) {
                /* The kernel writes into a (tracked) buffer: read(2) from stdin straight into it. */
                long pages = atol(argv[2]);
                unsigned char *buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                memset(buf, 0x11, pages * PAGE);
                printf("ready %d %p %ld\n", getpid(), buf, pages * PAGE);
                char cmd[64];
                /* Each command line "fill" is followed by exactly pages*PAGE bytes. */
                while (fgets(cmd, sizeof cmd, stdin)) {
                    size_t want = pages * PAGE, got = 0;
                    while (got < want) {
                        ssize_t n = fread(buf + got, 1, want - got, stdin);
                        if (n <= 0) { printf("short %zu\n", got); return 4; }
                        got += n;
                    }
                    unsigned long sum = 0;
                    for (size_t i = 0; i < want; i++) sum = sum * 31 + buf[i];
                    printf("sum %lu\n", sum);
                }
                return 0;
            }
            if (!strcmp(mode, "layout")) {
                /* Layout changes on command: map N | unmap A N | mremap A OLD NEW | protect A N r|rw|none | touch A N */
                char cmd[256];
                printf("ready %d\n", getpid());
                while (fgets(cmd, sizeof cmd, stdin)) {
                    char op[16], prot[8]; unsigned long a, n, m;
                    if (sscanf(cmd, "map %lu", &n) == 1) {
                        void *p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                        printf("at %p\n", p);
                    } else if (sscanf(cmd, "unmap %lx %lu", &a, &n) == 2) {
                        printf("rc %d\n", munmap((void *)a, n * PAGE));
                    } else if (sscanf(cmd, "mremap %lx %lu %lu", &a, &n, &m) == 3) {
                        /* Reserve a fresh spot first so the move really moves. */
                        void *dst = mmap(NULL, m * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                        void *p = mremap((void *)a, n * PAGE, m * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
                        printf("at %p\n", p);
                    } else if (sscanf(cmd, "protect %lx %lu %7s", &a, &n, prot) == 3) {
                        int pr = !strcmp(prot, "rw") ? PROT_READ | PROT_WRITE : !strcmp(prot, "none") ? PROT_NONE : PROT_READ;
                        printf("rc %d\n", mprotect((void *)a, n * PAGE, pr));
                    } else if (sscanf(cmd, "touch %lx %lu", &a, &n) == 2) {
                        for (unsigned long i = 0; i < n; i++) ((volatile char *)a)[i * PAGE] += 1;
                        printf("rc 0\n");
                    } else {
                        (void)op; printf("bad command\n");
                    }
                }
                return 0;
            }
            fprintf(stderr, "unknown mode %s\n", mode);
            return 1;
        }
        """#

    static let compiled: Result<String, AttachChild.Failure> = {
        let dir = "/tmp/memhaul-attach-tests-\(getpid())"
        mkdir(dir, 0o755)
        let source = dir + "/target.c"
        let binary = dir + "/target"
        guard let f = fopen(source, "w") else { return .failure(.init(description: "cannot write \(source)")) }
        fputs(targetSource, f)
        fclose(f)
        // cc (gcc) if installed, else the clang that ships with the Swift toolchain.
        var failures: [String] = []
        for compiler in ["cc", "clang"] {
            guard let cc = try? AttachChild([compiler, "-O1", "-pthread", "-o", binary, source]) else {
                failures.append("cannot run \(compiler)")
                continue
            }
            while (try? cc.readLine()) ?? nil != nil {}
            let rc = cc.wait()
            if rc == 0 { return .success(binary) }
            failures.append("\(compiler) failed with \(rc)")
        }
        return .failure(.init(description: failures.joined(separator: "; ")))
    }()

    static func target() throws -> String { try compiled.get() }

    /// Entries of /proc/PID/fd that are userfaultfds.
    static func userfaultfds(of pid: pid_t) -> [String] {
        guard let dir = opendir("/proc/\(pid)/fd") else { return [] }
        defer { closedir(dir) }
        var out: [String] = []
        while let ent = readdir(dir) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            var buf = [CChar](repeating: 0, count: 256)
            let n = readlink("/proc/\(pid)/fd/\(name)", &buf, buf.count - 1)
            guard n > 0 else { continue }
            let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if target.contains("userfaultfd") { out.append("\(name) -> \(target)") }
        }
        return out
    }

    /// VMAs of PID whose smaps VmFlags carry `uw`.
    static func uffdWPMappings(of pid: pid_t) throws -> [AddressRange] {
        try ProcMaps.readFlags(pid: pid).filter { $0.value.contains(.uffdWriteProtect) }.map(\.key).sorted()
    }

    /// The state letter of /proc/PID/stat.
    static func state(of pid: pid_t) -> Character? { ProcFS.state(pid: pid) }

    /// Waits (polling /proc, bounded) until PID is blocked in a system call whose
    /// number is in `syscalls` per /proc/PID/syscall: the event the sleep/read tests need.
    static func waitUntilBlocked(_ pid: pid_t, in syscalls: Set<Int>) throws {
        for _ in 0..<20_000 {
            if let text = try? ProcFS.readString("/proc/\(pid)/syscall"),
                let first = text.split(separator: " ").first, let nr = Int(first), syscalls.contains(nr),
                state(of: pid) == "S"
            {
                return
            }
            usleep(1000)
        }
        throw AttachChild.Failure(description: "PID \(pid) never blocked in \(syscalls)")
    }
}

import CMemhaulLinux
import Glibc
import MemhaulSystem
import Testing
@testable import MemhaulKernel
import MemhaulTestSupport

/// Parent of every suite that attaches to processes.
@Suite struct AttachProcessTests {}

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

    static let compiled = compileCProgram(targetSource, name: "attach-target", flags: ["-O1", "-pthread"])

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
        throw TestSetupError("PID \(pid) never blocked in \(syscalls)")
    }
}

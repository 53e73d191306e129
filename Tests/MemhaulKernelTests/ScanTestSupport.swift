import CMemhaulLinux
import MemhaulKernel
import MemhaulSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct TestSetupError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A userfaultfd in the test process with async WP (the tests' own memory is the target).
final class TestUffd {
    let fd: Int32
    init() throws {
        fd = cmh_userfaultfd(O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw TestSetupError("userfaultfd: \(Errno.current)") }
        var api = uffdio_api()
        api.api = cmh_UFFD_API
        api.features = cmh_UFFD_FEATURE_WP_ASYNC | cmh_UFFD_FEATURE_WP_UNPOPULATED
        guard cmh_ioctl_ptr(fd, cmh_UFFDIO_API, &api) == 0 else { throw TestSetupError("UFFDIO_API: \(Errno.current)") }
    }
    func register(_ base: UnsafeMutableRawPointer, _ length: Int) throws {
        var reg = uffdio_register()
        reg.range.start = UInt64(UInt(bitPattern: base))
        reg.range.len = UInt64(length)
        reg.mode = cmh_UFFDIO_REGISTER_MODE_WP
        guard cmh_ioctl_ptr(fd, cmh_UFFDIO_REGISTER, &reg) == 0 else {
            throw TestSetupError("UFFDIO_REGISTER: \(Errno.current)")
        }
    }
    deinit { close(fd) }
}

/// An anonymous mapping of the test process, optionally registered for async WP.
final class TestArea: @unchecked Sendable {  // raw memory shared with writer threads on purpose
    let base: UnsafeMutableRawPointer
    let length: Int
    let mapping: UnsafeMutableRawPointer
    let mappingLength: Int
    var pages: Int { length / 4096 }

    /// `alignment` > 4096 over-maps and trims nothing: the area starts aligned inside the mapping.
    init(pages: Int, uffd: TestUffd?, thp: Bool = false, alignment: Int = 4096) throws {
        length = pages * 4096
        mappingLength = length + alignment
        guard let m = mmap(nil, mappingLength, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            m != MAP_FAILED
        else { throw TestSetupError("mmap: \(Errno.current)") }
        mapping = m
        let a = (UInt(bitPattern: m) + UInt(alignment) - 1) & ~(UInt(alignment) - 1)
        base = UnsafeMutableRawPointer(bitPattern: a)!
        madvise(mapping, mappingLength, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)
        if let uffd { try uffd.register(base, length) }
    }
    deinit { munmap(mapping, mappingLength) }

    var start: UInt64 { UInt64(UInt(bitPattern: base)) }
    var range: AddressRange { AddressRange(start: start, end: start + UInt64(length)) }
    func page(_ i: Int) -> AddressRange { AddressRange(start: start + UInt64(i) * 4096, pages: 1) }
    func pages(_ r: Range<Int>) -> AddressRange { AddressRange(start: start + UInt64(r.lowerBound) * 4096, pages: r.count) }

    /// Changes a byte of page `i` (a write fault when protected).
    func write(_ i: Int, _ value: UInt8 = 0xA5) {
        let p = (base + i * 4096 + 8).assumingMemoryBound(to: UInt8.self)
        p.pointee = p.pointee &+ value
    }
    func read(_ i: Int) -> UInt8 {
        (base + i * 4096 + 8).assumingMemoryBound(to: UInt8.self).pointee
    }
    func discard(_ r: Range<Int>) {
        madvise(base + r.lowerBound * 4096, r.count * 4096, MADV_DONTNEED)
    }
    /// Page indices of a range list, restricted to this area.
    func indices(_ ranges: [AddressRange]) -> Set<Int> {
        var out = Set<Int>()
        for r in ranges.intersecting([range]) {
            var a = r.start
            while a < r.end {
                out.insert(Int((a - start) / 4096))
                a += 4096
            }
        }
        return out
    }
}

func selfScanner(vectorCapacity: Int = 1 << 16) throws -> PagemapScanner {
    PagemapScanner(pagemap: try FileDescriptor.open("/proc/self/pagemap", O_RDONLY), vectorCapacity: vectorCapacity)
}

/// Deterministic PRNG for tests (xorshift64*).
struct TestRNG {
    var state: UInt64
    init(seed: UInt64) { state = seed | 1 }
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 2_685_821_657_736_338_717
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// Runs `body(i)` on `count` pthreads and joins them.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Box: @unchecked Sendable {  // handed to one pthread, read-only
        let body: @Sendable (Int) -> Void
        let index: Int
        init(_ b: @escaping @Sendable (Int) -> Void, _ i: Int) { body = b; index = i }
    }
    var threads: [pthread_t] = []
    for i in 0..<count {
        var t = pthread_t()
        let box = Unmanaged.passRetained(Box(body, i)).toOpaque()
        pthread_create(&t, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body(b.index)
            return nil
        }, box)
        threads.append(t)
    }
    for t in threads { pthread_join(t, nil) }
}

// MARK: Child processes

/// A spawned child with line-oriented stdin/stdout pipes.
final class TestChild {
    let pid: pid_t
    let input: Int32
    let output: Int32
    private var pending: [UInt8] = []
    private(set) var reaped = false

    init(_ path: String, _ args: [String], env: [String]? = nil) throws {
        var toChild: [Int32] = [0, 0]
        var fromChild: [Int32] = [0, 0]
        guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else {
            throw TestSetupError("pipe: \(Errno.current)")
        }
        // pipe2 is not imported without _GNU_SOURCE; close-on-exec right after.
        for fd in toChild + fromChild { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        // Test runner threads block signals; the child starts with none blocked.
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK))
        let argv = ([path] + args).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var envp: [UnsafeMutablePointer<CChar>?] = []
        if let env { envp = env.map { strdup($0) } + [nil] }
        defer { envp.forEach { free($0) } }
        var p: pid_t = 0
        let rc = env == nil
            ? posix_spawn(&p, path, &actions, &attr, argv, environ)
            : posix_spawn(&p, path, &actions, &attr, argv, envp)
        close(toChild[0])
        close(fromChild[1])
        guard rc == 0 else {
            close(toChild[1])
            close(fromChild[0])
            throw TestSetupError("posix_spawn \(path): \(Errno(rawValue: rc))")
        }
        pid = p
        input = toChild[1]
        output = fromChild[0]
    }

    func send(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(input, $0.baseAddress, $0.count) }
    }

    /// One line from stdout, nil at end of file.
    func readLine() -> String? {
        while true {
            if let nl = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeFirst(nl + 1)
                return line
            }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = buf.withUnsafeMutableBytes { read(output, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            pending += buf[..<n]
        }
    }

    func closeInput() { close(input) }

    /// Waits until it has exited without reaping it (pid stays valid).
    func waitExitedNoReap() {
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
    }

    @discardableResult
    func wait() -> Int32 {
        guard !reaped else { return 0 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        reaped = true
        return status
    }

    deinit {
        if !reaped {
            kill(pid, SIGKILL)
            wait()
        }
        close(input)
        close(output)
    }
}

/// Runs a command to completion; returns its exit status.
func runCommand(_ path: String, _ args: [String]) throws -> Int32 {
    var p: pid_t = 0
    let argv = ([path] + args).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    let rc = posix_spawnp(&p, path, nil, nil, argv, environ)
    guard rc == 0 else { throw TestSetupError("posix_spawn \(path): \(Errno(rawValue: rc))") }
    var status: Int32 = 0
    while waitpid(p, &status, 0) < 0 && errno == EINTR {}
    return status
}

/// A C target program compiled once per test run: it creates its own uffd,
/// registers its own memory for async WP, prints `READY <hex addr> <pages>`,
/// then obeys stdin commands (`w I`, `f I V`, `d I`, `u I`, `q`), answering `ok`.
enum ForeignTarget {
    static let source = #"""
        #define _GNU_SOURCE
        #include <stdio.h>
        #include <stdlib.h>
        #include <stdint.h>
        #include <string.h>
        #include <fcntl.h>
        #include <unistd.h>
        #include <sys/mman.h>
        #include <sys/ioctl.h>
        #include <sys/syscall.h>
        #include <linux/userfaultfd.h>
        #ifndef UFFD_FEATURE_WP_UNPOPULATED
        #define UFFD_FEATURE_WP_UNPOPULATED (1ULL<<13)
        #endif
        #ifndef UFFD_FEATURE_WP_ASYNC
        #define UFFD_FEATURE_WP_ASYNC (1ULL<<15)
        #endif
        int main(int argc, char **argv) {
            long pages = atol(argv[1]);
            int track = argc > 2 && argv[2][0] == '1';
            size_t len = pages * 4096;
            char *m = mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0);
            if (m == MAP_FAILED) return 2;
            madvise(m, len, MADV_NOHUGEPAGE);
            if (track) {
                int uffd = syscall(SYS_userfaultfd, O_CLOEXEC|O_NONBLOCK);
                struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_UNPOPULATED|UFFD_FEATURE_WP_ASYNC};
                if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) return 3;
                struct uffdio_register reg = {.range = {.start = (uint64_t)m, .len = len}, .mode = UFFDIO_REGISTER_MODE_WP};
                if (ioctl(uffd, UFFDIO_REGISTER, &reg)) return 4;
            }
            setvbuf(stdout, NULL, _IOLBF, 0);
            printf("READY %lx %ld\n", (unsigned long)m, pages);
            char line[128];
            while (fgets(line, sizeof line, stdin)) {
                long i = 0, v = 0;
                char c = line[0];
                sscanf(line + 1, "%ld %ld", &i, &v);
                if (c == 'q') return 0;
                if (c == 'w') m[i * 4096 + 8]++;
                if (c == 'f') memset(m + i * 4096, (int)v, 4096);
                if (c == 'd') madvise(m + i * 4096, 4096, MADV_DONTNEED);
                if (c == 'u') munmap(m + i * 4096, 4096);
                printf("ok\n");
            }
            return 0;
        }
        """#

    /// Path of the compiled target (compiled on first use).
    static let path: Result<String, TestSetupError> = {
        let dir = "/tmp/memhaul-scan-tests-\(getpid())"
        mkdir(dir, 0o700)
        let src = dir + "/target.c"
        let exe = dir + "/target"
        guard let f = fopen(src, "w") else { return .failure(TestSetupError("cannot write \(src)")) }
        fputs(source, f)
        fclose(f)
        // cc if installed, else the clang that ships with the Swift toolchain.
        let built = ["cc", "clang"].contains { compiler in
            (try? runCommand(compiler, ["-O2", "-o", exe, src])) == 0
        }
        guard built else { return .failure(TestSetupError("neither cc nor clang built the foreign test target")) }
        return .success(exe)
    }()

    /// Spawns the target; returns it and its region.
    static func spawn(pages: Int, track: Bool) throws -> (TestChild, AddressRange) {
        let child = try TestChild(try path.get(), [String(pages), track ? "1" : "0"])
        guard let line = child.readLine() else { throw TestSetupError("foreign target died before READY") }
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[0] == "READY", let addr = UInt64(parts[1], radix: 16) else {
            throw TestSetupError("bad READY line: \(line)")
        }
        return (child, AddressRange(start: addr, pages: pages))
    }

    /// Sends a command and waits for its `ok`.
    static func command(_ child: TestChild, _ line: String) throws {
        child.send(line)
        guard child.readLine() == "ok" else { throw TestSetupError("foreign target did not answer \(line)") }
    }
}

import CMemhaulLinux
import MemhaulKernel
import MemhaulSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif
import MemhaulTestSupport

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
    static let path = compileCProgram(source, name: "scan-target", flags: ["-O2"])

    /// Spawns the target; returns it and its region.
    static func spawn(pages: Int, track: Bool) throws -> (ChildProcess, AddressRange) {
        let child = try ChildProcess([try path.get(), String(pages), track ? "1" : "0"])
        guard let line = try child.readLine() else { throw TestSetupError("foreign target died before READY") }
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[0] == "READY", let addr = UInt64(parts[1], radix: 16) else {
            throw TestSetupError("bad READY line: \(line)")
        }
        return (child, AddressRange(start: addr, pages: pages))
    }

    /// Sends a command and waits for its `ok`.
    static func command(_ child: ChildProcess, _ line: String) throws {
        child.send(line)
        guard try child.readLine() == "ok" else { throw TestSetupError("foreign target did not answer \(line)") }
    }
}

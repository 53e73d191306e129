// Control commands that change the process the way real programs do:
// brk growth and shrinkage, threads started and stopped, fork, swap-out and
// swap-in (ARCHITECTURE.md, "Workload control protocol").
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// MADV_PAGEOUT (Linux 5.4): reclaim the pages now (to swap for anonymous memory).
let madvPageout: Int32 = 21

/// State of the commands below; touched only by the control (main) thread,
/// except `stop`, which the spawned threads read.
final class ChangeState: @unchecked Sendable {  // see above: one writer thread, `stop` is atomic
    /// `[brkBase, brkTop)`: the part of the heap `brk` grew and may shrink.
    var brkBase: UInt64 = 0
    var brkTop: UInt64 = 0
    /// Grows so far (seeds each growth's content apart from the last).
    var brkGrowths: UInt64 = 0
    /// Threads started by `threads`, joined by `threads stop`.
    var threads: [pthread_t] = []
    let stop = Atomic<Bool>(false)
    /// Stack bytes the spawned threads wrote (keeps those writes observable).
    let stackSum = Atomic<UInt64>(0)
    /// Children of `fork … stay`.
    var children: [pid_t] = []
}

extension Workload {
    /// `brk LEN [PAGES]` grows the break by LEN and fills the first PAGES new
    /// pages (all by default; the rest stay untouched); `brk -LEN`
    /// shrinks it back (only the part `brk` grew, and only while the break is
    /// still where `brk` left it: malloc owns the rest). Answers the grown or
    /// released range.
    func brkCommand(_ words: [String]) throws -> String {
        let shrink = words.count > 1 && words[1].hasPrefix("-")
        guard words.count == 2 || (words.count == 3 && !shrink) else { throw CommandError(message: "brk: need LEN [PAGES] or -LEN") }
        guard let length = Options.parseSize(shrink ? String(words[1].dropFirst()) : words[1]), length > 0, length % 4096 == 0 else {
            throw CommandError(message: "brk: LEN must be a positive multiple of 4096")
        }
        let current = UInt64(UInt(bitPattern: sbrk(0)))
        let s = changes
        if shrink {
            guard s.brkTop == current, s.brkTop > s.brkBase else {
                throw CommandError(message: "brk: the break is at \(hex(current)), not where brk left it (\(hex(s.brkTop)))")
            }
            guard length <= s.brkTop - s.brkBase else {
                throw CommandError(message: "brk: can shrink at most \(s.brkTop - s.brkBase) bytes (what brk grew)")
            }
            let released = Region(start: s.brkTop - length, end: s.brkTop)
            gate.pause()
            defer { gate.resume() }
            guard sbrk(-Int(length)) != UnsafeMutableRawPointer(bitPattern: -1) else {
                throw CommandError(message: "sbrk(-\(length)): \(String(cString: strerror(errno)))")
            }
            s.brkTop = released.start
            registry.withLock { $0 = subtract($0, released) }
            readOnly = subtract(readOnly, released)
            return ok("\"start\":\"\(hex(released.start))\",\"end\":\"\(hex(released.end))\"")
        }
        let fill = words.count > 2 ? Int(words[2]) : Int(length / 4096)
        guard let fill, fill >= 0 else { throw CommandError(message: "brk: bad PAGES") }
        // Grow from a page boundary, so the new pages are ours alone.
        let aligned = (current + 4095) & ~4095
        guard sbrk(Int(aligned - current + length)) != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw CommandError(message: "sbrk(\(length)): \(String(cString: strerror(errno)))")
        }
        if s.brkTop != current || s.brkTop == 0 { s.brkBase = aligned }  // someone else moved the break: a new area
        let grown = Region(start: aligned, end: aligned + length)
        s.brkTop = grown.end
        s.brkGrowths += 1
        var rng = XorShift(seed: grown.start ^ s.brkGrowths)
        var a = grown.start
        while a < min(grown.end, grown.start + UInt64(fill) * 4096) {
            Content.fillText(UnsafeMutableRawPointer(bitPattern: UInt(a))!, &rng)
            a += 4096
        }
        registry.withLock { $0 = adding($0, grown) }
        return ok("\"start\":\"\(hex(grown.start))\",\"end\":\"\(hex(grown.end))\"")
    }

    /// `threads N PAGES` starts N threads; each maps PAGES pages of its own,
    /// fills them, then keeps rewriting one of them and 16 KiB of its stack
    /// about every millisecond (scribbleStack). Answers once all have written, with their
    /// regions. `threads stop` ends them all (their stacks stay cached by glibc
    /// or are unmapped) and answers how many stopped.
    func threadsCommand(_ words: [String]) throws -> String {
        let s = changes
        if words.count == 2, words[1] == "stop" {
            guard !gate.isPaused else { throw CommandError(message: "threads stop: resume first (the threads are parked)") }
            s.stop.store(true, ordering: .releasing)
            for t in s.threads { pthread_join(t, nil) }
            let n = s.threads.count
            s.threads = []
            s.stop.store(false, ordering: .releasing)
            return ok("\"threads\":\(n)")
        }
        guard words.count == 3, let n = Int(words[1]), n >= 1, n <= 64, let pages = Int(words[2]), pages >= 1 else {
            throw CommandError(message: "threads: need N (1…64) and PAGES, or stop")
        }
        let started = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
        sem_init(started, 0, 0)
        defer {
            sem_destroy(started)
            started.deallocate()
        }
        var regions: [Region] = []
        for k in 0..<n {
            let p = try mapAnonymous(pages * 4096, thp: nil)
            let r = Region(start: UInt64(UInt(bitPattern: p)), end: UInt64(UInt(bitPattern: p)) + UInt64(pages * 4096))
            registry.withLock { $0 = adding($0, r) }
            regions.append(r)
            gate.join()
            let seed = r.start ^ UInt64(k + 1)
            let sem = UInt(bitPattern: started)
            s.threads.append(spawnJoinableThread { [self] in
                spawnedWriter(r, seed: seed, started: UnsafeMutablePointer<sem_t>(bitPattern: sem)!)
            })
        }
        for _ in 0..<n { while sem_wait(started) != 0 && errno == EINTR {} }
        return ok("\"threads\":\(s.threads.count),\"regions\":[\(regions.map(\.json).joined(separator: ","))]")
    }

    private func spawnedWriter(_ r: Region, seed: UInt64, started: UnsafeMutablePointer<sem_t>) {
        var rng = XorShift(seed: seed)
        let pages = r.length / 4096
        for k in 0..<pages { Content.fillText(UnsafeMutableRawPointer(bitPattern: UInt(r.start) + UInt(k * 4096))!, &rng) }
        sem_post(started)
        var sum: UInt64 = 0
        while !changes.stop.load(ordering: .acquiring) {
            if gate.requested.load(ordering: .acquiring) {
                gate.park()
                continue
            }
            Content.mutate(UnsafeMutableRawPointer(bitPattern: UInt(r.start) + UInt(rng.below(pages) * 4096))!, kind: .text, &rng)
            writes.add(1, ordering: .relaxed)
            sum &+= scribbleStack(31, rng.next())
            gate.sleep(untilNanoseconds: nowNanoseconds() + 1_000_000)
        }
        changes.stackSum.wrappingAdd(sum, ordering: .relaxed)
        gate.leave()
    }

    /// `fork PAGES exit|stay`: the child rewrites PAGES main pages (spread over
    /// the main regions) with fresh random content — its own copy-on-write
    /// copies — then exits (`exit`, reaped before the answer) or keeps
    /// rewriting one of them about every millisecond until this process dies
    /// (`stay`). Answers `"child"` once the child's first writes are done, and
    /// `"first"`, the first page it wrote (main page 0).
    func forkCommand(_ words: [String]) throws -> String {
        guard words.count == 3, let pages = Int(words[1]), pages >= 1, words[2] == "exit" || words[2] == "stay" else {
            throw CommandError(message: "fork: need PAGES and exit|stay")
        }
        let stay = words[2] == "stay"
        let stride = max(1, totalPages / pages)
        var fds: [Int32] = [-1, -1]
        _ = try sys("pipe") { pipe(&fds) }
        let parent = getpid()
        let child = fork()
        if child == 0 {
            // Only async-signal-safe work here: the other threads are gone, and
            // any lock they held stays held. No allocation, no lazy globals.
            close(fds[0])
            close(0)
            close(1)
            var rng = XorShift(seed: 0xC41D ^ UInt64(getpid()))
            var targets = 0
            for k in 0..<pages where k * stride < totalPages && alive[k * stride] == 1 {
                Content.fillRandom(page(k * stride), &rng)
                targets += 1
            }
            var byte: UInt8 = 1
            _ = Glibc.write(fds[1], &byte, 1)
            close(fds[1])
            guard stay, targets > 0 else { _exit(0) }
            var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)
            while getppid() == parent {
                let i = rng.below(pages) * stride
                if i < totalPages && alive[i] == 1 { Content.fillRandom(page(i), &rng) }
                nanosleep(&ts, nil)
            }
            _exit(0)
        }
        close(fds[1])
        defer { close(fds[0]) }
        guard child > 0 else { throw CommandError(message: "fork: \(String(cString: strerror(errno)))") }
        var byte: UInt8 = 0
        while Glibc.read(fds[0], &byte, 1) < 0 && errno == EINTR {}
        if stay {
            changes.children.append(child)
        } else {
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        }
        return ok("\"child\":\(child),\"pages\":\(pages),\"first\":\"\(hex(UInt64(UInt(bitPattern: page(0)))))\"")
    }

    /// `stack KB`: rewrites about KB KiB of the control (main) thread's stack,
    /// growing the `[stack]` mapping downwards the first time it goes deeper.
    func stackCommand(_ words: [String]) throws -> String {
        guard words.count == 2, let kb = Int(words[1]), kb >= 1, kb <= 2048 else {
            throw CommandError(message: "stack: need KB (1…2048)")
        }
        return ok("\"sum\":\(scribbleStack(kb * 2 - 1, UInt64(kb)))")
    }

    /// `spawn N`: runs /bin/true N times with posix_spawn (glibc: clone with
    /// CLONE_VM|CLONE_VFORK on a stack it maps and unmaps: the child runs in
    /// this address space until it execs) and reaps each.
    func spawnCommand(_ words: [String]) throws -> String {
        guard words.count == 2, let n = Int(words[1]), n >= 1, n <= 100 else { throw CommandError(message: "spawn: need N (1…100)") }
        let path = "/bin/true"
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup(path), nil]
        defer { free(argv[0]) }
        for _ in 0..<n {
            var child: pid_t = 0
            let rc = posix_spawn(&child, path, nil, nil, &argv, environ)
            guard rc == 0 else { throw CommandError(message: "posix_spawn: \(String(cString: strerror(rc)))") }
            var status: Int32 = 0
            while waitpid(child, &status, 0) < 0 && errno == EINTR {}
        }
        return ok("\"spawned\":\(n)")
    }

    /// `read ADDR PAGES`: reads one word of each page (faults swapped-out pages
    /// back in without writing them). Answers their sum.
    func readCommand(_ words: [String]) throws -> String {
        let a = try address(words, 1) & ~4095
        guard words.count > 2, let pages = Int(words[2]), pages >= 0 else { throw CommandError(message: "read: need PAGES") }
        let end = a + UInt64(pages) * 4096
        let regions = registry.withLock { $0 }
        guard regions.contains(where: { a >= $0.start && end <= $0.end }) || pages == 0 else {
            throw CommandError(message: "read: \(hex(a))+\(pages) pages is not inside one workload region")
        }
        var sum: UInt64 = 0
        var p = a
        while p < end {
            sum &+= UnsafeRawPointer(bitPattern: UInt(p))!.load(as: UInt64.self)
            p += 4096
        }
        return ok("\"sum\":\(sum)")
    }

    /// `mapfile PATH LEN private|memfd`: LEN bytes of text-like content (never
    /// a zero page) written with write(2) to a new file at PATH (created or
    /// truncated) or to a memfd named PATH, then mapped MAP_PRIVATE read-write
    /// and the descriptor closed. The pages are not touched: `read` faults them
    /// in as clean page-cache pages, `write` makes copy-on-write copies. The
    /// region joins the workload's regions (digest, read, write). Answers
    /// `"start"`/`"end"`. The test unlinks or replaces the file itself.
    func mapfileCommand(_ words: [String]) throws -> String {
        guard words.count == 4, ["private", "memfd"].contains(words[3]) else {
            throw CommandError(message: "mapfile: need PATH LEN private|memfd")
        }
        guard let length = Options.parseSize(words[2]), length > 0, length % 4096 == 0 else {
            throw CommandError(message: "mapfile: LEN must be a positive multiple of 4096")
        }
        let path = words[1]
        let fd: Int32
        if words[3] == "memfd" {
            // glibc declares memfd_create only under _GNU_SOURCE, which Swift's Glibc lacks.
            typealias MemfdCreate = @convention(c) (UnsafePointer<CChar>, UInt32) -> Int32
            guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "memfd_create") else {
                throw CommandError(message: "mapfile: no memfd_create in libc")
            }
            fd = try sys("memfd_create") { unsafeBitCast(symbol, to: MemfdCreate.self)(path, 1 /* MFD_CLOEXEC */) }
        } else {
            fd = try sys("open \(path)") { open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) }
        }
        defer { close(fd) }
        var rng = XorShift(seed: length ^ 0x6d61_7066)
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        for _ in 0..<(length / 4096) {
            Content.fillText(page, &rng)
            var done = 0
            while done < 4096 {
                let n = Glibc.write(fd, page + done, 4096 - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw CommandError(message: "write \(path): \(String(cString: strerror(errno)))") }
                done += n
            }
        }
        guard let p = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw CommandError(message: "mmap \(path): \(String(cString: strerror(errno)))")
        }
        let r = Region(start: UInt64(UInt(bitPattern: p)), end: UInt64(UInt(bitPattern: p)) + length)
        registry.withLock { $0 = adding($0, r) }
        return ok("\"start\":\"\(hex(r.start))\",\"end\":\"\(hex(r.end))\"")
    }

    /// `pageout ADDR LEN`: MADV_PAGEOUT; answers VmSwap of this process afterwards.
    func pageoutCommand(_ words: [String]) throws -> String {
        let (a, len) = try (address(words, 1), size(words, 2))
        _ = try sys("madvise(MADV_PAGEOUT)") { madvise(UnsafeMutableRawPointer(bitPattern: UInt(a)), Int(len), madvPageout) }
        return ok("\"vm_swap_kb\":\(Self.statusField("VmSwap") ?? -1)")
    }

    /// A `kB` field of /proc/self/status.
    static func statusField(_ name: String) -> Int? {
        let fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes += chunk[..<n]
        }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix(name + ":") {
            return Int(line.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
        }
        return nil
    }
}

private typealias Block = (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)
private typealias Frame = (Block, Block, Block, Block, Block, Block, Block, Block)

/// Rewrites 512 bytes in each of `depth + 1` stack frames (16 KiB for 31):
/// a local tuple lives in the frame, unlike withUnsafeTemporaryAllocation,
/// which goes to the heap on threads other than the main one.
@inline(never) private func scribbleStack(_ depth: Int, _ seed: UInt64) -> UInt64 {
    let zero: Block = (0, 0, 0, 0, 0, 0, 0, 0)
    var frame: Frame = (zero, zero, zero, zero, zero, zero, zero, zero)
    var s = seed
    let picked = withUnsafeMutableBytes(of: &frame) { bytes in
        let words = bytes.bindMemory(to: UInt64.self)
        for i in 0..<words.count {
            s = s &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            words[i] = s
        }
        return words[Int(s >> 58)]
    }
    return depth == 0 ? picked : picked &+ scribbleStack(depth - 1, s)
}

/// Starts a joinable pthread running `body`.
func spawnJoinableThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box: @unchecked Sendable {  // handed to exactly one thread
        let body: @Sendable () -> Void
        init(_ b: @escaping @Sendable () -> Void) { body = b }
    }
    var t = pthread_t()
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    pthread_create(&t, nil, { arg in
        Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, box)
    return t
}

import MemhaulDigest
import MemhaulSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A mapped address range `[start, end)` the workload owns.
struct Region: Hashable, Comparable {
    var start: UInt64
    var end: UInt64
    static func < (a: Region, b: Region) -> Bool { a.start < b.start }
    var length: Int { Int(end - start) }
    var json: String { "{\"start\":\"\(hex(start))\",\"end\":\"\(hex(end))\"}" }
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

/// `list` minus `cut` (sorted, disjoint).
func subtract(_ list: [Region], _ cut: Region) -> [Region] {
    var out: [Region] = []
    for r in list {
        if cut.end <= r.start || cut.start >= r.end {
            out.append(r)
            continue
        }
        if r.start < cut.start { out.append(Region(start: r.start, end: cut.start)) }
        if cut.end < r.end { out.append(Region(start: cut.end, end: r.end)) }
    }
    return out
}

/// `list` plus `add`, merged, sorted.
func adding(_ list: [Region], _ add: Region) -> [Region] {
    var all = subtract(list, add) + [add]
    all.sort()
    var out: [Region] = []
    for r in all {
        if let last = out.last, last.end == r.start {
            out[out.count - 1].end = r.end
        } else {
            out.append(r)
        }
    }
    return out
}

/// Maps `length` bytes of anonymous memory, 2 MiB-aligned when `thp` is on.
func mapAnonymous(_ length: Int, thp: Bool?) throws(SystemError) -> UnsafeMutableRawPointer {
    let huge = 2 << 20
    let aligned = thp == true
    let total = aligned ? length + huge : length
    let raw = try Syscall.run("mmap") { () -> Int in
        let p = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        return p == MAP_FAILED ? -1 : Int(bitPattern: p)
    }
    var base = UInt(bitPattern: raw)
    if aligned {
        let a = (base + UInt(huge) - 1) & ~UInt(huge - 1)
        if a > base { munmap(UnsafeMutableRawPointer(bitPattern: base), Int(a - base)) }
        let tail = base + UInt(total) - (a + UInt(length))
        if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: a + UInt(length)), Int(tail)) }
        base = a
    }
    let p = UnsafeMutableRawPointer(bitPattern: base)!
    if let thp { madvise(p, length, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) }
    return p
}

/// The workload process: main regions with known content, writer threads,
/// churn, digests and the control protocol.
final class Workload: @unchecked Sendable {  // threads share raw memory; `alive`/`readOnly` change only while the gate holds every thread
    let options: Options
    let gate = Gate()
    let writes = Atomic<Int>(0)
    /// `--eintr-probe`: the blocking threads and their EINTR counts.
    lazy var probe = EINTRProbe(kinds: options.eintrProbes)
    /// Every region to digest, sorted.
    let registry: Mutex<[Region]>
    let mainBase: [UInt64]
    let pagesPerRegion: Int
    let totalPages: Int
    /// Per main page: 1 when writers may write it.
    let alive: UnsafeMutablePointer<UInt8>
    let kinds: UnsafeMutablePointer<UInt8>
    /// Ranges mprotect'ed read-only (refused by `write`).
    var readOnly: [Region] = []
    private var userPaused = 0
    /// State of brk, threads, fork (Changes.swift).
    let changes = ChangeState()

    init(options: Options) throws {
        self.options = options
        let pages = max(1, Int((options.size + 4095) / 4096))
        pagesPerRegion = max(1, pages / options.regions)
        totalPages = pagesPerRegion * options.regions
        alive = .allocate(capacity: totalPages)
        alive.initialize(repeating: 1, count: totalPages)
        kinds = .allocate(capacity: totalPages)
        var bases: [UInt64] = []
        var regions: [Region] = []
        for _ in 0..<options.regions {
            let p = try mapAnonymous(pagesPerRegion * 4096, thp: options.thp)
            let s = UInt64(UInt(bitPattern: p))
            bases.append(s)
            regions.append(Region(start: s, end: s + UInt64(pagesPerRegion * 4096)))
        }
        mainBase = bases
        // Adjacent regions are merged, as the kernel merges their VMAs.
        registry = Mutex(regions.reduce(into: []) { $0 = adding($0, $1) })
        var rng = XorShift(seed: options.seed)
        for i in 0..<totalPages {
            let k = Content.kind(index: i, seed: options.seed, mix: options.mix)
            kinds[i] = k.rawValue
            switch k {
            case .zero: break
            case .text: Content.fillText(page(i), &rng)
            case .random: Content.fillRandom(page(i), &rng)
            }
        }
    }

    @inline(__always) func page(_ i: Int) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: UInt(mainBase[i / pagesPerRegion]) + UInt(i % pagesPerRegion) * 4096)!
    }

    /// Main page index of an address, if it is in a main region.
    func mainIndex(_ address: UInt64) -> Int? {
        for (k, b) in mainBase.enumerated() where address >= b && address < b + UInt64(pagesPerRegion * 4096) {
            return k * pagesPerRegion + Int((address - b) / 4096)
        }
        return nil
    }

    func setAlive(_ r: Region, _ value: UInt8) {
        var a = r.start & ~4095
        while a < r.end {
            if let i = mainIndex(a) { alive[i] = value }
            a += 4096
        }
    }

    var readyLine: String {
        let regions = registry.withLock { $0 }
        return "{\"event\":\"ready\",\"pid\":\(getpid()),\"regions\":[\(regions.map(\.json).joined(separator: ","))]}"
    }

    // MARK: Threads

    func startThreads() {
        probe.start()
        for t in 0..<options.threads {
            gate.join()
            spawnThread { [self] in writer(t) }
        }
        if options.churn > 0 {
            gate.join()
            spawnThread { [self] in churner() }
        }
    }

    private func writer(_ t: Int) {
        var rng = XorShift(seed: options.seed &+ UInt64(t + 1) &* 0x5851_F42D_4C95_7F2D)
        let interval: UInt64 = options.rate > 0 ? UInt64(1e9 * Double(options.threads) / options.rate) : 0
        var next = nowNanoseconds()
        var hotCount = 0
        var hotShare = 0.9
        switch options.pattern {
        case .uniform: break
        case .hot(let f): hotCount = max(1, Int(Double(totalPages) * f))
        case .kv(let f): hotCount = max(1, Int(Double(totalPages) * f)); hotShare = 1
        }
        let fieldUpdates = if case .kv = options.pattern { true } else { false }
        while true {
            if gate.requested.load(ordering: .acquiring) {
                gate.park()
                next = nowNanoseconds()
                continue
            }
            if interval > 0 {
                let now = nowNanoseconds()
                if now < next {
                    gate.sleep(untilNanoseconds: next)
                    continue
                }
                next += interval
                if next &+ 1_000_000_000 < now { next = now }  // no burst after a stall
            }
            let i = hotCount > 0 && rng.unit() < hotShare ? rng.below(hotCount) : rng.below(totalPages)
            if alive[i] == 0 { continue }
            if fieldUpdates {
                Content.updateField(page(i), &rng)
            } else {
                Content.mutate(page(i), kind: PageKind(rawValue: kinds[i]) ?? .text, &rng)
            }
            writes.add(1, ordering: .relaxed)
        }
    }

    /// Random mmap/munmap/mremap/MADV_DONTNEED of extra regions.
    private func churner() {
        var rng = XorShift(seed: options.seed ^ 0xC4_0C4_0C4)
        let interval = UInt64(1e9 / options.churn)
        var next = nowNanoseconds()
        var mine: [Region] = []
        while true {
            if gate.requested.load(ordering: .acquiring) {
                gate.park()
                next = nowNanoseconds()
                continue
            }
            let now = nowNanoseconds()
            if now < next {
                gate.sleep(untilNanoseconds: next)
                continue
            }
            next += interval
            if next &+ 1_000_000_000 < now { next = now }
            switch rng.below(4) {
            case 0 where mine.count < 16, _ where mine.isEmpty:
                let pages = 1 + rng.below(64)
                guard let p = try? mapAnonymous(pages * 4096, thp: nil) else { continue }
                for k in 0..<pages where rng.below(2) == 0 { Content.fillText(p + k * 4096, &rng) }
                let r = Region(start: UInt64(UInt(bitPattern: p)), end: UInt64(UInt(bitPattern: p)) + UInt64(pages * 4096))
                mine.append(r)
                registry.withLock { $0 = adding($0, r) }
            case 1:
                let r = mine.remove(at: rng.below(mine.count))
                munmap(UnsafeMutableRawPointer(bitPattern: UInt(r.start)), r.length)
                registry.withLock { $0 = subtract($0, r) }
            case 2:
                let k = rng.below(mine.count)
                let r = mine[k]
                let newLength = (1 + rng.below(64)) * 4096
                let q = mremap(UnsafeMutableRawPointer(bitPattern: UInt(r.start)), r.length, newLength, mremapMayMove)
                guard let q, q != MAP_FAILED else { continue }
                let n = Region(start: UInt64(UInt(bitPattern: q)), end: UInt64(UInt(bitPattern: q)) + UInt64(newLength))
                mine[k] = n
                registry.withLock { $0 = adding(subtract($0, r), n) }
            default:
                let r = mine[rng.below(mine.count)]
                let pages = r.length / 4096
                let first = rng.below(pages)
                let count = 1 + rng.below(pages - first)
                madvise(UnsafeMutableRawPointer(bitPattern: UInt(r.start) + UInt(first * 4096)), count * 4096, MADV_DONTNEED)
            }
        }
    }

    // MARK: Digest

    /// Pauses the writers (unless paused already), digests every region, resumes.
    func digestLine() -> String {
        gate.pause()
        defer { gate.resume() }
        let regions = registry.withLock { $0 }
        var all = MemoryDigester()
        var parts: [String] = []
        for r in regions {
            var one = MemoryDigester()
            all.beginRegion(start: r.start, end: r.end)
            one.beginRegion(start: r.start, end: r.end)
            var a = r.start
            while a < r.end {
                let n = Int(min(r.end - a, 1 << 20))
                let bytes = UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: UInt(a)), count: n)
                all.update(bytes)
                one.update(bytes)
                a += UInt64(n)
            }
            parts.append("{\"start\":\"\(hex(r.start))\",\"end\":\"\(hex(r.end))\",\"digest\":\"\(one.finalize().hex)\"}")
        }
        return "{\"event\":\"digest\",\"digest\":\"\(all.finalize().hex)\",\"regions\":[\(parts.joined(separator: ","))]}"
    }

    // MARK: Control protocol

    struct CommandError: Error { var message: String }

    /// Runs one control line; returns the JSON answer, or nil for `exit` (after exiting).
    func handle(_ line: String) -> String {
        let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let cmd = words.first else { return error("empty command") }
        do {
            switch cmd {
            case "write": return try write(words)
            case "eintr": return ok(probe.fields)
            case "discard", "free":
                let (a, len) = try (address(words, 1), size(words, 2))
                try advise(a, len, cmd == "discard" ? MADV_DONTNEED : MADV_FREE, cmd)
                return ok()
            case "map":
                let len = try size(words, 1)
                let thp = words.count > 2 && words[2] == "thp"
                let p = try mapAnonymous(Int(len), thp: thp ? true : nil)
                let r = Region(start: UInt64(UInt(bitPattern: p)), end: UInt64(UInt(bitPattern: p)) + len)
                registry.withLock { $0 = adding($0, r) }
                return ok("\"start\":\"\(hex(r.start))\",\"end\":\"\(hex(r.end))\"")
            case "unmap":
                let r = Region(start: try address(words, 1), end: try address(words, 1) + size(words, 2))
                gate.pause()
                defer { gate.resume() }
                setAlive(r, 0)
                _ = try sys("munmap") { munmap(UnsafeMutableRawPointer(bitPattern: UInt(r.start)), r.length) }
                registry.withLock { $0 = subtract($0, r) }
                readOnly = subtract(readOnly, r)
                return ok()
            case "mremap":
                let a = try address(words, 1)
                let old = Region(start: a, end: a + (try size(words, 2)))
                let newLength = try size(words, 3)
                gate.pause()
                defer { gate.resume() }
                setAlive(old, 0)
                let q = try Syscall.run("mremap") { () -> Int in
                    let q = mremap(UnsafeMutableRawPointer(bitPattern: UInt(a)), old.length, Int(newLength), mremapMayMove)
                    return q == MAP_FAILED ? -1 : Int(bitPattern: q)
                }
                let n = Region(start: UInt64(UInt(bitPattern: q)), end: UInt64(UInt(bitPattern: q)) + newLength)
                registry.withLock { $0 = adding(subtract($0, old), n) }
                readOnly = subtract(readOnly, old)
                return ok("\"start\":\"\(hex(n.start))\",\"end\":\"\(hex(n.end))\"")
            case "mprotect":
                let a = try address(words, 1)
                let r = Region(start: a, end: a + (try size(words, 2)))
                guard words.count > 3, ["r", "rw", "none"].contains(words[3]) else {
                    throw CommandError(message: "mprotect: expected r, rw or none")
                }
                let writable = words[3] == "rw"
                let prot = writable ? PROT_READ | PROT_WRITE : words[3] == "r" ? PROT_READ : PROT_NONE
                gate.pause()
                defer { gate.resume() }
                _ = try sys("mprotect") {
                    mprotect(UnsafeMutableRawPointer(bitPattern: UInt(a)), r.length, prot)
                }
                setAlive(r, writable ? 1 : 0)
                readOnly = writable ? subtract(readOnly, r) : adding(readOnly, r)
                return ok()
            case "brk": return try brkCommand(words)
            case "threads": return try threadsCommand(words)
            case "fork": return try forkCommand(words)
            case "read": return try readCommand(words)
            case "stack": return try stackCommand(words)
            case "spawn": return try spawnCommand(words)
            case "pageout": return try pageoutCommand(words)
            case "mapfile": return try mapfileCommand(words)
            case "digest":
                return digestLine()
            case "pause":
                if userPaused == 0 { gate.pause() }
                userPaused += 1
                return ok()
            case "resume":
                if userPaused > 0 {
                    userPaused = 0
                    gate.resume()
                }
                return ok()
            case "exit":
                let code = words.count > 1 ? Int32(words[1]) ?? 0 : 0
                emit(ok())
                exit(code)
            default:
                throw CommandError(message: "unknown command \(cmd)")
            }
        } catch let e as CommandError {
            return error(e.message)
        } catch {
            return self.error("\(error)")
        }
    }

    private func write(_ words: [String]) throws -> String {
        let a = try address(words, 1)
        guard words.count > 2, let pages = Int(words[2]), pages >= 0 else { throw CommandError(message: "write: need PAGES") }
        let stride = words.count > 3 ? Int(words[3]) ?? 0 : 1
        guard stride >= 1 else { throw CommandError(message: "write: STRIDE must be >= 1") }
        let regions = registry.withLock { $0 }
        var rng = XorShift(seed: a ^ UInt64(pages))
        // Check every page first, so an error writes nothing.
        var targets: [UInt64] = []
        for k in 0..<pages {
            let p = (a & ~4095) + UInt64(k * stride) * 4096
            guard regions.contains(where: { p >= $0.start && p < $0.end }) else {
                throw CommandError(message: "write: \(hex(p)) is not in a workload region")
            }
            guard !readOnly.contains(where: { p >= $0.start && p < $0.end }) else {
                throw CommandError(message: "write: \(hex(p)) is read-only")
            }
            targets.append(p)
        }
        for p in targets {
            let kind = mainIndex(p).flatMap { PageKind(rawValue: kinds[$0]) } ?? .text
            Content.mutate(UnsafeMutableRawPointer(bitPattern: UInt(p))!, kind: kind, &rng)
        }
        writes.add(pages, ordering: .relaxed)
        return ok("\"pages\":\(pages)")
    }

    private func advise(_ a: UInt64, _ len: UInt64, _ advice: Int32, _ name: String) throws {
        _ = try sys("madvise") { madvise(UnsafeMutableRawPointer(bitPattern: UInt(a)), Int(len), advice) }
    }

    func sys(_ name: String, _ body: () -> Int32) throws -> Int32 {
        try Syscall.run(name, body)
    }

    func address(_ w: [String], _ i: Int) throws -> UInt64 {
        guard i < w.count, w[i].hasPrefix("0x"), let v = UInt64(w[i].dropFirst(2), radix: 16) else {
            throw CommandError(message: "\(w.first ?? ""): expected a hex address (0x...) as argument \(i)")
        }
        return v
    }

    func size(_ w: [String], _ i: Int) throws -> UInt64 {
        guard i < w.count else { throw CommandError(message: "\(w.first ?? ""): missing argument \(i)") }
        if w[i].hasPrefix("0x"), let v = UInt64(w[i].dropFirst(2), radix: 16) { return v }
        guard let v = Options.parseSize(w[i]) else { throw CommandError(message: "\(w[0]): bad length \(w[i])") }
        return v
    }

    func ok(_ fields: String = "") -> String {
        fields.isEmpty ? "{\"event\":\"ok\"}" : "{\"event\":\"ok\",\(fields)}"
    }

    private func error(_ message: String) -> String {
        var escaped = ""
        for c in message.unicodeScalars {
            switch c {
            case "\"": escaped += "\\\""
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            default: escaped.unicodeScalars.append(c)
            }
        }
        return "{\"event\":\"error\",\"message\":\"\(escaped)\"}"
    }
}

/// Writes one line to stdout; exits quietly when stdout is gone.
func emit(_ line: String) {
    var bytes = Array(line.utf8)
    bytes.append(10)
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeBytes { Glibc.write(1, $0.baseAddress! + done, $0.count - done) }
        if n < 0 {
            if errno == EINTR { continue }
            exit(0)
        }
        done += n
    }
}

/// Starts a detached pthread running `body`.
func spawnThread(_ body: @escaping @Sendable () -> Void) {
    pthread_detach(spawnJoinableThread(body))
}

/// One line to stderr.
func printError(_ message: String) {
    let bytes = Array("memhaul-workload: \(message)\n".utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}

/// mremap(2) is declared only under _GNU_SOURCE, which the Glibc module lacks,
/// so it is looked up once; the fixed 4-argument form is ABI-compatible for
/// MREMAP_MAYMOVE (the variadic fifth argument is read only with MREMAP_FIXED).
private typealias MremapFunction = @convention(c) (UnsafeMutableRawPointer?, Int, Int, Int32) -> UnsafeMutableRawPointer?
nonisolated(unsafe) private let mremapFunction: MremapFunction = {
    let handle = dlopen(nil, RTLD_NOW)
    guard let sym = dlsym(handle, "mremap") else { fatalError("mremap not found") }
    return unsafeBitCast(sym, to: MremapFunction.self)
}()
let mremapMayMove: Int32 = 1

func mremap(_ old: UnsafeMutableRawPointer?, _ oldSize: Int, _ newSize: Int, _ flags: Int32) -> UnsafeMutableRawPointer? {
    mremapFunction(old, oldSize, newSize, flags)
}

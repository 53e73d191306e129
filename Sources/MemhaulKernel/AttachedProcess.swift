#if canImport(Glibc)
import Glibc
#endif
import CMemhaulLinux
import MemhaulSystem
import Synchronization

/// How the tracked layout changed since the previous refresh.
public struct LayoutDelta: Sendable {
    /// Address ranges tracked now and not before (new mmaps, mremap targets, grown VMAs,
    /// mappings made writable).
    public var added: [AddressRange]
    /// Ranges tracked before and no longer mapped or tracked (munmap, mremap away,
    /// mprotect to read-only).
    public var removed: [AddressRange]
    /// The tracked (registered) mappings now, ascending.
    public var current: [MapsEntry]
    /// Mappings not tracked now, and why.
    public var skipped: [SkippedMapping]
    /// The tracked ranges whose clean page-cache pages are content
    /// (``FileBacking/notReopenable``), coalesced and ascending.
    public var fileContent: [AddressRange]
}

/// A foreign process whose private writable memory is registered for
/// userfaultfd async write-protect, with the descriptors the scanner needs.
///
/// ``attach(pid:)`` briefly stops the target (ptrace) to inject `userfaultfd`
/// and `close`; afterwards the target runs untraced, and all later work
/// (register, unregister, PAGEMAP_SCAN, process_vm_readv) is done from the agent.
public final class AttachedProcess: Sendable {
    public let pid: Int32
    /// `pidfd_open(pid)`: stays valid (and unambiguous) if the PID is reused.
    public let pidfd: FileDescriptor
    /// The userfaultfd bound to the target's mm, held only by the agent.
    public let uffd: Userfaultfd
    /// `/proc/PID/pagemap` opened read-only, for PAGEMAP_SCAN.
    public let pagemap: FileDescriptor
    /// The target was SIGSTOPped when attached (it stays stopped).
    public let wasGroupStopped: Bool
    /// The thread whose /proc entries we read and that we injected into: the
    /// thread-group leader, or a live thread when the leader has exited.
    public let thread: Int32
    /// How long attach kept the target's main thread ptrace-stopped (seize to detach), in ns.
    public let stoppedNanoseconds: UInt64

    private struct State {
        var registered: [MapsEntry] = []
        var registeredRanges: [AddressRange] = []
        var skipped: [SkippedMapping] = []
        /// VmFlags per mapping seen so far (smaps is costly: read only for new mappings).
        /// Keyed without the end address, so a growing heap or stack is not "new".
        var flags: [MappingIdentity: VmFlags] = [:]
        /// FileBacking per mapping seen so far: one stat(2) per new file mapping.
        /// A file unlinked or replaced later changes the maps path (` (deleted)`),
        /// hence the identity, so it is decided again.
        var backing: [MappingIdentity: FileBacking] = [:]
        var fileContent: [AddressRange] = []
        var detached = false
    }
    private let state = Mutex(State())

    private init(
        pid: Int32, pidfd: FileDescriptor, uffd: Userfaultfd, pagemap: FileDescriptor, wasGroupStopped: Bool,
        stoppedNanoseconds: UInt64, thread: Int32
    ) {
        self.thread = thread
        self.stoppedNanoseconds = stoppedNanoseconds
        self.pid = pid
        self.pidfd = pidfd
        self.uffd = uffd
        self.pagemap = pagemap
        self.wasGroupStopped = wasGroupStopped
    }

    /// Registered (tracked) mappings as of the last refresh, ascending.
    public var registered: [MapsEntry] { state.withLock { $0.registered } }
    /// Registered address ranges, coalesced and ascending.
    public var registeredRanges: [AddressRange] { state.withLock { $0.registeredRanges } }
    /// Mappings left out, and why.
    public var skipped: [SkippedMapping] { state.withLock { $0.skipped } }
    /// Registered ranges of private mappings of files that cannot be reopened
    /// (deleted, memfd, replaced): their clean page-cache pages are content
    /// (pass them as `fileContent` to the scanner and the tracker). Coalesced,
    /// ascending, as of the last refresh.
    public var fileContentRanges: [AddressRange] { state.withLock { $0.fileContent } }
    /// How the file behind a registered mapping was judged (``FileBacking/none`` if unknown).
    public func fileBacking(of entry: MapsEntry) -> FileBacking {
        state.withLock { $0.backing[MappingIdentity(entry)] ?? .none }
    }
    /// The uffd had to be created with UFFD_USER_MODE_ONLY.
    public var userModeOnly: Bool { uffd.userModeOnly }

    /// Attaches to `pid`: refuses a target already tracked, injects `userfaultfd`
    /// (then `close`) via ptrace, takes the uffd with pidfd_getfd, enables async
    /// write-protect, opens the pagemap and registers every trackable mapping.
    /// Must be called on one thread from start to end (ptrace is per thread),
    /// which any synchronous call is.
    public static func attach(pid: Int32) throws -> AttachedProcess {
        guard pid > 0 else { throw AttachError.noSuchProcess(pid: pid) }
        guard pid != getpid() else { throw AttachError.unsupportedTarget(pid: pid, why: "it is memhaul itself") }
        let maps: [MapsEntry]
        let flags: [AddressRange: VmFlags]
        let thread: Int32
        do {
            thread = try SyscallInjector.injectableThread(of: pid)
            maps = try ProcMaps.read(pid: pid, thread: thread)
            flags = try ProcMaps.readFlags(pid: pid, thread: thread)
        } catch let error as SystemError where error.errno == .ENOENT || error.errno == .ESRCH {
            throw AttachError.noSuchProcess(pid: pid)
        } catch let error as SystemError where error.errno == .EACCES || error.errno == .EPERM {
            throw AttachError.permissionDenied(pid: pid)
        }
        if flags.values.contains(where: { $0.contains(.uffdWriteProtect) }) { throw AttachError.alreadyTracked(pid: pid) }

        let pidfd = try openPidfd(pid)

        let stopStart = MonotonicClock.nanoseconds()
        let injector = try SyscallInjector.begin(pid: pid, thread: thread)
        let uffd: Userfaultfd
        do {
            // A zombie leader has no file table: take the fd through the injected thread
            // (PIDFD_THREAD, Linux 6.9).
            let getfdPidfd =
                thread == pid ? pidfd
                : FileDescriptor(owning: try Syscall.run("pidfd_open") { cmh_pidfd_open(thread, UInt32(O_EXCL)) })
            uffd = try Userfaultfd.inject(into: injector, pidfd: getfdPidfd)
        } catch {
            try? injector.finish()
            throw error
        }
        try injector.finish()
        let stopped = MonotonicClock.nanoseconds() - stopStart
        try uffd.enableAsyncWriteProtect()
        let pagemap = try FileDescriptor.open(ProcMaps.path(pid, thread, "pagemap"), O_RDONLY)

        let process = AttachedProcess(
            pid: pid, pidfd: pidfd, uffd: uffd, pagemap: pagemap, wasGroupStopped: injector.wasGroupStopped,
            stoppedNanoseconds: stopped, thread: thread)
        // On failure from here, deinit unregisters and closes.
        var known: [MappingIdentity: VmFlags] = [:]
        for entry in maps { known[MappingIdentity(entry)] = flags[entry.range] ?? [] }
        process.state.withLock { $0.flags = known }
        _ = try process.register(maps, attaching: true)
        return process
    }

    /// `pidfd_open(pid)`.
    static func openPidfd(_ pid: Int32) throws -> FileDescriptor {
        let result = Result { () throws(SystemError) -> Int32 in try Syscall.run("pidfd_open") { cmh_pidfd_open(pid, 0) } }
        switch result {
        case .success(let fd): return FileDescriptor(owning: fd)
        case .failure(let error):
            if error.errno == .ESRCH { throw AttachError.noSuchProcess(pid: pid) }
            throw error
        }
    }

    /// Re-reads the maps and (re-)registers every trackable mapping: new mmaps,
    /// mremap-moved VMAs (a move drops the registration), mappings made writable,
    /// and mappings recreated at a reused address. Registering an already
    /// registered VMA is a no-op in the kernel, so this is safe to repeat.
    public func refreshLayout() throws -> LayoutDelta {
        let maps: [MapsEntry]
        do {
            maps = try ProcMaps.read(pid: pid, thread: thread)
        } catch let error as SystemError where error.errno == .ENOENT || error.errno == .ESRCH {
            throw AttachError.noSuchProcess(pid: pid)
        }
        // VmFlags only matter for mappings that look trackable and are new.
        let known = state.withLock { $0.flags }
        let needFlags = maps.contains { known[MappingIdentity($0)] == nil && ProcMaps.trackability(of: $0) == .tracked }
        let fresh: [AddressRange: VmFlags] = needFlags ? ((try? ProcMaps.readFlags(pid: pid, thread: thread)) ?? [:]) : [:]
        state.withLock { s in
            var next: [MappingIdentity: VmFlags] = [:]
            for entry in maps {
                let id = MappingIdentity(entry)
                next[id] = s.flags[id] ?? fresh[entry.range]
            }
            s.flags = next
        }
        return try register(maps, attaching: false)
    }

    private func register(_ maps: [MapsEntry], attaching: Bool) throws -> LayoutDelta {
        let (delta, newlyUnreopenable) = try registerLocked(maps, attaching: attaching)
        // Outside the lock: this reads up to the mapped size of those files.
        if !newlyUnreopenable.isEmpty { Self.faultInFileData(pid: pid, newlyUnreopenable) }
        return delta
    }

    /// Reads (never writes) the pages of `entries` that hold file data, so that
    /// a mapping of a file that cannot be reopened holds every byte it can show
    /// as resident clean page-cache pages, which the scanner counts as content:
    /// nothing else can provide the pages a read fault has not mapped yet (a
    /// deleted library's code not run so far). Only file data is read: the
    /// extent comes from `/proc/PID/map_files/START-END` (size, then
    /// SEEK_DATA/SEEK_HOLE), so holes of a sparse memfd or file allocate
    /// nothing. Best effort: a mapping whose file cannot be opened there, or
    /// that the target cannot read (PROT_NONE, execute-only), is left alone,
    /// and so is a page reclaimed again before the cutover (the sender warns,
    /// `image verify` fails). Returns the bytes read.
    @discardableResult
    static func faultInFileData(pid: Int32, _ entries: [MapsEntry]) -> UInt64 {
        let seekData: Int32 = 3, seekHole: Int32 = 4  // glibc defines them only under _GNU_SOURCE
        let reader = RemoteMemoryReader(pid: pid, bufferBytes: 1 << 20)
        var total: UInt64 = 0
        for entry in entries where entry.permissions.contains(.read) {
            let link = "/proc/\(pid)/map_files/\(String(entry.start, radix: 16))-\(String(entry.end, radix: 16))"
            guard let fd = try? FileDescriptor.open(link, O_RDONLY | O_CLOEXEC) else { continue }
            defer { try? fd.close() }
            var st = stat()
            guard fstat(fd.rawValue, &st) == 0, UInt64(st.st_size) > entry.offset else { continue }
            let fileEnd = min(UInt64(st.st_size), entry.offset + entry.byteCount)
            var data: [AddressRange] = []
            var at = Int64(entry.offset)
            while at < Int64(fileEnd) {
                let start = lseek(fd.rawValue, off_t(at), seekData)
                guard start >= 0, start < Int64(fileEnd) else { break }  // ENXIO: no data after `at`
                var end = lseek(fd.rawValue, off_t(start), seekHole)
                if end <= start || end > Int64(fileEnd) { end = off_t(fileEnd) }  // no SEEK_HOLE: data to the end
                let first = entry.start + PageSize.roundDown(UInt64(start) - entry.offset)
                let last = entry.start + PageSize.roundUp(UInt64(end) - entry.offset)
                data.appendCoalescing(AddressRange(start: first, end: min(last, entry.end)))
                at = Int64(end)
            }
            for r in data {
                var chunk = r.start
                while chunk < r.end {
                    let next = min(r.end, chunk + UInt64(reader.buffer.count))
                    guard (try? reader.read([AddressRange(start: chunk, end: next)])) != nil else { break }
                    total += next - chunk
                    chunk = next
                }
            }
        }
        return total
    }

    private func registerLocked(_ maps: [MapsEntry], attaching: Bool) throws -> (LayoutDelta, [MapsEntry]) {
        try state.withLock { (s: inout State) throws -> (LayoutDelta, [MapsEntry]) in
            guard !s.detached else { throw SystemError("ioctl(UFFDIO_REGISTER)", .EBADF) }
            var registered: [MapsEntry] = []
            var skipped: [SkippedMapping] = []
            var firstFailure: SystemError?
            var backing: [MappingIdentity: FileBacking] = [:]
            var fileContent: [AddressRange] = []
            var newlyUnreopenable: [MapsEntry] = []
            // PROT_NONE mappings are tracked once they hold content (one page-table scan each).
            var emptinessScanner: PagemapScanner?
            for entry in maps {
                let id = MappingIdentity(entry)
                var decision = ProcMaps.trackability(of: entry, flags: s.flags[id])
                // Only private mappings reach here as tracked or PROT_NONE; a
                // shared one is skipped before any stat.
                var file = FileBacking.none
                if decision == .tracked || decision == .skipped(.noAccessAndEmpty) {
                    file = s.backing[id] ?? ProcMaps.fileBacking(of: entry, pid: pid)
                    backing[id] = file
                }
                if decision == .skipped(.noAccessAndEmpty) {
                    emptinessScanner = emptinessScanner ?? PagemapScanner(pagemap: pagemap, vectorCapacity: 16)
                    let range = AddressRange(start: entry.start, end: entry.end)
                    let content = try emptinessScanner!.populated([range], fileContent: file.cleanPagesAreContent ? [range] : [])
                    if !content.isEmpty { decision = .tracked }
                }
                switch decision {
                case .skipped(let reason):
                    skipped.append(SkippedMapping(entry: entry, reason: reason))
                case .tracked:
                    do {
                        try uffd.registerWriteProtect(entry.range)
                        registered.append(entry)
                        if file.cleanPagesAreContent {
                            fileContent.append(entry.range)
                            if s.backing[id] == nil { newlyUnreopenable.append(entry) }
                        }
                    } catch let error as SystemError {
                        if error.errno == .EBUSY {
                            if attaching { throw AttachError.alreadyTracked(pid: pid) }
                            skipped.append(SkippedMapping(entry: entry, reason: .registeredElsewhere))
                        } else {
                            // EINVAL: unsupported VMA type, or it vanished since we read the maps.
                            skipped.append(SkippedMapping(entry: entry, reason: .registerFailed(error.errno)))
                        }
                        firstFailure = firstFailure ?? error
                    }
                }
            }
            if attaching, registered.isEmpty, let firstFailure { throw firstFailure }
            let ranges = registered.map(\.range).coalesced()
            let delta = LayoutDelta(
                added: ranges.subtracting(s.registeredRanges),
                removed: s.registeredRanges.subtracting(ranges),
                current: registered, skipped: skipped, fileContent: fileContent.coalesced())
            s.registered = registered
            s.registeredRanges = ranges
            s.skipped = skipped
            s.backing = backing
            s.fileContent = delta.fileContent
            return (delta, newlyUnreopenable)
        }
    }

    /// Unregisters every range we registered (ranges that vanished are ignored),
    /// then closes the uffd, pagemap and pidfd. The target then holds no uffd and
    /// has no write-protected pages. Idempotent; also run by deinit.
    public func detach() throws {
        let ranges: [AddressRange]? = state.withLock { s in
            guard !s.detached else { return nil }
            s.detached = true
            return s.registeredRanges
        }
        guard let ranges else { return }
        var firstError: SystemError?
        // Unregister per current VMA inside our ranges: a range spanning a hole or
        // a foreign VMA would make one big UFFDIO_UNREGISTER fail as a whole.
        if !ranges.isEmpty, let maps = try? ProcMaps.read(pid: pid, thread: thread) {
            for piece in maps.map(\.range).sorted().clipped(to: ranges) {
                do {
                    try uffd.unregister(piece)
                } catch let error {
                    if error.errno != .EINVAL && error.errno != .ENOMEM && error.errno != .ESRCH {
                        firstError = firstError ?? error
                    }
                }
            }
        }
        // Closing the last reference also clears any registration left behind.
        do { try uffd.fd.close() } catch { firstError = firstError ?? error }
        try? pagemap.close()
        try? pidfd.close()
        state.withLock { s in
            s.registered = []
            s.registeredRanges = []
        }
        if let firstError { throw firstError }
    }

    deinit {
        try? detach()
    }
}

/// A mapping as far as its VmFlags go: where it starts and what backs it (not its end).
struct MappingIdentity: Hashable {
    var start: UInt64
    var permissions: MapsPermissions
    var offset: UInt64
    var inode: UInt64
    var path: String
    init(_ e: MapsEntry) {
        start = e.start
        permissions = e.permissions
        offset = e.offset
        inode = e.inode
        path = e.path
    }
}


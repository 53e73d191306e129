import CMemhaulLinux
import MemhaulSystem

#if canImport(Glibc)
import Glibc
#endif

/// What one ``RemoteMemoryReader/read(_:into:)`` got.
public struct RemoteReadResult: Hashable, Sendable {
    /// Bytes laid out in the destination: the ranges back to back; vanished pages are zero-filled.
    public var bytes: Int
    /// Pages that could not be read (unmapped or made unreadable since the scan).
    public var vanished: [AddressRange]
    /// process_vm_readv calls made.
    public var calls: Int
}

public enum RemoteReadError: Error, Hashable, Sendable, CustomStringConvertible {
    /// ESRCH: the target is gone.
    case targetExited(pid: Int32)
    case bufferTooSmall(needed: Int, capacity: Int)
    case system(SystemError)

    public var description: String {
        switch self {
        case .targetExited(let pid): return "process_vm_readv: target PID \(pid) exited"
        case .bufferTooSmall(let n, let c): return "process_vm_readv: \(n) bytes requested, buffer holds \(c)"
        case .system(let e): return e.description
        }
    }
}

/// Reads a foreign process's pages with `process_vm_readv(2)`.
///
/// Ranges are copied back to back into the destination. Up to IOV_MAX (1024)
/// remote iovecs per call; a short read stops at the first unreadable page,
/// which is then probed alone: EFAULT marks it vanished (zero-filled), and the
/// read goes on after it.
public final class RemoteMemoryReader {
    public let pid: Int32
    /// The reader's own page-aligned buffer, reused by ``read(_:)``.
    public let buffer: UnsafeMutableRawBufferPointer
    private let remote: UnsafeMutablePointer<iovec>
    private static let iovMax = 1024

    public init(pid: Int32, bufferBytes: Int = 8 << 20) {
        self.pid = pid
        let size = max(Int(PageSize.bytes), (bufferBytes + Int(PageSize.bytes) - 1) & ~(Int(PageSize.bytes) - 1))
        var p: UnsafeMutableRawPointer?
        precondition(posix_memalign(&p, Int(PageSize.bytes), size) == 0, "posix_memalign failed")
        buffer = UnsafeMutableRawBufferPointer(start: p!, count: size)
        remote = .allocate(capacity: Self.iovMax)
    }

    deinit {
        free(buffer.baseAddress)
        remote.deallocate()
    }

    /// `/proc/PID/mem`, opened on first need.
    private var mem: FileDescriptor?

    /// One page through `pread(/proc/PID/mem)`, which reads with FOLL_FORCE and
    /// so also reads pages the target cannot (PROT_NONE). False if unmapped.
    private func readForced(_ page: UInt64, into destination: UnsafeMutableRawPointer) -> Bool {
        if mem == nil { mem = try? FileDescriptor.open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC) }
        guard let mem else { return false }
        let n = try? mem.pread(into: UnsafeMutableRawBufferPointer(start: destination, count: Int(PageSize.bytes)), at: Int64(bitPattern: page))
        return n == Int(PageSize.bytes)
    }

    /// Reads `ranges` into the reader's own buffer; the bytes are valid until the next read.
    public func read(_ ranges: [AddressRange]) throws -> RemoteReadResult {
        try read(ranges, into: buffer)
    }

    /// Reads `ranges` (page-aligned) into `destination`, back to back.
    public func read(_ ranges: [AddressRange], into destination: UnsafeMutableRawBufferPointer) throws -> RemoteReadResult {
        let total = ranges.reduce(0) { $0 + Int($1.byteCount) }
        guard total <= destination.count else {
            throw RemoteReadError.bufferTooSmall(needed: total, capacity: destination.count)
        }
        var result = RemoteReadResult(bytes: 0, vanished: [], calls: 0)
        guard total > 0, let base = destination.baseAddress else { return result }

        var index = 0  // current range
        var offset: UInt64 = 0  // bytes done within ranges[index]
        var out = 0  // bytes placed in destination
        while index < ranges.count {
            if offset >= ranges[index].byteCount {
                index += 1
                offset = 0
                continue
            }
            // Remote iovecs from the current position, up to IOV_MAX.
            var n = 0
            var want = 0
            var i = index
            var off = offset
            while i < ranges.count && n < Self.iovMax {
                let r = ranges[i]
                if r.byteCount > off {
                    let len = Int(r.byteCount - off)
                    remote[n] = iovec(iov_base: UnsafeMutableRawPointer(bitPattern: UInt(r.start + off)), iov_len: len)
                    n += 1
                    want += len
                }
                i += 1
                off = 0
            }
            var local = iovec(iov_base: base + out, iov_len: want)
            let got: Int
            do {
                got = try Syscall.run("process_vm_readv") {
                    cmh_process_vm_readv(pid, &local, 1, remote, UInt(n))
                }
            } catch {
                result.calls += 1
                switch error.errno {
                case .ESRCH: throw RemoteReadError.targetExited(pid: pid)
                case .EFAULT:
                    // The page at the current position is unreadable to process_vm_readv:
                    // unmapped (vanished: zero it, note it), or mapped without read
                    // permission (PROT_NONE holding data): /proc/PID/mem reads it.
                    let page = ranges[index].start + offset
                    if !readForced(page, into: base + out) {
                        (base + out).initializeMemory(as: UInt8.self, repeating: 0, count: Int(PageSize.bytes))
                        result.vanished.appendCoalescing(AddressRange(start: page, end: page + PageSize.bytes))
                    }
                    out += Int(PageSize.bytes)
                    offset += PageSize.bytes
                    continue
                default: throw RemoteReadError.system(error)
                }
            }
            result.calls += 1
            // Advance by what was read (a short read ends at a page boundary).
            var left = got
            out += got
            while left > 0 {
                let room = Int(ranges[index].byteCount - offset)
                if left >= room {
                    left -= room
                    index += 1
                    offset = 0
                } else {
                    offset += UInt64(left)
                    left = 0
                }
            }
            if got == 0 && want > 0 {
                // No progress without an error: treat the page as unreadable.
                let page = ranges[index].start + offset
                (base + out).initializeMemory(as: UInt8.self, repeating: 0, count: Int(PageSize.bytes))
                result.vanished.appendCoalescing(AddressRange(start: page, end: page + PageSize.bytes))
                out += Int(PageSize.bytes)
                offset += PageSize.bytes
            }
        }
        result.bytes = out
        return result
    }
}

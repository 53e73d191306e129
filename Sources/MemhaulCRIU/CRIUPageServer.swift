#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem
import MemhaulTLS

/// A CRIU page server (`criu/page-xfer.c`) that answers `criu lazy-pages
/// --page-server` from a memhaul image: the restored process's missing pages
/// come from the image, and nothing is copied while the source is frozen.
///
/// Protocol: each request is `struct page_server_iov { u32 cmd; u64 nr_pages;
/// u64 vaddr; u64 dst_id }` (32 bytes with padding, little-endian).
/// `PS_IOV_GET` is answered with the same iov, `cmd = PS_IOV_ADD_F |
/// PE_PRESENT << 16`, then `nr_pages` pages. `PS_IOV_CLOSE` /
/// `PS_IOV_FORCE_CLOSE` get an `i32 0` and end the session. One client only;
/// requests outside the image's layout, too large, or of another kind end the
/// session with a log line (CRIU then fails the restore, loudly, instead of
/// mapping wrong memory).
public final class CRIUPageServer: @unchecked Sendable {  // one serving thread; the extra-client thread only closes sockets
    public enum Command {
        static let add: UInt32 = 1, addF: UInt32 = 6, get: UInt32 = 7
        static let close: UInt32 = 0x1023, forceClose: UInt32 = 0x1024
        static let presentFlag: UInt32 = 4 << 16  // PE_PRESENT << PS_CMD_BITS
    }

    public struct Limits: Sendable {
        /// Largest single request answered (CRIU's lazy-pages asks for at most a VMA's worth at a time).
        public var maxRequestPages: UInt64 = 1 << 18  // 1 GiB
        /// How long the client may stay silent between requests.
        public var idleTimeout: Duration = .seconds(300)
        public init() {}
    }

    public struct Stats: Sendable, Equatable {
        public var requests = 0
        public var pages: UInt64 = 0
        /// How the session ended: `closed` (PS_IOV_CLOSE), or why it was cut.
        public var end = ""
    }

    public enum ServeError: Error, Equatable, CustomStringConvertible {
        case outsideImage(AddressRange)
        case tooLarge(pages: UInt64)
        case badCommand(UInt32)
        case wrongProcess(UInt64)
        case disconnected
        public var description: String {
            switch self {
            case .outsideImage(let r): "request for \(r), outside the image's layout"
            case .tooLarge(let n): "request for \(n) pages, more than the limit"
            case .badCommand(let c): "unexpected page-server command 0x\(String(c, radix: 16))"
            case .wrongProcess(let id): "request for image id \(id), not the process this image holds"
            case .disconnected: "client closed the connection without PS_IOV_CLOSE"
            }
        }
    }

    private let source: CRIUPageSource
    private let listener: TCPListener
    private let limits: Limits
    private let pid: UInt64?
    private let log: @Sendable (String) -> Void

    /// `pid`: the only `dst_id` served (nil: any).
    public init(source: CRIUPageSource, listener: TCPListener, pid: UInt64? = nil, limits: Limits = Limits(), log: @escaping @Sendable (String) -> Void) {
        self.source = source
        self.listener = listener
        self.pid = pid
        self.limits = limits
        self.log = log
    }

    /// Accepts one client (at most `acceptTimeout`), serves it to the end and
    /// returns what it served; a second client meanwhile is closed at once
    /// with a log line. Throws if the session ended other than by PS_IOV_CLOSE.
    public func serveOneClient(acceptTimeout: Duration? = nil) throws -> Stats {
        let client = try listener.accept(timeout: acceptTimeout)
        log("criu page server: client \(client.peerDescription)")
        let done = StopFlag()
        let rejector = HandOff((listener, log))
        let thread = Thread {
            while !done.isSet {
                guard let extra = try? rejector.value.0.accept(timeout: .milliseconds(200)) else { continue }
                rejector.value.1("criu page server: refused a second client \(extra.peerDescription) (one lazy-pages client per image)")
                extra.close()
            }
        }
        thread.start()
        defer { done.set() }
        var stats = Stats()
        do {
            try serve(client, &stats)
            stats.end = "closed"
            log("criu page server: served \(stats.requests) requests, \(stats.pages) pages")
            return stats
        } catch {
            log("criu page server: \(client.peerDescription): \(error); session ended")
            client.close()
            throw error
        }
    }

    private func serve(_ client: TCPStream, _ stats: inout Stats) throws {
        try client.setTimeouts(read: limits.idleTimeout, write: limits.idleTimeout)
        let header = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 8)
        defer { header.deallocate() }
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { chunk.deallocate() }
        while true {
            guard try client.readExactly(into: header) else { throw ServeError.disconnected }
            let cmd = header.load(fromByteOffset: 0, as: UInt32.self).littleEndian
            let pages = header.load(fromByteOffset: 8, as: UInt64.self).littleEndian
            let address = header.load(fromByteOffset: 16, as: UInt64.self).littleEndian
            let id = header.load(fromByteOffset: 24, as: UInt64.self).littleEndian
            switch cmd & 0xffff {
            case Command.get where cmd >> 16 == 0:
                guard pages > 0, pages <= limits.maxRequestPages else { throw ServeError.tooLarge(pages: pages) }
                if let pid, id != pid { throw ServeError.wrongProcess(id) }
                let (end, overflow) = address.addingReportingOverflow(pages * PageSize.bytes)
                guard !overflow, PageSize.isAligned(address) else { throw ServeError.outsideImage(AddressRange(start: address, end: address)) }
                let range = AddressRange(start: address, end: end)
                guard source.covers(range) else { throw ServeError.outsideImage(range) }
                header.storeBytes(of: (Command.addF | Command.presentFlag).littleEndian, toByteOffset: 0, as: UInt32.self)
                try client.writeAll(UnsafeRawBufferPointer(header))
                var done: UInt64 = 0
                while done < range.byteCount {
                    let n = Int(min(UInt64(chunk.count), range.byteCount - done))
                    let part = UnsafeMutableRawBufferPointer(rebasing: chunk[0..<n])
                    try source.read(at: address + done, into: part)
                    try client.writeAll(UnsafeRawBufferPointer(part))
                    done += UInt64(n)
                }
                stats.requests += 1
                stats.pages += pages
            case Command.close, Command.forceClose:
                var zero: Int32 = 0
                try withUnsafeBytes(of: &zero) { try client.writeAll($0) }
                // CRIU closes its end after reading the answer.
                let one = UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1)
                defer { one.deallocate() }
                _ = try? client.read(into: one)
                client.close()
                return
            default:
                throw ServeError.badCommand(cmd)
            }
        }
    }
}

import Foundation
import Synchronization

/// Tells the extra-client thread to stop.
private final class StopFlag: Sendable {
    private let flag = Atomic(false)
    var isSet: Bool { flag.load(ordering: .relaxed) }
    func set() { flag.store(true, ordering: .relaxed) }
}

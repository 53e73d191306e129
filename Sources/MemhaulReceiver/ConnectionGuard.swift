#if canImport(Glibc)
import Glibc
#endif
import Foundation
import MemhaulImage
import MemhaulSession
import MemhaulSystem

/// The receiver's limits on what one peer may hold (`memhaul receive` options,
/// README "Limits"). Socket timeouts alone cannot bound a peer that sends one
/// byte at a time (each byte restarts SO_RCVTIMEO, and OpenSSL keeps reading
/// a record it has not got whole), so the deadlines are enforced by a
/// watchdog that cuts the connection (``ConnectionGuard``).
public struct ReceiverLimits: Sendable, Equatable {
    /// From accept to a decoded HELLO: TLS handshake, preamble and HELLO together.
    public var handshakeTimeout: Duration = .seconds(10)
    /// While the receiver waits for input, the next frame must have arrived
    /// whole within this long. Time the receiver spends working (commit,
    /// digest) does not count.
    public var frameTimeout: Duration = .seconds(120)
    /// Connections open at once, handshaking ones included.
    public var maxConnections = 64
    /// Connections open at once from one peer address.
    public var maxConnectionsPerHost = 16

    // What one connection may make the receiver hold (wire.md "Receiver
    // limits"); over any of them the peer gets ERROR `limit-exceeded`.

    /// Regions of one round's layout, all its LAYOUT frames together: twice
    /// Linux's default `vm.max_map_count` (65530), so any ordinary process fits.
    public var maxLayoutRegions = 131_072
    /// Wire bytes of one round's layout (20 + name per region) held before the
    /// last LAYOUT frame: ~3 × the region cap at a typical 60-byte path.
    public var maxLayoutBytes = 32 << 20
    /// Pages with data (PAGE_BATCH) in one round: 4 GiB, 64 × the reference
    /// sender's 64 MiB commit chunk (the round's journal and its block reservations).
    public var maxPagesPerRound = 1 << 20
    /// Runs of ZERO_RANGES and DISCARD_RANGES in one round (one journal record
    /// and one in-memory punch each).
    public var maxRangesPerRound = 1 << 20
    /// Disk bytes of one migration's image (region files + journals, as
    /// allocated); 0 = unlimited. 1 TiB: above any single process we expect,
    /// so only a runaway or hostile sender meets it; size it to the disk.
    public var maxImageBytes: UInt64 = 1 << 40
    /// Image directories one sender certificate may own (new migrations beyond
    /// it are refused; resumes are not); 0 = unlimited. Unauthenticated
    /// (`--insecure`) senders count as one sender.
    public var maxImagesPerSender = 64
    /// The largest gap between a dense batch's pages written as zeros on a
    /// disk (``ImageStore/gapFillBytes``, Protocol/image.md "Filled gaps"):
    /// disk bytes traded for ext4 CPU; 0 writes only page bytes.
    public var maxFilledGapBytes: UInt64 = ImageStore.defaultGapFillBytes

    public init() {}
}

/// Cuts connections that overstay a deadline: `shutdown(2)` from the
/// watchdog thread wakes a session blocked in `recv`/`SSL_read`, which then
/// fails and ends like any broken connection. Also counts open connections
/// per peer address for the connection limits.
public final class ConnectionGuard: @unchecked Sendable {  // state behind `condition`
    public struct Ticket: Hashable, Sendable { fileprivate let id: UInt64 }

    private struct Entry {
        let fd: Int32
        let host: String
        let peer: String
        var deadline: Double  // monotonic seconds; .infinity while the receiver works
        var phase: String
    }

    public let limits: ReceiverLimits
    private let log: @Sendable (String) -> Void
    private let condition = NSCondition()
    private var entries: [UInt64: Entry] = [:]
    private var nextID: UInt64 = 0
    private var stopped = false

    public init(limits: ReceiverLimits, log: @escaping @Sendable (String) -> Void) {
        self.limits = limits
        self.log = log
        Thread.detachNewThread { [self] in watch() }
    }

    /// Admits a new connection (its handshake deadline starts now), or returns
    /// why it is refused. `peer` is `host:port` as the socket layer prints it.
    public func admit(fd: Int32, peer: String) -> Result<Ticket, LimitRefusal> {
        let host = Self.host(of: peer)
        return condition.withLock {
            if entries.count >= limits.maxConnections {
                return .failure(LimitRefusal(reason: .connectionLimit, description: "\(entries.count) connections open (limit \(limits.maxConnections))"))
            }
            let fromHost = entries.values.filter { $0.host == host }.count
            if fromHost >= limits.maxConnectionsPerHost {
                return .failure(LimitRefusal(reason: .hostLimit, description: "\(fromHost) connections open from \(host) (limit \(limits.maxConnectionsPerHost) per host)"))
            }
            nextID += 1
            entries[nextID] = Entry(fd: fd, host: host, peer: peer,
                                    deadline: MonotonicClock.seconds() + limits.handshakeTimeout.secondsValue, phase: "handshake")
            condition.signal()
            return .success(Ticket(id: nextID))
        }
    }

    /// The receiver now waits for the next frame: it must arrive within the frame timeout.
    public func awaitingFrame(_ ticket: Ticket) {
        set(ticket, deadline: MonotonicClock.seconds() + limits.frameTimeout.secondsValue, phase: "frame")
    }

    /// The receiver is working (committing, digesting): no deadline.
    public func working(_ ticket: Ticket) {
        set(ticket, deadline: .infinity, phase: "working")
    }

    /// The connection is about to be closed: forget it before its descriptor
    /// number can be reused.
    public func release(_ ticket: Ticket) {
        condition.withLock { _ = entries.removeValue(forKey: ticket.id) }
    }

    public var openConnections: Int { condition.withLock { entries.count } }

    /// Whether the connection is over while the receiver works: the peer hung
    /// up (FIN or reset: `POLLRDHUP`/`POLLHUP`/`POLLERR`), or the watchdog or
    /// a preemption cut it. Cheap (one `poll(2)` with timeout 0): long work
    /// (a digest) asks between chunks and stops.
    public func peerGone(_ ticket: Ticket) -> Bool {
        guard let fd = condition.withLock({ entries[ticket.id]?.fd }) else { return true }  // cut by the watchdog
        let rdhup: Int16 = 0x2000  // POLLRDHUP (<poll.h> with _GNU_SOURCE; Glibc does not export it)
        var p = pollfd(fd: fd, events: rdhup, revents: 0)
        guard poll(&p, 1, 0) >= 0 else { return false }
        return p.revents & (rdhup | Int16(POLLHUP | POLLERR | POLLNVAL)) != 0
    }

    public func stop() {
        condition.withLock { stopped = true; condition.signal() }
    }

    private func set(_ ticket: Ticket, deadline: Double, phase: String) {
        condition.withLock {
            guard entries[ticket.id] != nil else { return }
            entries[ticket.id]!.deadline = deadline
            entries[ticket.id]!.phase = phase
            condition.signal()
        }
    }

    private func watch() {
        condition.lock()
        defer { condition.unlock() }
        while !stopped {
            let now = MonotonicClock.seconds()
            for (id, e) in entries where e.deadline <= now {
                // Removed here so the cut happens once; the session's release is then a no-op.
                entries.removeValue(forKey: id)
                _ = Glibc.shutdown(e.fd, Int32(SHUT_RDWR))
                let limit = e.phase == "handshake" ? limits.handshakeTimeout : limits.frameTimeout
                log("receiver: cut connection from \(e.peer): \(e.phase == "handshake" ? "handshake and HELLO" : "next frame") not complete within \(limit.secondsValue) s")
            }
            let next = entries.values.map(\.deadline).min() ?? .infinity
            if next.isFinite {
                _ = condition.wait(until: Date(timeIntervalSinceNow: max(0.001, next - MonotonicClock.seconds())))
            } else {
                condition.wait()
            }
        }
    }

    /// `1.2.3.4:56` → `1.2.3.4`, `[::1]:56` → `::1`.
    static func host(of peer: String) -> String {
        guard let colon = peer.lastIndex(of: ":") else { return peer }
        var host = peer[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return String(host)
    }
}

/// A connection refused by the receiver's limits.
public struct LimitRefusal: Error, CustomStringConvertible {
    public var reason: RefusalReason
    public var description: String
}

extension Duration {
    /// In seconds, as a Double (for status and messages).
    public var secondsValue: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }
}

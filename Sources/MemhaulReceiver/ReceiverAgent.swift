import Foundation
import MemhaulSystem
import MemhaulTLS

/// The receiver agent: accepts connections, runs one ``ReceiverSession`` per
/// connection on its own thread, and serves several migrations at once, each
/// into its own image under `imagesRoot`.
public final class ReceiverAgent: @unchecked Sendable {  // mutable state behind `lock`
    /// Turns an accepted TCP connection into the session's stream: the TLS
    /// handshake (mutual auth), or the plain socket with `--insecure`.
    public typealias Handshake = @Sendable (TCPStream) throws -> ByteStream

    public let listener: TCPListener
    public let imagesRoot: String
    private let handshake: Handshake
    private let log: @Sendable (String) -> Void
    private let lock = NSLock()
    private var sessions: [ReceiverSession] = []
    private var active: Set<String> = []
    private var closed = false
    /// Deadlines and connection limits (a stalled or dripping peer is cut).
    public let connections: ConnectionGuard
    /// Connections, refusals, commits: what the status and the metrics read.
    public let counters = ReceiverCounters()
    /// Which sender may write which migration ids (`--authorize`); set before `serve()`.
    public var authorization: ReceiverAuthorization?
    /// Restores processes after their proof (`--restore criu`); set before `serve()`.
    public var restore: RestoreService?
    /// Tests only; set before `serve()`.
    public var testHooks = ReceiverTestHooks()

    public init(listener: TCPListener, imagesRoot: String, limits: ReceiverLimits = ReceiverLimits(),
                handshake: @escaping Handshake, log: @escaping @Sendable (String) -> Void) {
        self.listener = listener
        self.imagesRoot = imagesRoot
        self.handshake = handshake
        self.log = log
        connections = ConnectionGuard(limits: limits, log: log)
    }

    /// Accepts until the listener is closed.
    public func serve() {
        while true {
            let connection: TCPStream
            do {
                connection = try listener.accept(timeout: .seconds(1))
            } catch {
                if lock.withLock({ closed }) { return }
                if case NetworkError.timedOut = error { continue }
                log("receiver: accept failed: \(error)")
                usleep(10_000)
                continue
            }
            let box = HandOff(connection)
            Thread.detachNewThread { [self] in
                nameCurrentThread("rx.session")  // network + decrypt (the bench's per-thread CPU)
                self.serve(box.value)
            }
        }
    }

    private func serve(_ connection: TCPStream) {
        let peer = connection.peerDescription
        let ticket: ConnectionGuard.Ticket
        counters.accepted()
        switch connections.admit(fd: connection.fileDescriptor, peer: peer) {
        case .success(let t): ticket = t
        case .failure(let refusal):
            log("receiver: refused connection from \(peer): \(refusal)")
            counters.refused(refusal.reason)
            connection.close()
            return
        }
        let limits = connections.limits
        let stream: ByteStream
        do {
            // The watchdog bounds the whole handshake; these bound each read and write.
            try connection.setTimeouts(read: limits.handshakeTimeout, write: limits.handshakeTimeout)
            stream = try handshake(connection)
            try connection.setTimeouts(read: limits.frameTimeout, write: limits.frameTimeout)
        } catch {
            log("receiver: refused connection from \(peer): \(error)")
            counters.refused(.handshake)
            connections.release(ticket)
            connection.close()
            return
        }
        let registry = ReceiverSession.Registry(
            claim: { [self] id in lock.withLock { active.insert(id).inserted } },
            release: { [self] id in _ = lock.withLock { active.remove(id) } },
            preempt: { [self] id, fingerprint in
                // Only a connection of the same sender certificate: a sender never cuts another's.
                for s in receiving(id) where s.sender?.fingerprint == fingerprint { s.abortConnection() }
            })
        let guardian = connections
        let watch = ReceiverSession.Watch(
            awaitingFrame: { guardian.awaitingFrame(ticket) },
            working: { guardian.working(ticket) },
            ended: { guardian.release(ticket) },
            peerGone: { guardian.peerGone(ticket) })
        let session = ReceiverSession(
            stream: stream, imagesRoot: imagesRoot, registry: registry, watch: watch, authorization: authorization,
            limits: limits, restore: restore, counters: counters, testHooks: testHooks, log: log)
        lock.withLock {
            sessions.append(session)
            if sessions.count > 256 { sessions.removeFirst(sessions.count - 256) }
        }
        session.run()
    }

    /// Every session, oldest first (finished ones included, up to 256).
    public var sessionInfo: [ReceiverSession.Info] { lock.withLock { sessions.map(\.info) } }

    /// Cuts the connection receiving migration `id`, as a network failure
    /// would: the image stays at its last committed round, waiting for a resume.
    public func disconnect(migration id: String) {
        for s in receiving(id) { s.abortConnection() }
    }

    /// The sessions currently receiving migration `id`.
    private func receiving(_ id: String) -> [ReceiverSession] {
        lock.withLock { sessions.filter { $0.info.migration == id && $0.info.state == "receiving" } }
    }

    public func close() {
        lock.withLock { closed = true }
        listener.close()
        connections.stop()
    }
}

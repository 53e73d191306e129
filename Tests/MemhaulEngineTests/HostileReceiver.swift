import Foundation
import Glibc
import MemhaulSystem
import MemhaulTestSupport
import MemhaulTLS
import MemhaulWire
@testable import MemhaulSession

/// A receiver that speaks the wire protocol over real mutual TLS, with the
/// test PKI's receiver certificate, and misbehaves in one chosen way: what a
/// sender's deadlines, cancel and release are tested against. It never
/// writes an image; it acknowledges by answering ROUND_END with ROUND_ACK.
///
/// It serves any number of connections (a cancelled sender comes back to say
/// so), one thread each. Frames are encoded here, not through FrameChannel,
/// so that several can go out in one write (one TLS record).
final class HostileReceiver: @unchecked Sendable {  // counters behind `condition`
    enum Behaviour: Sendable {
        /// Answers KEEPALIVE (and sends its own every 200 ms, which the sender
        /// answers), never ROUND_ACK.
        case neverAck
        /// Acknowledges the first `n` ROUND_ENDs (commit chunks), then stalls like `neverAck`.
        case ackThenStall(Int)
        /// Acknowledges every round but the verification round (the one that
        /// carries the sender's digest, sent while the source is frozen).
        case ackAllButVerification
        /// Acknowledges every round, never answers a KEEPALIVE (the sender's
        /// pre-cutover drain).
        case ignoreKeepalive
        /// At the first ROUND_END: one 16 KiB TLS record of unsolicited
        /// KEEPALIVE replies, which the proxy in front delivers one byte every
        /// 100 ms (27 minutes for the record).
        case dripAfterFirstRound
        /// Answers HELLO with this WELCOME, then acknowledges everything.
        case welcome(version: WireVersion, capabilities: Capabilities, lastCommittedRound: UInt64?)
    }

    let behaviour: Behaviour
    private let listener: TCPListener
    private let context: TLSServerContext
    private var proxy: DripProxy?
    /// The port the sender dials (the proxy's, for `dripAfterFirstRound`).
    var port: UInt16 { proxy?.port ?? listener.port }

    /// What the receiver has seen and done so far.
    struct Counters {
        var roundEnds = 0
        var keepalivesSent = 0
        var connections = 0
        var errors: [ErrorMessage] = []
        /// What the last HELLO offered, and PAGE_BATCH frames in encoding delta.
        var helloCapabilities: Capabilities?
        var deltaBatches = 0
    }
    private let condition = NSCondition()
    private var counters = Counters()
    private var closed = false

    init(pki: TestPKI, _ behaviour: Behaviour) throws {
        self.behaviour = behaviour
        listener = try TCPListener(host: "127.0.0.1", port: 0)
        context = try TLSServerContext(configuration: pki.configuration("receiver"))
        if case .dripAfterFirstRound = behaviour { proxy = try DripProxy(upstream: listener.port) }
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    deinit { close() }

    func close() {
        condition.withLock { closed = true }
        listener.close()
        proxy?.close()
    }

    var seen: Counters { condition.withLock { counters } }

    /// Waits until `predicate` holds (bounded, only so a broken build cannot
    /// hang the suite); returns whether it does.
    @discardableResult
    func wait(seconds: Double = 60, until predicate: (Counters) -> Bool) -> Bool {
        let deadline = Date(timeIntervalSinceNow: seconds)
        condition.lock()
        defer { condition.unlock() }
        while !predicate(counters) {
            if !condition.wait(until: deadline) { return predicate(counters) }
        }
        return true
    }

    private func note(_ body: (inout Counters) -> Void) {
        condition.lock()
        body(&counters)
        condition.broadcast()
        condition.unlock()
    }

    // MARK: Serving

    private func acceptLoop() {
        while !condition.withLock({ closed }) {
            guard let tcp = try? listener.accept(timeout: .milliseconds(200)) else { continue }
            Thread.detachNewThread { [self] in
                guard let tls = try? context.accept(on: tcp) else { tcp.close(); return }
                note { $0.connections += 1 }
                serve(tls)
                tls.close()
            }
        }
    }

    private func serve(_ stream: TLSStream) {
        let channel = FrameChannel(stream: stream)
        var encoder = FrameEncoder()
        func send(_ messages: [Message]) throws {
            var out: [UInt8] = []
            for m in messages { try encoder.encode(m, into: &out) }
            try out.withUnsafeBytes { try stream.writeAll($0) }
        }
        do {
            var out: [UInt8] = []
            encoder.encodePreamble(into: &out)
            try out.withUnsafeBytes { try stream.writeAll($0) }
            guard case .hello(let hello) = try channel.receive() else { return }
            note { $0.helloCapabilities = hello.capabilities }
            let welcome: Welcome
            if case .welcome(let version, let caps, let round) = behaviour {
                welcome = Welcome(version: version, capabilities: caps, lastCommittedRound: round)
            } else {
                let resumed = hello.resumeFromRound.flatMap { $0 == 0 ? nil : $0 }
                welcome = Welcome(capabilities: hello.capabilities.intersection([.zstd, .keepalive, .resume]), lastCommittedRound: resumed)
            }
            try send([.welcome(welcome)])
            var acked = 0
            var stalled = false
            while true {
                // Idle while stalled: send a KEEPALIVE of our own, which the
                // sender answers (traffic that must not extend its deadline).
                if stalled, !(try stream.waitReadable(timeout: .milliseconds(200))) {
                    try send([.keepalive(Keepalive(nonce: UInt64(acked + 1000)))])
                    note { $0.keepalivesSent += 1 }
                    continue
                }
                switch try channel.receive() {
                case .roundEnd(let end):
                    note { $0.roundEnds += 1 }
                    let ack: Bool
                    switch behaviour {
                    case .neverAck: ack = false
                    case .ackThenStall(let n): ack = acked < n
                    case .ackAllButVerification: ack = end.finalDigest == nil
                    case .ignoreKeepalive, .welcome: ack = true
                    case .dripAfterFirstRound:
                        ack = false
                        proxy?.startDripping()
                        // Unsolicited replies: the sender skips them, once each is whole.
                        let filler = (0..<580).map { Message.keepalive(Keepalive(nonce: UInt64($0 + 1), isReply: true)) }
                        try send(filler)
                    }
                    if ack {
                        try send([.roundAck(RoundAck(round: end.round))])
                        acked += 1
                    } else {
                        stalled = true
                    }
                case .keepalive(let k):
                    if case .ignoreKeepalive = behaviour { continue }
                    if !k.isReply { try send([.keepalive(Keepalive(nonce: k.nonce, isReply: true))]) }
                case .pageBatch(let b):
                    if b.header.encoding == .delta { note { $0.deltaBatches += 1 } }
                case .error(let e):
                    note { $0.errors.append(e) }
                    return
                case .close:
                    return
                default:
                    continue
                }
            }
        } catch {
            return
        }
    }
}

/// A TCP relay in front of a receiver: the sender's bytes go through as they
/// come; the receiver's too, until `startDripping`, after which they go one
/// byte every 100 ms. TLS runs end to end through it, so the sender sees part
/// of a record arrive and waits for the rest.
final class DripProxy: @unchecked Sendable {  // flags behind `lock`
    private let listener: TCPListener
    private let upstream: UInt16
    private let lock = NSLock()
    private var dripping = false
    private var closed = false
    private var streams: [TCPStream] = []
    var port: UInt16 { listener.port }

    init(upstream: UInt16) throws {
        self.upstream = upstream
        listener = try TCPListener(host: "127.0.0.1", port: 0)
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    func startDripping() { lock.withLock { dripping = true } }

    func close() {
        let all = lock.withLock { closed = true; return streams }
        for s in all { s.abort() }
        listener.close()
    }

    private func acceptLoop() {
        while !lock.withLock({ closed }) {
            guard let down = try? listener.accept(timeout: .milliseconds(200)) else { continue }
            guard let up = try? TCPStream.connect(host: "127.0.0.1", port: upstream) else { down.close(); continue }
            lock.withLock { streams += [down, up] }
            Thread.detachNewThread { [self] in pump(from: down, to: up, drip: false) }
            Thread.detachNewThread { [self] in pump(from: up, to: down, drip: true) }
        }
    }

    private func pump(from: TCPStream, to: TCPStream, drip: Bool) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 << 10, alignment: 16)
        defer {
            buffer.deallocate()
            to.abort()
            from.abort()
        }
        while true {
            guard let n = try? from.read(into: buffer), n > 0 else { return }
            if drip && lock.withLock({ dripping }) {
                for i in 0..<n {
                    if lock.withLock({ closed }) { return }
                    guard (try? to.writeAll(UnsafeRawBufferPointer(rebasing: buffer[i..<(i + 1)]))) != nil else { return }
                    usleep(100_000)  // the behaviour under test: a peer dripping bytes
                }
            } else {
                guard (try? to.writeAll(UnsafeRawBufferPointer(rebasing: buffer[..<n]))) != nil else { return }
            }
        }
    }
}

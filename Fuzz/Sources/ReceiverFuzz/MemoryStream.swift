import MemhaulTLS

/// The sender's side of one connection, in memory: reads come from the fuzz input (in chunks
/// whose sizes come from the input too, so frame boundaries fall anywhere), writes are kept
/// so the harness can check the receiver's answers (WELCOME, ROUND_ACK, ...).
final class MemoryStream: ByteStream, @unchecked Sendable {  // one thread: the harness runs the session inline
    let input: [UInt8]
    private var offset = 0
    private let chunk: Int
    private(set) var output: [UInt8] = []
    private(set) var closed = false

    init(_ input: [UInt8], chunk: Int) {
        self.input = input
        self.chunk = max(chunk, 1)
        output.reserveCapacity(4096)
    }

    var peerDescription: String { "fuzz:0" }

    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, chunk, input.count - offset)
        guard n > 0 else { return 0 }
        input.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
        offset += n
        return n
    }

    func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        // A hostile sender cannot make us keep unbounded output: the receiver answers frames 1:1 at most.
        if output.count < 1 << 20 { output.append(contentsOf: buffer) }
    }

    func waitReadable(timeout: Duration?) throws -> Bool { true }
    func shutdown() {}
    func abort() { closed = true }
    func setTimeouts(read: Duration?, write: Duration?) throws {}
    func close() { closed = true }

    /// A fixed sender identity, so the harness goes through image ownership as a TLS peer would.
    var peerIdentity: PeerIdentity? { MemoryStream.fuzzSender }
    static let fuzzSender = PeerIdentity(
        commonName: "fuzz-sender", dnsNames: [], ipAddresses: [],
        sha256Fingerprint: String(repeating: "ab", count: 32), notAfter: Int64.max)
}

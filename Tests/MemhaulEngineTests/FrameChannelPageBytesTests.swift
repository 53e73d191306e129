import Foundation
import MemhaulSystem
import MemhaulTLS
import MemhaulWire
import Synchronization
import Testing
@testable import MemhaulSession
import MemhaulTestSupport

/// `FrameChannel.receive(pageBytesInto:)` over real mutual TLS on loopback: page
/// bytes go from the stream into the caller's buffer whatever the record and
/// read boundaries, and a stream that fails inside them breaks the channel.
@Suite struct FrameChannelPageBytesTests {
    /// A connected TLS pair: `writer` is the client, `reader` the server side.
    struct Pair {
        let writer: TLSStream
        let reader: TLSStream
    }

    func connect(_ pki: TestPKI) throws -> Pair {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let server = try TLSServerContext(configuration: pki.configuration("receiver"))
        let accepted = ThreadResult<TLSStream>.start { try server.accept(on: try listener.accept(timeout: .seconds(30))) }
        let writer = try TLSClientContext(configuration: pki.configuration("sender")).connect(host: "127.0.0.1", port: listener.port)
        return Pair(writer: writer, reader: try accepted.get())
    }

    static func pages(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<(count * 4096)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &* 7 &+ ($0 >> 12)) }
    }

    static func batch(round: UInt64, pages count: Int, seed: UInt8) -> PageBatch {
        let bytes = pages(count, seed: seed)
        let runs = count == 1 ? [PageRun(start: 0x10000, pageCount: 1)]
            : [PageRun(start: 0x10000, pageCount: 1), PageRun(start: 0x40000, pageCount: UInt32(count - 1))]
        return PageBatch(round: round, encoding: .raw, runs: runs, uncompressedLength: UInt32(bytes.count), checksum: UInt64(seed), payload: bytes[...])
    }

    /// The preamble and `messages` as frames numbered from 0.
    static func stream(_ messages: [Message]) throws -> [UInt8] {
        var bytes: [UInt8] = []
        Preamble.encode(into: &bytes)
        var encoder = FrameEncoder()
        for m in messages { try encoder.encode(m, into: &bytes) }
        return bytes
    }

    /// Reads until CLOSE with `receive(pageBytesInto:)`; each batch's page bytes into a fresh 4 MiB buffer.
    static func readAll(_ channel: FrameChannel) throws -> [Message] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        var got: [Message] = []
        while true {
            switch try channel.receive(pageBytesInto: { _ in buffer }) {
            case .pageBatch(let header):
                got.append(.pageBatch(PageBatch(header: header, payload: Array(buffer[0..<Int(header.payloadLength)])[...])))
            case .message(let m):
                got.append(m)
                if case .close = m { return got }
            }
        }
    }

    /// Every cut through a batch's first 200 bytes (frame header, batch header, the
    /// first page bytes) as two TLS writes (two records, two sends), and big batches in
    /// random pieces: the reader gets every byte in place.
    @Test func pageBytesArriveWholeWhateverTheRecordsAndReads() throws {
        let pki = try TestPKI()
        let pair = try connect(pki)
        var encoder = FrameEncoder()
        var expected: [Message] = []
        var pieces: [[UInt8]] = []
        var stream: [UInt8] = []
        Preamble.encode(into: &stream)
        pieces.append(stream)
        for cut in 0..<200 {
            let m = Message.pageBatch(Self.batch(round: 1, pages: 2, seed: UInt8(truncatingIfNeeded: cut)))
            var frame: [UInt8] = []
            try encoder.encode(m, into: &frame)
            pieces += [Array(frame[0..<cut]), Array(frame[cut...])]
            expected.append(m)
            if cut % 50 == 0 {
                let k = Message.keepalive(Keepalive(nonce: UInt64(cut)))
                var f: [UInt8] = []
                try encoder.encode(k, into: &f)
                pieces.append(f)
                expected.append(k)
            }
        }
        var rng = SplitMix64(seed: 9)
        for pagesCount in [1, 5, 64, 1024] {
            let m = Message.pageBatch(Self.batch(round: 2, pages: pagesCount, seed: UInt8(pagesCount & 0xFF)))
            var frame: [UInt8] = []
            try encoder.encode(m, into: &frame)
            var offset = 0
            while offset < frame.count {
                let n = min(Int.random(in: 1...40_000, using: &rng), frame.count - offset)
                pieces.append(Array(frame[offset..<(offset + n)]))
                offset += n
            }
            expected.append(m)
        }
        var close: [UInt8] = []
        try encoder.encode(.close(Close(reason: .complete)), into: &close)
        pieces.append(close)
        expected.append(.close(Close(reason: .complete)))

        let allPieces = pieces
        let writer = ThreadResult<Void>.start {
            for piece in allPieces where !piece.isEmpty { try pair.writer.write(piece) }
        }
        let channel = FrameChannel(stream: pair.reader)
        let got = try Self.readAll(channel)
        try writer.get()
        #expect(got.count == expected.count)
        #expect(got == expected)
        #expect(channel.bytesReceived == UInt64(pieces.reduce(0) { $0 + $1.count }))
        pair.writer.close()
        pair.reader.close()
    }

    /// `sendPageBatch` (headers inside the payload's first record) read both ways, whole
    /// frames and page bytes into a buffer, alternately on one channel.
    @Test func sentBatchesReadAsWholeFramesOrIntoABuffer() throws {
        let pki = try TestPKI()
        let pair = try connect(pki)
        let sizes = [1, 3, 4, 5, 16, 1024, 2, 1]  // payloads under, around and over one 16 KiB record
        let batches = sizes.enumerated().map { Self.batch(round: 1, pages: $0.element, seed: UInt8($0.offset)) }
        let sender = FrameChannel(stream: pair.writer)
        let writer = ThreadResult<Void>.start {
            try sender.sendPreamble()
            for b in batches {
                try b.payload.withUnsafeBytes { try sender.sendPageBatch(b.header, payload: $0) }
            }
            try sender.send(.close(Close(reason: .complete)))
        }
        let channel = FrameChannel(stream: pair.reader)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        for (i, b) in batches.enumerated() {
            if i % 2 == 0 {
                #expect(try channel.receive() == .pageBatch(b))
            } else {
                guard case .pageBatch(let header) = try channel.receive(pageBytesInto: { _ in buffer }) else {
                    Issue.record("batch \(i) not a page batch"); continue
                }
                #expect(header == b.header)
                #expect(Array(buffer[0..<Int(header.payloadLength)]) == Array(b.payload))
            }
        }
        #expect(try channel.receive() == .close(Close(reason: .complete)))
        try writer.get()
        #expect(channel.bytesReceived == sender.bytesSent)  // the preamble counts on both sides
        pair.writer.close()
        pair.reader.close()
    }

    /// Headers and half the page bytes, then close_notify: connectionClosed, and the
    /// channel stays broken (the stream is mid-frame).
    @Test func aPeerClosingInsideThePageBytesBreaksTheChannel() throws {
        let pair = try connect(try TestPKI())
        let bytes = try Self.stream([.pageBatch(Self.batch(round: 1, pages: 8, seed: 1))])
        try pair.writer.write(Array(bytes.prefix(bytes.count - 4 * 4096)))
        pair.writer.close()
        let channel = FrameChannel(stream: pair.reader)
        var sinks = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 * 4096, alignment: 4096)
        defer { buffer.deallocate() }
        #expect(throws: MigrationError.connectionClosed) { _ = try channel.receive(pageBytesInto: { _ in sinks += 1; return buffer }) }
        #expect(throws: MigrationError.connectionClosed) { _ = try channel.receive(pageBytesInto: { _ in sinks += 1; return buffer }) }
        #expect(throws: MigrationError.connectionClosed) { _ = try channel.receive() }
        #expect(sinks == 1)
        pair.reader.close()
    }

    struct NoSlot: Error, Equatable {}

    /// A sink that throws (the storage stage failed) leaves the page bytes unread:
    /// its error comes out, and again from every later receive.
    @Test func aThrowingSinkBreaksTheChannel() throws {
        let pair = try connect(try TestPKI())
        try pair.writer.write(try Self.stream([.pageBatch(Self.batch(round: 1, pages: 2, seed: 1)), .keepalive(Keepalive(nonce: 1))]))
        let channel = FrameChannel(stream: pair.reader)
        #expect(throws: NoSlot()) { _ = try channel.receive(pageBytesInto: { _ in throw NoSlot() }) }
        #expect(throws: NoSlot()) { _ = try channel.receive() }
        pair.writer.close()
        pair.reader.close()
    }

    /// A peer that stops inside the page bytes: the deadline holds for them too.
    @Test func aDeadlineCoversThePageBytes() throws {
        let pair = try connect(try TestPKI())
        let bytes = try Self.stream([.pageBatch(Self.batch(round: 1, pages: 4, seed: 1))])
        try pair.writer.write(Array(bytes.prefix(bytes.count - 4096)))  // and then nothing
        let channel = FrameChannel(stream: pair.reader)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 * 4096, alignment: 4096)
        defer { buffer.deallocate() }
        let deadline = PeerDeadline("page bytes", seconds: 0.3)
        #expect(throws: MigrationError.peerTimeout(wait: "page bytes", seconds: 0.3)) {
            _ = try channel.receive(by: deadline, pageBytesInto: { _ in buffer })
        }
        pair.writer.close()
        pair.reader.close()
    }
}

/// A value made on a thread of its own; `get()` waits for it (or rethrows the thread's error).
final class ThreadResult<T: Sendable>: Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let result = Mutex<Result<T, Error>?>(nil)

    static func start(_ body: @escaping @Sendable () throws -> T) -> ThreadResult {
        let r = ThreadResult()
        Thread.detachNewThread {
            let value = Result { try body() }
            r.result.withLock { $0 = value }
            r.done.signal()
        }
        return r
    }

    func get() throws -> T {
        done.wait()
        return try result.withLock { $0! }.get()
    }
}

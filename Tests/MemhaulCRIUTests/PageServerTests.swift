import Foundation
import Synchronization
import Testing
@testable import MemhaulCRIU
import MemhaulSystem
import MemhaulTLS
import MemhaulTestSupport

/// A lazy-pages client written for the test: the requests `criu lazy-pages
/// --page-server` sends (`criu/page-xfer.c`, `request_remote_pages`).
struct LazyPagesClient {
    let stream: TCPStream
    init(port: UInt16) throws { stream = try TCPStream.connect(host: "127.0.0.1", port: port).boundingReads() }

    func send(cmd: UInt32, pages: UInt64, address: UInt64, id: UInt64) throws {
        var iov = [UInt8](repeating: 0, count: 32)
        iov.withUnsafeMutableBytes {
            $0.storeBytes(of: cmd.littleEndian, toByteOffset: 0, as: UInt32.self)
            $0.storeBytes(of: pages.littleEndian, toByteOffset: 8, as: UInt64.self)
            $0.storeBytes(of: address.littleEndian, toByteOffset: 16, as: UInt64.self)
            $0.storeBytes(of: id.littleEndian, toByteOffset: 24, as: UInt64.self)
        }
        try iov.withUnsafeBytes { try stream.writeAll($0) }
    }

    /// PS_IOV_GET, then the answer's header fields and its pages.
    func get(pages: UInt64, address: UInt64, id: UInt64 = 4242) throws -> (cmd: UInt32, pages: UInt64, address: UInt64, data: [UInt8]) {
        try send(cmd: 7, pages: pages, address: address, id: id)
        var header = [UInt8](repeating: 0, count: 32)
        guard try header.withUnsafeMutableBytes({ try stream.readExactly(into: $0) }) else { throw CRIUError.io("server closed") }
        let h = header.withUnsafeBytes { ($0.load(fromByteOffset: 0, as: UInt32.self), $0.load(fromByteOffset: 8, as: UInt64.self), $0.load(fromByteOffset: 16, as: UInt64.self)) }
        var data = [UInt8](repeating: 0, count: Int(h.1) * 4096)
        guard try data.withUnsafeMutableBytes({ try stream.readExactly(into: $0) }) else { throw CRIUError.io("server closed") }
        return (h.0, h.1, h.2, data)
    }

    /// PS_IOV_CLOSE; the server answers an i32 status.
    func close() throws -> Int32 {
        try send(cmd: 0x1023, pages: 0, address: 0, id: 0)
        var status = [UInt8](repeating: 0xff, count: 4)
        guard try status.withUnsafeMutableBytes({ try stream.readExactly(into: $0) }) else { throw CRIUError.io("no status") }
        stream.close()
        return status.withUnsafeBytes { $0.load(as: Int32.self) }
    }

    /// True when the server has ended the session (end of stream, or an
    /// error other than the safety bound's timeout).
    func serverHungUp() -> Bool {
        var one = [UInt8](repeating: 0, count: 1)
        do {
            return try one.withUnsafeMutableBytes { try stream.read(into: $0) } == 0
        } catch NetworkError.timedOut {
            SafetyBound.recordHang("the page server's hang-up")
            return false
        } catch {
            return true
        }
    }
}

/// Runs a page server on an ephemeral loopback port in its own thread.
final class RunningServer: @unchecked Sendable {
    let port: UInt16
    private let result = Mutex<Result<CRIUPageServer.Stats, Error>?>(nil)
    private let done = DispatchSemaphore(value: 0)
    let log = LogLines()

    init(source: CRIUPageSource, pid: UInt64? = nil) throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        port = listener.port
        let server = CRIUPageServer(source: source, listener: listener, pid: pid, log: { [log] line in log.append(line) })
        let box = HandOff(server)
        Thread { [self] in
            let r = Result { try box.value.serveOneClient(acceptTimeout: .seconds(60)) }
            result.withLock { $0 = r }
            done.signal()
        }.start()
    }

    func wait() throws -> CRIUPageServer.Stats {
        guard done.waitBounded("the page server's end") else { throw CRIUError.io("the page server did not end") }
        return try result.withLock { $0! }.get()
    }
}

@Suite struct CRIUPageServerTests {
    let layout = [AddressRange(start: 0x7f00_0000_0000, end: 0x7f00_0010_0000)]

    @Test func servesPagesFromTheImageAndClosesOnRequest() throws {
        let source = PatternSource(layout)
        let server = try RunningServer(source: source, pid: 4242)
        let client = try LazyPagesClient(port: server.port)
        for (address, pages) in [(0x7f00_0000_0000 as UInt64, 1 as UInt64), (0x7f00_0000_5000, 16), (0x7f00_000f_f000, 1)] {
            let answer = try client.get(pages: pages, address: address)
            #expect(answer.cmd == 6 | 4 << 16)  // PS_IOV_ADD_F | PE_PRESENT << 16
            #expect(answer.pages == pages && answer.address == address)
            var expected = [UInt8](repeating: 0, count: answer.data.count)
            try expected.withUnsafeMutableBytes { try source.read(at: address, into: $0) }
            #expect(answer.data == expected)
        }
        #expect(try client.close() == 0)
        let stats = try server.wait()
        #expect(stats.requests == 3 && stats.pages == 18 && stats.end == "closed")
    }

    @Test func aRequestOutsideTheLayoutEndsTheSessionWithALogLine() throws {
        let server = try RunningServer(source: PatternSource(layout))
        let client = try LazyPagesClient(port: server.port)
        try client.send(cmd: 7, pages: 2, address: 0x7f00_000f_f000, id: 1)  // the second page is past the end
        #expect(client.serverHungUp())
        #expect(throws: CRIUPageServer.ServeError.outsideImage(AddressRange(start: 0x7f00_000f_f000, end: 0x7f00_0010_1000))) { try server.wait() }
        #expect(server.log.contains("outside the image"))
    }

    @Test func malformedRequestsEndTheSession() throws {
        for (cmd, pages, address, id): (UInt32, UInt64, UInt64, UInt64) in [
            (1, 1, 0x7f00_0000_0000, 4242),  // PS_IOV_ADD: a dump's command, not a lazy client's
            (7, 0, 0x7f00_0000_0000, 4242),  // zero pages
            (7, 1 << 40, 0x7f00_0000_0000, 4242),  // absurd size
            (7, 1, 0x7f00_0000_0800, 4242),  // unaligned
            (7, 1, 0x7f00_0000_0000, 99),  // another process
            (7, 2, UInt64.max - 4095, 4242),  // wraps
        ] {
            let server = try RunningServer(source: PatternSource(layout), pid: 4242)
            let client = try LazyPagesClient(port: server.port)
            try client.send(cmd: cmd, pages: pages, address: address, id: id)
            #expect(client.serverHungUp())
            #expect(throws: CRIUPageServer.ServeError.self) { try server.wait() }
        }
    }

    @Test func aSecondClientIsRefusedWhileTheFirstIsServed() throws {
        let server = try RunningServer(source: PatternSource(layout))
        let first = try LazyPagesClient(port: server.port)
        _ = try first.get(pages: 1, address: 0x7f00_0000_0000)  // the first is being served
        let second = try LazyPagesClient(port: server.port)
        #expect(second.serverHungUp())
        _ = try first.get(pages: 1, address: 0x7f00_0000_1000)  // still served
        #expect(try first.close() == 0)
        _ = try server.wait()
        #expect(server.log.contains("refused a second client"))
    }
}

final class LogLines: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    func contains(_ text: String) -> Bool { lines.withLock { $0.contains { $0.contains(text) } } }
}

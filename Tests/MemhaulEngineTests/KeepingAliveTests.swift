import Dispatch
import Foundation
import Testing
import MemhaulSession
import MemhaulTLS
import MemhaulWire

/// `FrameChannel.keepingAlive`: while local work runs (a `criu dump`), the peer
/// keeps seeing frames, so its frame deadline does not cut the connection.
@Suite struct KeepingAliveTests {
    @Test func thePeerSeesKeepalivesUntilTheWorkEnds() throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let near = FrameChannel(stream: try TCPStream.connect(host: "127.0.0.1", port: listener.port))
        let far = FrameChannel(stream: try listener.accept(timeout: .seconds(10)))
        try near.sendPreamble()
        let seenThree = DispatchSemaphore(value: 0)
        let peer = Thread {
            var keepalives = 0
            while let message = try? far.receive() {
                guard case .keepalive(let k) = message, !k.isReply else { break }
                keepalives += 1
                if keepalives == 3 { seenThree.signal() }
            }
        }
        peer.start()
        // The work ends only once the peer has seen three keepalives: without them it would never end.
        let value = try near.keepingAlive(every: 0.02) { () -> Int in
            guard seenThree.wait(timeout: .now() + 60) == .success else { return -1 }
            return 42
        }
        #expect(value == 42)
        near.close()
    }

    @Test func theWorksErrorIsThrown() throws {
        struct Refused: Error {}
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let near = FrameChannel(stream: try TCPStream.connect(host: "127.0.0.1", port: listener.port))
        _ = try listener.accept(timeout: .seconds(10))
        #expect(throws: Refused.self) { try near.keepingAlive(every: 0.02) { () -> Int in throw Refused() } }
        near.close()
    }
}

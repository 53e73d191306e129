import Foundation
import MemhaulSystem
import MemhaulWire
import Synchronization

extension FrameChannel {
    /// Runs `work` on a thread of its own while this thread sends a KEEPALIVE
    /// every `interval` seconds, so a peer that bounds its wait for the next
    /// frame (the receiver's frame deadline, 120 s) does not cut a connection
    /// that is only waiting on local work, such as `criu dump`. Replies are
    /// left for the next receive. The connection breaking does not stop `work`
    /// (it has its own bound); its error is thrown once `work` ends.
    public func keepingAlive<T: Sendable>(every interval: Double = 10, _ work: @escaping @Sendable () throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<Result<T, Error>?>(nil)
        let thread = Thread {
            let r = Result { try work() }
            result.withLock { $0 = r }
            done.signal()
        }
        thread.name = "memhaul-keepalive-work"
        thread.start()
        var sendError: Error?
        var nonce: UInt64 = 0
        while done.wait(timeout: .now() + interval) == .timedOut {
            guard sendError == nil else { continue }
            nonce &+= 1
            do { try send(.keepalive(Keepalive(nonce: nonce))) } catch { sendError = error }
        }
        let r = result.withLock { $0! }
        let value = try r.get()
        if let sendError { throw sendError }
        return value
    }
}

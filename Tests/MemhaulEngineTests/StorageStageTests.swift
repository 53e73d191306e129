import Foundation
import Glibc
import MemhaulDigest
import MemhaulImage
import MemhaulSystem
import MemhaulWire
import Synchronization
import Testing
@testable import MemhaulReceiver
import MemhaulTestSupport

/// The receiver's storage stage: batches are checked and stored on its own
/// thread, in order; the first error stops it and reaches the session.
@Suite struct StorageStageTests {
    let a: UInt64 = 0x4000_0000

    func batch(_ address: UInt64, pages: Int, seed: UInt8, badChecksum: Bool = false) -> PageBatch {
        var bytes = [UInt8](repeating: seed, count: pages * 4096)
        bytes[0] = seed &+ 1
        let sum = bytes.withUnsafeBytes { PageChecksum.xxh3_64($0) }
        let header = PageBatchHeader(
            round: 1, encoding: .raw, runs: [PageRun(start: address, pageCount: UInt32(pages))],
            uncompressedLength: UInt32(bytes.count), checksum: badChecksum ? sum ^ 1 : sum, payloadLength: UInt32(bytes.count))
        return PageBatch(header: header, payload: bytes[...])
    }

    func store(_ root: String) throws -> ImageStore {
        let store = try ImageStore.create(directory: root + "/img", migrationID: "stage")
        try store.beginRound(1, layout: [ImageRegion(start: a, end: a + 64 * 4096, protection: [.read, .write], name: "")])
        return store
    }

    @Test func batchesAreStoredInOrderOnTheStageThread() throws {
        let root = temporaryDirectory("stage")
        defer { removeTree(root) }
        let store = try store(root)
        let caller = pthread_self()
        let seen = Mutex<[(UInt64, Bool)]>([])
        let stage = StorageStage(store: store) { address, _ in
            seen.withLock { $0.append((address, pthread_equal(pthread_self(), caller) != 0)) }
        }
        for i in 0..<8 { try stage.submit(batch(a + UInt64(i) * 8 * 4096, pages: 8, seed: UInt8(i))) }
        try stage.submit(.zero([PageRun(start: a, pageCount: 1)]))  // after the batch that wrote page 0
        try stage.drain()
        #expect(!stage.needsDrain)
        stage.stop()
        #expect(seen.withLock { $0.map(\.0) } == (0..<8).map { a + UInt64($0) * 8 * 4096 })
        #expect(seen.withLock { $0.allSatisfy { !$0.1 } }, "stored on the session's thread")
        try store.commitRound()
        let page = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        try store.read(at: a, into: page)
        #expect(page.allSatisfy { $0 == 0 })
        try store.read(at: a + 9 * 4096, into: page)
        #expect(page.allSatisfy { $0 == 1 })
    }

    @Test func theFirstErrorStopsTheStageAndLaterWorkIsDropped() throws {
        let root = temporaryDirectory("stage")
        defer { removeTree(root) }
        let store = try store(root)
        let stored = Mutex(0)
        let stage = StorageStage(store: store) { _, _ in stored.withLock { $0 += 1 } }
        try stage.submit(batch(a, pages: 1, seed: 1, badChecksum: true))
        // Later submissions either queue (and are dropped) or see the error.
        for i in 1..<6 { _ = try? stage.submit(batch(a + UInt64(i) * 4096, pages: 1, seed: 2)) }
        #expect(stage.needsDrain, "an unreported error needs a drain")
        #expect(throws: ReceiverSession.Refusal.self) { try stage.drain() }
        #expect(throws: ReceiverSession.Refusal.self) { try stage.submit(batch(a, pages: 1, seed: 3)) }
        stage.stop()
        #expect(stored.withLock { $0 } == 0)
    }
}

import Foundation
import Testing
@testable import MemhaulCRIU
import MemhaulImage
import MemhaulSystem
import MemhaulTLS
import MemhaulTestSupport

/// The page server over a real memhaul image: what a lazy-pages client gets
/// is what `memhaul image read` prints.
@Suite struct ImagePageServerTests {
    static let base: UInt64 = 0x7f12_3400_0000
    static let pages = 64

    /// An image of one region: page i holds i's pattern, every 5th page zero.
    static func makeImage(complete: Bool = true) throws -> String {
        let root = temporaryDirectory("criu-image")
        let dir = try ImageStore.directory(root: root, migrationID: "criu-test")
        let store = try ImageStore.create(directory: dir, migrationID: "criu-test")
        try store.beginRound(1, layout: [ImageRegion(start: base, end: base + UInt64(pages) * 4096)])
        var bytes = [UInt8](repeating: 0, count: 4096)
        for p in 0..<pages where p % 5 != 0 {
            for i in 0..<4096 { bytes[i] = PatternSource.byte(base + UInt64(p * 4096 + i)) }
            try bytes.withUnsafeBytes { try store.writePages(at: base + UInt64(p) * 4096, $0) }
        }
        _ = try store.commitRound(final: complete)
        store.close()
        return dir
    }

    @Test func lazyPagesClientGetsWhatImageReadPrints() throws {
        let dir = try Self.makeImage()
        let source = try ImagePageSource(directory: dir, allowIncomplete: false)
        let server = try RunningServer(source: source)
        let client = try LazyPagesClient(port: server.port)
        let served = try client.get(pages: UInt64(Self.pages), address: Self.base).data
        #expect(try client.close() == 0)
        _ = try server.wait()
        let printed = try runProgram([builtBinary("memhaul"), "image", "read", dir, "0x" + String(Self.base, radix: 16), String(Self.pages * 4096), "-o", dir + "/../read.bin"])
        #expect(printed.status == 0)
        let read = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/../read.bin")))
        #expect(read.count == Self.pages * 4096)
        #expect(served == read)
        #expect(served[0..<4096].allSatisfy { $0 == 0 } && served[4096] == PatternSource.byte(Self.base + 4096))
    }

    @Test func anIncompleteImageIsRefusedUnlessAllowed() throws {
        let dir = try Self.makeImage(complete: false)
        #expect(throws: CRIUError.self) { try ImagePageSource(directory: dir, allowIncomplete: false) }
        _ = try ImagePageSource(directory: dir, allowIncomplete: true)
    }
}

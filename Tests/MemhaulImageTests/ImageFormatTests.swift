import Foundation
import Glibc
import Testing
@testable import MemhaulImage
import MemhaulTestSupport

/// Damaged manifests and journals are refused with the error that names the damage.
@Suite struct ImageFormatTests {
    let a: UInt64 = 0x4000_0000

    /// An image with round 1 committed and round 2 committed but not applied.
    func makeImage(_ root: String) throws -> String {
        let dir = root + "/fmt"
        let store = try ImageStore.create(directory: dir, migrationID: "fmt")
        try store.beginRound(1, layout: [region(a, pages: 8)])
        try store.write(a, pageBytes(1, pages: 8))
        try store.commitRound()
        try store.beginRound(2, layout: [region(a, pages: 8)])
        try store.write(a, pageBytes(2, pages: 2))
        try store.write(a + 4 * 4096, pageBytes(3, pages: 2))
        store.testStopAfterPublish = true
        _ = try? store.commitRound()
        store.close()
        return dir
    }

    func edit(_ path: String, _ change: (inout [UInt8]) -> Void) throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        change(&bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    func expectOpen(_ dir: String, throws expected: ImageError) {
        #expect(throws: expected) { _ = try ImageStore.open(directory: dir) }
    }

    @Test func manifestDamage() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = try makeImage(root)
        let manifest = dir + "/manifest"
        let good = try Data(contentsOf: URL(fileURLWithPath: manifest))
        func reset() throws { try good.write(to: URL(fileURLWithPath: manifest)) }

        try edit(manifest) { $0[0] = UInt8(ascii: "X") }
        expectOpen(dir, throws: .badMagic(file: manifest))
        try reset()
        try edit(manifest) { $0[40] ^= 0x01 }
        expectOpen(dir, throws: .badChecksum(file: manifest))
        try reset()
        for keep in [0, 5, 20, good.count / 2, good.count - 1] {
            try edit(manifest) { $0 = Array($0[0..<keep]) }
            expectOpen(dir, throws: .truncated(file: manifest))
            try reset()
        }
        try edit(manifest) { $0[8] = 4 }  // major 4
        expectOpen(dir, throws: .unsupportedVersion(file: manifest, major: 4, minor: ImageFormat.minor))
        try reset()
        // A newer minor is read (fields are only ever appended); checksum must still match.
        try edit(manifest) { bytes in
            bytes[10] = 7
            let end = bytes.count - 8
            let sum = bytes[0..<end].withUnsafeBytes { checksum64($0) }
            withUnsafeBytes(of: sum.littleEndian) { bytes.replaceSubrange(end..<bytes.count, with: $0) }
        }
        let store = try ImageStore.open(directory: dir)
        #expect(store.committedRound == 2)
        #expect(try store.readBytes(a, 2 * page) == pageBytes(2, pages: 2))
    }

    @Test func journalDamage() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = try makeImage(root)
        let journal = dir + "/journal-0000000002"
        let good = try Data(contentsOf: URL(fileURLWithPath: journal))
        func reset() throws { try good.write(to: URL(fileURLWithPath: journal)) }

        try edit(journal) { $0[1] = 0 }
        expectOpen(dir, throws: .badMagic(file: journal))
        try reset()
        try edit(journal) { $0[9] = 1 }  // major 0x0101
        expectOpen(dir, throws: .unsupportedVersion(file: journal, major: 0x101, minor: 0))
        try reset()
        try edit(journal) { $0[20] ^= 0xff }  // header checksum
        expectOpen(dir, throws: .badChecksum(file: journal))
        try reset()
        try edit(journal) { $0[32 + 32 + 100] ^= 0x40 }  // page data of the first record
        expectOpen(dir, throws: .badChecksum(file: journal))
        try reset()
        for keep in [4, 31, 40, 32 + 32 + 4096, good.count - 1] {
            try edit(journal) { $0 = Array($0[0..<keep]) }
            expectOpen(dir, throws: .truncated(file: journal))
            try reset()
        }
        // Damage refused the open but changed nothing: the intact journal still recovers round 2.
        let store = try ImageStore.open(directory: dir)
        #expect(store.recovery == .reappliedJournal(round: 2))
        #expect(try store.readBytes(a, 8 * page) == pageBytes(2, pages: 2) + Array(pageBytes(1, pages: 8)[2 * page..<4 * page]) + pageBytes(3, pages: 2) + Array(pageBytes(1, pages: 8)[6 * page..<8 * page]))
    }

    @Test func missingRegionFileIsCorruption() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = try makeImage(root)
        _ = try ImageStore.open(directory: dir)  // applies round 2
        let file = dir + "/" + memFiles(dir)[0]
        try FileManager.default.removeItem(atPath: file)
        expectOpen(dir, throws: .corrupt(file: file, reason: "region file missing"))
    }

    @Test func uncommittedJournalIsDiscardedWhateverItHolds() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = try makeImage(root)
        _ = try ImageStore.open(directory: dir)  // applies round 2
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: dir + "/journal-0000000003"))
        let store = try ImageStore.open(directory: dir)
        #expect(store.recovery == .discardedJournal(round: 3))
        #expect(store.committedRound == 2)
        #expect(!FileManager.default.fileExists(atPath: dir + "/journal-0000000003"))
    }
}

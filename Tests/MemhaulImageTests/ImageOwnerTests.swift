import Foundation
import Glibc
import MemhaulSystem
import Testing
@testable import MemhaulImage
import MemhaulTestSupport

/// The owner record (image.md, "owner"): written before the first manifest,
/// 0600, kept by commits, recovery and checkpoints, damage is an error.
@Suite struct ImageOwnerTests {
    let a: UInt64 = 0x4000_0000
    let owner = ImageOwner(
        fingerprint: String(repeating: "0123456789abcdef", count: 4), commonName: "sender-a",
        subject: "CN=sender-a SAN=[] sha256=…")

    @Test func recordedAtCreateAndKeptThroughCommitsRecoveryAndCheckpoints() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/own"
        let store = try ImageStore.create(directory: dir, migrationID: "own", owner: owner)
        var st = stat()
        #expect(stat(dir + "/owner", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        let recorded = try #require(try ImageStore.owner(directory: dir, migrationID: "own"))
        #expect(recorded.fingerprint == owner.fingerprint && recorded.commonName == "sender-a" && recorded.subject == owner.subject)
        #expect(recorded.recordedAt > 0)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: dir + "/owner"))
        try store.beginRound(1, layout: [region(a, pages: 8)])
        try store.write(a, pageBytes(1, pages: 8))
        try store.commitRound()
        try store.beginRound(2, layout: [region(a, pages: 8)])
        try store.write(a, pageBytes(2, pages: 2))
        store.testStopAfterPublish = true
        _ = try? store.commitRound()
        store.close()
        // Recovery replays the journal and checkpoints: the owner stays as it was.
        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.recovery == .reappliedJournal(round: 2))
        try reopened.checkpoint()
        #expect(try reopened.info().owner.get() == recorded)
        reopened.close()
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/owner")) == bytes)
        #expect(try ImageStore.peek(directory: dir).owner.get() == recorded)
    }

    @Test func imagesWithoutAnOwnerHaveNone() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/anon", migrationID: "anon")
        #expect(try store.info().owner.get() == nil)
        store.close()
        #expect(try ImageStore.owner(directory: root + "/anon") == nil)
    }

    @Test func damageIsAnErrorNotNoOwner() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/dmg"
        try ImageStore.create(directory: dir, migrationID: "dmg", owner: owner).close()
        let path = dir + "/owner"
        let good = try Data(contentsOf: URL(fileURLWithPath: path))
        func damaged(_ change: (inout [UInt8]) -> Void, _ expected: ImageError, id: String? = "dmg") throws {
            var bytes = [UInt8](good)
            change(&bytes)
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            #expect(throws: expected) { _ = try ImageStore.owner(directory: dir, migrationID: id) }
        }
        try damaged({ $0[0] = UInt8(ascii: "X") }, .badMagic(file: path))
        try damaged({ $0[30] ^= 1 }, .badChecksum(file: path))
        try damaged({ $0 = Array($0[0..<20]) }, .truncated(file: path))
        try damaged({ $0[8] = 2 }, .unsupportedVersion(file: path, major: 2, minor: 0))
        try damaged({ _ in }, .corrupt(file: path, reason: "owner record of migration dmg, not other"), id: "other")
    }

    /// A failed owner write leaves no manifest (so never an image without its
    /// owner record) and no owner.tmp.
    @Test func failedOwnerWriteLeavesNoImage() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = root + "/fail"
        Syscall.withFaults([.init("fsync(\(dir)/owner.tmp)", .EIO)]) {
            #expect(throws: ImageError.io(file: dir + "/owner.tmp", call: "fsync", errno: .EIO)) {
                _ = try ImageStore.create(directory: dir, migrationID: "fail", owner: owner)
            }
        }
        #expect(access(dir + "/manifest", F_OK) != 0)
        #expect(access(dir + "/owner.tmp", F_OK) != 0)
        #expect(throws: ImageError.notAnImage(directory: dir)) { _ = try ImageStore.open(directory: dir) }
    }
}

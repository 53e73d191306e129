import MemhaulSystem
import Foundation
import Glibc
import MemhaulDigest
import Testing
import MemhaulTestSupport
@testable import MemhaulImage

/// What a directory holds, to the byte and the modification time: a reader must
/// leave it exactly as it found it.
struct DirectorySnapshot: Equatable {
    struct Entry: Equatable {
        var bytes: [UInt8]
        var size: Int64
        var mtimeSeconds: Int
        var mtimeNanoseconds: Int
        var inode: UInt64
    }
    var entries: [String: Entry] = [:]

    init(_ dir: String) throws {
        for name in ["."] + ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []) {
            var st = stat()
            guard lstat(dir + "/" + name, &st) == 0 else { continue }
            let bytes = name == "." ? [] : [UInt8]((try? Data(contentsOf: URL(fileURLWithPath: dir + "/" + name))) ?? Data())
            entries[name] = Entry(
                bytes: bytes, size: Int64(st.st_size), mtimeSeconds: st.st_mtim.tv_sec, mtimeNanoseconds: st.st_mtim.tv_nsec,
                inode: UInt64(st.st_ino))
        }
    }
}

/// `mount --bind dir dir` remounted read-only, undone by `unmount()`.
final class ReadOnlyMount {
    let path: String
    init(_ path: String) throws {
        self.path = path
        try Self.run(["--bind", path, path])
        do { try Self.run(["-o", "remount,bind,ro", path]) } catch {
            _ = try? Self.umount(path)
            throw error
        }
    }
    private var mounted = true
    func unmount() {
        guard mounted else { return }
        mounted = false
        try? Self.umount(path)
    }
    deinit { unmount() }

    static func run(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/mount")
        p.arguments = args
        try p.run()
        let watchdog = SafetyBound.Watchdog(pid: p.processIdentifier, "mount to end")
        defer { watchdog.end() }
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw CocoaError(.fileWriteNoPermission) }
    }
    static func umount(_ path: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/umount")
        p.arguments = [path]
        try p.run()
        let watchdog = SafetyBound.Watchdog(pid: p.processIdentifier, "umount to end")
        defer { watchdog.end() }
        p.waitUntilExit()
    }
}

extension ImageReader {
    /// Every region of the committed layout equals the model, and so does the digest.
    func matches(_ model: MemoryModel) throws -> Bool {
        guard layout == model.layout else { return false }
        for r in layout where try readBytes(r.start, Int(r.byteCount)) != model.bytes(r.start, r.end) { return false }
        return try computeDigest() == model.digest()
    }
}

/// Read-only access (`ImageReader`): shared lock or none, no recovery writes,
/// committed journals read through in memory.
@Suite(.serialized) struct ImageReaderTests {
    let a: UInt64 = 0x5000_0000
    let b: UInt64 = 0x5100_0000

    /// Ten rounds that overwrite, zero, discard, shrink, regrow (grown ranges)
    /// and move regions to new files, each committed as a receiver does.
    func runRounds(_ store: ImageStore, _ model: inout MemoryModel) throws {
        func round(_ k: UInt32, _ layout: [ImageRegion], _ body: () throws -> Void) throws {
            try store.beginRound(k, layout: layout)
            model.setLayout(layout)
            try body()
            try store.commitRound(deferApply: true)
            try store.finishApply()
        }
        func write(_ address: UInt64, _ seed: UInt64, _ pages: Int) throws {
            let bytes = pageBytes(seed, pages: pages)
            try store.write(address, bytes)
            model.write(address, bytes)
        }
        let a16 = [region(a, pages: 16)]
        try round(1, a16) { try write(a, 1, 16) }
        try round(2, a16) { try write(a, 2, 8) }
        try round(3, [region(a, pages: 8)]) {}
        try round(4, a16) { try write(a + 12 * 4096, 4, 2) }
        try round(5, a16 + [region(b, pages: 4)]) {
            try write(b, 5, 4)
            try store.zeroPages(AddressRange(start: a, end: a + 4096))
            model.clear(AddressRange(start: a, end: a + 4096))
        }
        try round(6, a16 + [region(b, pages: 4)]) { try write(b, 6, 1) }
        try round(7, a16) {}
        try round(8, a16 + [region(b, pages: 4)]) { try write(b + 4096, 8, 1) }
        try round(9, a16) {
            try write(a + 3 * 4096, 9, 2)
            try store.discardPages(AddressRange(start: a + 14 * 4096, end: a + 15 * 4096))
            model.clear(AddressRange(start: a + 14 * 4096, end: a + 15 * 4096))
        }
        try round(10, a16 + [region(b, pages: 4)]) {}
    }

    /// A crashed receiver left ten committed journals (never applied, or applied
    /// only in the page cache). On a read-only mount, where the writer's open
    /// cannot even take its lock, the reader returns the committed content and
    /// digest by reading the journals through, and changes nothing.
    @Test(arguments: [true, false])
    func readsUnappliedJournalsOnAReadOnlyMount(appliesLost: Bool) throws {
        let root = temporaryDirectory("reader")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "reader")
        store.checkpointThreshold = .max
        store.testSkipApply = appliesLost
        var model = MemoryModel()
        try runRounds(store, &model)
        store.testCrash()

        let mount = try ReadOnlyMount(dir)
        let before = try DirectorySnapshot(dir)
        #expect(throws: ImageError.self) { try ImageStore.open(directory: dir) }  // the old way: EROFS
        let reader = try ImageReader.open(directory: dir)
        #expect(!reader.live)
        #expect(reader.committedRound == 10)
        #expect(reader.journalsReadThrough == Array(1...10))
        #expect(try reader.matches(model))
        #expect(try reader.readBytes(a + 8 * 4096, 4 * 4096) == [UInt8](repeating: 0, count: 4 * 4096))
        let digest = try reader.computeDigest()
        #expect(try reader.info().committedRound == 10)
        #expect(try reader.isUnchanged())
        reader.close()
        #expect(try DirectorySnapshot(dir) == before)
        mount.unmount()

        // What the reader returned is what recovery makes of the image.
        let reopened = try ImageStore.open(directory: dir)
        #expect(reopened.recovery == .reappliedJournal(round: 10))
        #expect(try reopened.computeDigest() == digest)
        #expect(try reopened.matches(model))
    }

    /// A reader opened while a receiver holds the image neither waits for the
    /// lock nor touches a file (bytes and mtimes identical, even with a round's
    /// apply still deferred), reads the committed round, and notices a later commit.
    @Test func aReaderBesideALiveWriterDoesNotBlockOrModifyIt() throws {
        let root = temporaryDirectory("reader")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "live")
        store.checkpointThreshold = .max
        var model = MemoryModel()
        let layout = [region(a, pages: 8), region(b, pages: 4)]
        model.setLayout(layout)
        try store.beginRound(1, layout: layout)
        try store.write(a, pageBytes(1, pages: 8))
        model.write(a, pageBytes(1, pages: 8))
        try store.commitRound()
        try store.beginRound(2, layout: layout)
        try store.write(a + 4096, pageBytes(2, pages: 2))
        model.write(a + 4096, pageBytes(2, pages: 2))
        try store.write(b, pageBytes(3, pages: 1))
        model.write(b, pageBytes(3, pages: 1))
        try store.commitRound(deferApply: true)  // acknowledged, journal not applied yet

        let before = try DirectorySnapshot(dir)
        let reader = try ImageReader.open(directory: dir)
        #expect(reader.live)
        #expect(reader.committedRound == 2)
        #expect(reader.journalsReadThrough == [1, 2])  // no checkpoint yet
        #expect(try reader.matches(model))
        #expect(try reader.isUnchanged())
        let info = try reader.info()
        #expect(info.committedRound == 2 && info.pendingJournals == [1, 2])
        #expect(throws: ImageError.locked(directory: dir)) { try ImageReader.open(directory: dir, requireLock: true) }
        #expect(try DirectorySnapshot(dir) == before)

        // The writer goes on; the reader sees its snapshot is stale.
        try store.finishApply()
        try store.beginRound(3, layout: [region(a, pages: 8)])
        try store.write(a, pageBytes(4, pages: 1))
        try store.commitRound()
        #expect(try !reader.isUnchanged())
        #expect(throws: ImageError.changedWhileReading(directory: dir)) { try reader.checkUnchanged() }
        reader.close()
        store.close()
    }

    /// Readers share the lock; while one holds it a writer's open is refused
    /// (it cannot recover under a reader), and it opens once the reader is gone.
    @Test func readersShareTheLockAndKeepWritersOut() throws {
        let root = temporaryDirectory("reader")
        defer { removeTree(root) }
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "shared")
        try store.beginRound(1, layout: [region(a, pages: 2)])
        try store.write(a, pageBytes(1, pages: 2))
        try store.commitRound(final: true)
        store.close()

        let one = try ImageReader.open(directory: dir)
        let two = try ImageReader.open(directory: dir)
        #expect(!one.live && !two.live)
        #expect(throws: ImageError.locked(directory: dir)) { try ImageStore.open(directory: dir) }
        #expect(try one.readBytes(a, 2 * page) == pageBytes(1, pages: 2))
        one.close()
        two.close()
        let writer = try ImageStore.open(directory: dir)
        #expect(writer.state == .complete)
        writer.close()
    }

    /// The commit's counters are kept, not only returned: `lastCommit` is what
    /// `commitRound` returned, and a deferred commit says so.
    @Test func theStoreRecordsWhatTheLastCommitDid() throws {
        let root = temporaryDirectory("reader")
        defer { removeTree(root) }
        let store = try ImageStore.create(directory: root + "/img", migrationID: "counters")
        #expect(store.lastCommit == nil)
        try store.beginRound(1, layout: [region(a, pages: 4)])
        try store.write(a, pageBytes(1, pages: 4))
        let one = try store.commitRound()
        #expect(store.lastCommit == one)
        #expect(one.record.dataPages == 4 && one.directBytes == UInt64(4 * page) && !one.applyDeferred)
        try store.beginRound(2, layout: [region(a, pages: 4)])
        try store.write(a, pageBytes(2, pages: 1))
        let two = try store.commitRound(deferApply: true)
        #expect(two.applyDeferred && two.record.dataPages == 1 && two.directBytes == 0)
        try store.checkpoint()  // joins the apply
        #expect(store.lastCommit?.round == 2 && store.lastCommit?.record == two.record)
        store.close()
    }

    @Test func notAnImage() throws {
        let root = temporaryDirectory("reader")
        defer { removeTree(root) }
        #expect(throws: ImageError.notAnImage(directory: root)) { try ImageReader.open(directory: root) }
        #expect(throws: ImageError.notAnImage(directory: root + "/missing")) { try ImageReader.open(directory: root + "/missing") }
    }

    /// `memhaul image read`, `inspect --verify-digest` and `verify` on an image
    /// mounted read-only: they used to open it for writing (lock file O_RDWR,
    /// recovery), which fails with EROFS.
    @Test func cliReadInspectAndVerifyOnAReadOnlyMount() throws {
        let root = temporaryDirectory("reader")
        defer { removeTree(root) }
        let dir = root + "/img"
        let made = try run([builtBinary("memhaul"), "image", "torture", dir, "--rounds", "4"])
        #expect(made.status == 0, "\(made.err)")
        let layout: [ImageRegion]
        let expected: [UInt8]
        let digest: MemoryDigest
        do {
            let store = try ImageStore.open(directory: dir)
            layout = store.layout
            expected = try store.readBytes(layout[0].start, Int(layout[0].byteCount))
            digest = try store.computeDigest(version: .v2)  // what inspect recomputes without a stored digest
            store.close()
        }
        let mount = try ReadOnlyMount(dir)
        defer { mount.unmount() }
        let before = try DirectorySnapshot(dir)

        let out = root + "/read.bin"
        let read = try run([
            builtBinary("memhaul"), "image", "read", dir, "0x" + String(layout[0].start, radix: 16), String(layout[0].byteCount), "-o", out,
        ])
        #expect(read.status == 0, "\(read.err)")
        #expect([UInt8]((try? Data(contentsOf: URL(fileURLWithPath: out))) ?? Data()) == expected)

        let inspect = try run([builtBinary("memhaul"), "image", "inspect", dir, "--json", "--verify-digest"])
        #expect(inspect.status == 0, "\(inspect.err)")
        #expect(inspect.out.contains("\"recomputed_digest\":\"\(digest.hex)\""), "\(inspect.out)")
        #expect(inspect.out.contains("\"committed_round\":4"), "\(inspect.out)")

        // A stopped process that holds none of it: verify reads the image and reports the difference.
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["60"]
        try sleeper.run()
        defer {
            kill(sleeper.processIdentifier, SIGKILL)
            sleeper.waitUntilExit()
        }
        kill(sleeper.processIdentifier, SIGSTOP)
        var state = ""
        for _ in 0..<1000 where state != "T" && state != "t" {
            let stat = (try? String(contentsOfFile: "/proc/\(sleeper.processIdentifier)/stat", encoding: .utf8)) ?? ""
            state = stat.split(separator: ")").last.map { String($0.dropFirst().prefix(1)) } ?? ""
            if state != "T" && state != "t" { sched_yield() }
        }
        let verify = try run([builtBinary("memhaul"), "image", "verify", dir, "--pid", "\(sleeper.processIdentifier)", "--json"])
        #expect(verify.status == 1, "\(verify.err)")
        #expect(verify.out.contains("\"ok\":false") && verify.out.contains("\"regions\":\(layout.count)"), "\(verify.out) \(verify.err)")
        #expect(try DirectorySnapshot(dir) == before)
    }

    func run(_ argv: [String]) throws -> (status: Int32, out: String, err: String) {
        let r = try runProgram(argv)
        return (r.status, r.out, r.err)
    }
}

import Foundation
import Glibc
import MemhaulImage
import Testing
import MemhaulTestSupport

/// `memhaul image read … -o FILE` writes FILE in place, like `cat > FILE`.
@Suite(.serialized) struct ImageReadOutputTests {
    static let base: UInt64 = 0x6000_0000
    /// makedev(1, 3), the /dev/null device (a macro Swift does not import).
    static let nullDevice: dev_t = (1 << 8) | 3

    /// An image with one page of `pageBytes(7)` at `base`; returns its directory.
    func makeImage(_ root: String) throws -> String {
        let dir = root + "/img"
        let store = try ImageStore.create(directory: dir, migrationID: "out")
        try store.beginRound(1, layout: [region(Self.base, pages: 1)])
        try store.write(Self.base, pageBytes(7, pages: 1))
        _ = try store.commitRound()
        store.close()
        return dir
    }

    func read(_ dir: String, to output: String) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: builtBinary("memhaul"))
        p.arguments = ["image", "read", dir, "0x\(String(Self.base, radix: 16))", "4K", "-o", output]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let watchdog = SafetyBound.Watchdog(pid: p.processIdentifier, "memhaul image read to end")
        defer { watchdog.end() }
        p.waitUntilExit()
        return p.terminationStatus
    }

    func fileType(_ path: String) -> mode_t? {
        var st = stat()
        return lstat(path, &st) == 0 ? st.st_mode & S_IFMT : nil
    }

    /// A character device stays one. The test uses its own null device (same
    /// major/minor as /dev/null, made with mknod) so that a regression cannot
    /// replace the machine's /dev/null.
    @Test func aCharacterDeviceStaysADevice() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = try makeImage(root)
        let null = root + "/null"
        try #require(mknod(null, S_IFCHR | 0o666, Self.nullDevice) == 0, "mknod: errno \(errno)")
        #expect(try read(dir, to: null) == 0)
        #expect(fileType(null) == S_IFCHR, "the device node was replaced")
        var st = stat()
        #expect(stat(null, &st) == 0 && st.st_rdev == Self.nullDevice)
    }

    @Test func throughASymlinkTheTargetIsWrittenAndTheLinkKept() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = try makeImage(root)
        let target = root + "/target.bin"
        try Data("old contents, longer than nothing".utf8).write(to: URL(fileURLWithPath: target))
        let link = root + "/link.bin"
        try #require(symlink(target, link) == 0)
        #expect(try read(dir, to: link) == 0)
        #expect(fileType(link) == S_IFLNK, "the symbolic link was replaced")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == target)
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: target))) == pageBytes(7, pages: 1))
    }

    @Test func aNewFileIsOwnerOnlyAndHoldsThePage() throws {
        let root = temporaryDirectory()
        defer { removeTree(root) }
        let dir = try makeImage(root)
        let out = root + "/new.bin"
        #expect(try read(dir, to: out) == 0)
        var st = stat()
        #expect(stat(out, &st) == 0 && st.st_mode & 0o777 == 0o600, "mode \(String(st.st_mode & 0o777, radix: 8))")
        #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: out))) == pageBytes(7, pages: 1))
    }
}

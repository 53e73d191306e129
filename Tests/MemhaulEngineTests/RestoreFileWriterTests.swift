import Foundation
import MemhaulWire
import Testing
@testable import MemhaulReceiver

/// The receiver's side of RESTORE_FILE: what a hostile (authorised) sender can
/// make it write. Names are checked by the codec too; here the writer's own rules.
@Suite struct RestoreFileWriterTests {
    static func directory() -> String { NSTemporaryDirectory() + "memhaul-restore-\(UInt64.random(in: 0...UInt64.max))/criu" }

    static func writer(maxFiles: Int = 4, maxBytes: UInt64 = 100) throws -> RestoreFileWriter {
        let dir = directory()
        try FileManager.default.createDirectory(atPath: (dir as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        return try RestoreFileWriter(directory: dir, maxFiles: maxFiles, maxTotalBytes: maxBytes)
    }

    static func chunk(_ name: String, _ offset: UInt64, _ text: String) -> RestoreFile {
        RestoreFile(name: name, offset: offset, data: ArraySlice(text.utf8))
    }

    static func code(_ body: () throws -> Void) -> ErrorCode? {
        do { try body(); return nil } catch let r as ReceiverSession.Refusal { return r.code } catch { return .internalError }
    }

    @Test func filesAreWrittenInOrderAndCounted() throws {
        let w = try Self.writer()
        try w.write(Self.chunk("core-1.img", 0, "abc"))
        try w.write(Self.chunk("mm-1.img", 0, ""))
        try w.write(Self.chunk("core-1.img", 3, "def"))  // back to an earlier file: appended
        try w.finish(RestoreBegin(fileCount: 2, totalBytes: 6))
        #expect(try String(contentsOfFile: w.directory + "/core-1.img", encoding: .utf8) == "abcdef")
        #expect(FileManager.default.fileExists(atPath: w.directory + "/mm-1.img"))
        let mode = try FileManager.default.attributesOfItem(atPath: w.directory + "/core-1.img")[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test func holesOverwritesAndLimitsAreRefused() throws {
        let w = try Self.writer(maxFiles: 2, maxBytes: 10)
        try w.write(Self.chunk("a.img", 0, "12345"))
        #expect(Self.code { try w.write(Self.chunk("a.img", 9, "x")) } == .restoreFailed)  // a hole
        #expect(Self.code { try w.write(Self.chunk("a.img", 0, "x")) } == .restoreFailed)  // an overwrite
        try w.write(Self.chunk("b.img", 0, "1234"))
        #expect(Self.code { try w.write(Self.chunk("c.img", 0, "")) } == .restoreFailed)  // a third file
        #expect(Self.code { try w.write(Self.chunk("b.img", 4, "12")) } == .restoreFailed)  // 11 bytes > 10
        #expect(Self.code { try w.finish(RestoreBegin(fileCount: 3, totalBytes: 9)) } == .restoreFailed)  // counts differ
    }

    @Test func namesOutsideTheRuleAndSymlinksAreRefused() throws {
        let w = try Self.writer()
        for bad in ["../x", "a/b", ".hidden", ".."] {
            #expect(Self.code { try w.write(RestoreFile(name: bad, offset: 0, data: [])) } == .restoreFailed, "\(bad)")
        }
        // A symlink planted in the directory is not followed.
        let outside = (w.directory as NSString).deletingLastPathComponent + "/outside"
        FileManager.default.createFile(atPath: outside, contents: Data("keep".utf8))
        symlink(outside, w.directory + "/link.img")
        #expect(Self.code { try w.write(Self.chunk("link.img", 0, "x")) } == .storageFailure)
        #expect(try String(contentsOfFile: outside, encoding: .utf8) == "keep")
    }

    @Test func anEarlierAttemptsFilesAreRemoved() throws {
        let dir = Self.directory()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: dir + "/stale.img", contents: Data("old".utf8))
        let w = try RestoreFileWriter(directory: dir, maxFiles: 4, maxTotalBytes: 100)
        #expect(!FileManager.default.fileExists(atPath: dir + "/stale.img"))
        try w.write(Self.chunk("stale.img", 0, "new"))
    }
}

import Foundation
import Glibc
import Testing
import MemhaulTestSupport

/// `--control PATH` of a real agent never removes what is not a stale socket.
@Suite(.serialized) struct ControlPathCLITests {
    static let memhaul = builtBinary("memhaul")

    func runMemhaul(_ args: [String], executable: String) throws -> (status: Int32, out: String, err: String) {
        let r = try runProgram([executable] + args)
        return (r.status, r.out, r.err)
    }

    func expectRefused(_ control: String, _ what: String) throws {
        let images = NSTemporaryDirectory() + "memhaul-cli-ctl-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: images) }
        for args in [["receive", "--listen", "127.0.0.1:0", "--images", images, "--insecure", "--control", control],
                     ["sender", "--insecure", "--control", control]] {
            // Under timeout(1): an agent that started anyway is ended (status 124), not waited for.
            let r = try runMemhaul(["20", Self.memhaul] + args, executable: "/usr/bin/timeout")
            #expect(r.status != 0, "\(args[0]) started on \(control)")
            #expect(r.err.contains(control) && r.err.contains(what), "\(args[0]) stderr: \(r.err)")
        }
    }

    @Test func aRegularFileOrASymlinkAtTheControlPathIsLeftAlone() throws {
        let dir = NSTemporaryDirectory() + "memhaul-cli-ctlpath-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/precious.conf"
        try Data("keep me\n".utf8).write(to: URL(fileURLWithPath: file))
        try expectRefused(file, "not a socket")
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me\n")

        let link = dir + "/agent.sock"
        #expect(symlink(file, link) == 0)
        try expectRefused(link, "symbolic link")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == file)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == "keep me\n")
    }
}

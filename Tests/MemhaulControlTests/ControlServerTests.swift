import Foundation
import Glibc
import Testing
@testable import MemhaulControl

@Suite struct ControlServerTests {
    func tempSocketPath() -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("memhaul-ctl-\(UUID().uuidString.prefix(8))")
        return dir.appendingPathComponent("agent.sock").path
    }

    func echoServer(_ path: String) throws -> ControlServer {
        try ControlServer(path: path) { (req: ControlRequest) throws(ControlError) -> [String: Any] in
            switch req.op {
            case "echo":
                try req.onlyKeys(["n", "s", "b"])
                var out: [String: Any] = [:]
                if let n = try req.int("n") { out["n"] = n }
                if let s = try req.string("s") { out["s"] = s }
                if let b = try req.bool("b") { out["b"] = b }
                return out
            default:
                throw ControlError(.unknownOp, "unknown operation \"\(req.op)\"")
            }
        }
    }

    @Test func socketIsOwnerOnly() throws {
        let path = tempSocketPath()
        let server = try echoServer(path)
        defer { server.close() }
        var st = stat()
        #expect(stat(path, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        let dir = (path as NSString).deletingLastPathComponent
        #expect(stat(dir, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o700)
    }

    @Test func answersInOrderWithTypedArguments() throws {
        let path = tempSocketPath()
        let server = try echoServer(path)
        defer { server.close() }
        let client = try ControlClient(path: path)
        let r = try client.call("echo", ["n": 5, "s": "x", "b": true])
        #expect(r["ok"] as? Bool == true)
        let result = r["result"] as? [String: Any]
        #expect(result?["n"] as? Int == 5)
        #expect(result?["s"] as? String == "x")
        #expect(result?["b"] as? Bool == true)
    }

    @Test func malformedAndWrongTypesAreBadRequest() throws {
        let path = tempSocketPath()
        let server = try echoServer(path)
        defer { server.close() }
        let client = try ControlClient(path: path)
        func code(_ r: [String: Any]?) -> String? { (r?["error"] as? [String: Any])?["code"] as? String }
        #expect(code(try client.callRaw(Data("not json\n".utf8))) == "bad_request")
        #expect(code(try client.callRaw(Data("[1,2]\n".utf8))) == "bad_request")
        #expect(code(try client.call("echo", ["n": "five"])) == "bad_request")
        #expect(code(try client.call("echo", ["n": true])) == "bad_request")
        #expect(code(try client.call("echo", ["b": 1])) == "bad_request")
        #expect(code(try client.call("echo", ["typo": 1])) == "bad_request")
        #expect(code(try client.call("nope")) == "unknown_op")
        // The connection survives malformed lines.
        #expect(try client.call("echo", ["n": 1])["ok"] as? Bool == true)
    }

    @Test func oversizedRequestIsRefused() throws {
        let path = tempSocketPath()
        let server = try echoServer(path)
        defer { server.close() }
        let client = try ControlClient(path: path)
        let huge = Data(repeating: 0x41, count: ControlServer.maxRequestBytes + 10) + Data("\n".utf8)
        let r = try client.callRaw(huge)
        #expect((r?["error"] as? [String: Any])?["code"] as? String == "too_large")
    }

    @Test func secondAgentOnLiveSocketIsRefused() throws {
        let path = tempSocketPath()
        let server = try echoServer(path)
        defer { server.close() }
        #expect(throws: ControlError.self) { _ = try echoServer(path) }
    }

    /// A client that connects and sends nothing, or only part of a line, is
    /// closed at the request deadline instead of holding its slot for ever.
    @Test func idleAndTricklingClientsAreClosedAtTheDeadline() throws {
        let path = tempSocketPath()
        let server = try ControlServer(path: path, requestTimeoutSeconds: 0.2) { (_: ControlRequest) throws(ControlError) -> [String: Any] in [:] }
        defer { server.close() }
        for partial in ["", "{\"op\":"] {
            let fd = try UnixSocket.connect(path: path)
            UnixSocket.setTimeout(fd.rawValue, seconds: 30)  // the test's guard, far beyond the deadline
            if !partial.isEmpty { try UnixSocket.sendAll(fd.rawValue, Data(partial.utf8)) }
            var reader = LineReader(fd: fd.rawValue, limit: 1 << 20)
            guard case .eof = reader.next() else { Issue.record("connection not closed by the agent"); continue }
        }
        // A prompt client is served as before.
        #expect(try ControlClient(path: path).call("x")["ok"] as? Bool == true)
    }

    @Test func connectionsBeyondTheCapAreRefusedWithOneLine() throws {
        let path = tempSocketPath()
        let server = try ControlServer(path: path, maxConnections: 2) { (_: ControlRequest) throws(ControlError) -> [String: Any] in [:] }
        defer { server.close() }
        let a = try ControlClient(path: path), b = try ControlClient(path: path)
        #expect(try a.call("x")["ok"] as? Bool == true)
        #expect(try b.call("x")["ok"] as? Bool == true)
        let r = try ControlClient(path: path).call("x")
        #expect((r["error"] as? [String: Any])?["code"] as? String == "busy", "\(r)")
        #expect(try a.call("x")["ok"] as? Bool == true)
    }

    /// `--control PATH` replaces only a stale socket: a regular file or a
    /// symbolic link at PATH is refused, named, and left as it was.
    @Test func aFileOrSymlinkAtTheSocketPathIsRefusedAndKept() throws {
        let path = tempSocketPath()
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Data("precious\n".utf8).write(to: URL(fileURLWithPath: path))
        let fileError = #expect(throws: ControlError.self) { _ = try echoServer(path) }
        #expect(fileError?.message.contains(path) == true && fileError?.message.contains("not a socket") == true, "\(String(describing: fileError))")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "precious\n")

        let target = dir + "/target"
        try Data("target\n".utf8).write(to: URL(fileURLWithPath: target))
        let link = dir + "/link.sock"
        #expect(symlink(target, link) == 0)
        let linkError = #expect(throws: ControlError.self) { _ = try echoServer(link) }
        #expect(linkError?.message.contains(link) == true && linkError?.message.contains("symbolic link") == true, "\(String(describing: linkError))")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link) == target)
        #expect(try String(contentsOfFile: target, encoding: .utf8) == "target\n")

        // A stale socket (nobody listening) is still replaced.
        let stale = dir + "/stale.sock"
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = try UnixSocket.address(stale)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        close(fd)  // bound, never listened on: stale
        var st = stat()
        #expect(lstat(stale, &st) == 0 && st.st_mode & S_IFMT == S_IFSOCK)
        let server = try echoServer(stale)
        defer { server.close() }
        #expect(try ControlClient(path: stale).call("echo", ["n": 1])["ok"] as? Bool == true)
    }
}

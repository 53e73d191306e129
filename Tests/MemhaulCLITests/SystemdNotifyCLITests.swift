import Foundation
import Testing
import MemhaulTestSupport

/// `Type=notify`: each agent tells `$NOTIFY_SOCKET` READY=1 once its sockets
/// accept connections, and STOPPING=1 when SIGTERM stops it. The test plays
/// systemd: it binds the datagram socket and blocks on recv (no sleeps).
@Suite(.serialized) struct SystemdNotifyCLITests {
    /// A bound AF_UNIX datagram socket, at a path or (`abstract`) in the abstract namespace.
    final class NotifySocket {
        let fd: Int32
        let name: String  // the NOTIFY_SOCKET value
        let path: String?

        init(abstract: Bool) throws {
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw POSIXError(.init(rawValue: errno)!) }
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            var bytes: [UInt8]
            if abstract {
                name = "@memhaul-notify-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
                bytes = Array(name.utf8); bytes[0] = 0
                path = nil
            } else {
                let p = NSTemporaryDirectory() + "memhaul-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
                name = p; path = p
                bytes = Array(p.utf8) + [0]
            }
            withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
            let len = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count)
            let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
            guard rc == 0 else { throw POSIXError(.init(rawValue: errno)!) }
            // Generous: a debug agent on a loaded 2-core machine; the wait ends at the datagram.
            var tv = timeval(tv_sec: 60, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }

        /// The next datagram, or nil after the receive timeout.
        func receive() -> String? {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            return n < 0 ? nil : String(decoding: buffer[..<n], as: UTF8.self)
        }

        deinit {
            close(fd)
            if let path { unlink(path) }
        }
    }

    /// Starts `memhaul ARGS` with NOTIFY_SOCKET set, an empty signal mask and
    /// default dispositions (a test process's children may inherit SIGTERM blocked).
    func spawnAgent(_ args: [String], notify: String) throws -> pid_t {
        let dir = ProcessInfo.processInfo.environment["MEMHAUL_BIN_DIR"]
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path + "/.build/debug"
        let argv = [dir + "/memhaul"] + args
        var env = ProcessInfo.processInfo.environment
        env["NOTIFY_SOCKET"] = notify
        let envp = env.map { "\($0.key)=\($0.value)" }
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t(), all = sigset_t()
        sigemptyset(&empty); sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = envp.map { strdup($0) } + [nil]
        defer { (cArgs + cEnv).forEach { free($0) } }
        let rc = posix_spawn(&pid, argv[0], nil, &attr, cArgs, cEnv)
        guard rc == 0 else { throw POSIXError(.init(rawValue: rc)!) }
        return pid
    }

    /// READY=1 on start, STOPPING=1 on SIGTERM, then a clean exit.
    func expectNotifies(_ args: [String], abstract: Bool, ready: String) throws {
        let socket = try NotifySocket(abstract: abstract)
        let pid = try spawnAgent(args, notify: socket.name)
        var status: Int32 = 0
        defer { if waitpid(pid, &status, WNOHANG) == 0 { kill(pid, SIGKILL); waitpid(pid, &status, 0) } }
        let first = socket.receive()
        let lines = first?.split(separator: "\n").map(String.init) ?? []
        #expect(lines.contains("READY=1"), "first notification: \(first ?? "none within 60 s")")
        #expect(lines.contains { $0.hasPrefix("STATUS=") && $0.contains(ready) }, "\(lines)")
        guard lines.contains("READY=1") else { return }  // no second 60 s wait for a broken agent
        kill(pid, SIGTERM)
        let second = socket.receive()
        #expect(second == "STOPPING=1", "after SIGTERM: \(second ?? "none within 60 s")")
        #expect(SafetyBound.waitpid(pid, &status, "the agent after SIGTERM") == pid)
        #expect(status == 0, "exit status \(status)")
    }

    func scratch() -> String {
        let dir = NSTemporaryDirectory() + "memhaul-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        return dir
    }

    @Test func receiverNotifiesAtAPath() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try expectNotifies(["receive", "--insecure", "--listen", "127.0.0.1:0", "--images", dir + "/images", "--control", dir + "/r.sock"],
                           abstract: false, ready: dir + "/r.sock")
    }

    @Test func senderNotifiesInTheAbstractNamespace() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try expectNotifies(["sender", "--insecure", "--control", dir + "/s.sock"], abstract: true, ready: dir + "/s.sock")
    }

    /// The control socket really accepts connections by the time READY=1 arrives.
    @Test func senderIsReachableWhenReady() throws {
        let dir = scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = try NotifySocket(abstract: false)
        let pid = try spawnAgent(["sender", "--insecure", "--control", dir + "/s.sock"], notify: socket.name)
        defer { kill(pid, SIGKILL); var s: Int32 = 0; waitpid(pid, &s, 0) }
        #expect(socket.receive()?.contains("READY=1") == true)
        let r = try runMemhaul(["ctl", "status", "--socket", dir + "/s.sock"])
        #expect(r.status == 0, "ctl status right after READY=1: \(r.err)")
    }
}

import Foundation
import Glibc
import MemhaulControl
import Testing
import MemhaulTestSupport
@testable import MemhaulSession
@testable import MemhaulSender
@testable import MemhaulReceiver

/// A raw client of an agent's control socket, for clients that misbehave.
final class RawControlClient {
    let fd: Int32

    init(_ path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestSetupError("socket: errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            let e = errno
            Glibc.close(fd)
            throw TestSetupError("connect \(path): errno \(e)")
        }
        SafetyBound.boundReads(fd: fd)  // a missing answer fails the test instead of hanging it
    }

    func send(_ text: String) {
        _ = Array(text.utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// One line, nil at end of stream (or after the safety bound).
    func readLine() -> String? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while read(fd, &byte, 1) == 1 {
            if byte == 0x0A { return String(decoding: line, as: UTF8.self) }
            line.append(byte)
        }
        return line.isEmpty ? nil : String(decoding: line, as: UTF8.self)
    }

    func close() { Glibc.close(fd) }
}

/// `memhaul sender` as a separate process.
final class SenderAgentProcess {
    let child: ChildProcess
    let control: String
    init() throws {
        control = temporaryDirectory("ctl") + "/sender.sock"
        child = try ChildProcess([builtBinary("memhaul"), "sender", "--control", control, "--insecure"], stdin: .null)
        _ = try child.expectLine(containing: "ready")
    }
}

/// The control socket of real agent processes against clients that misbehave.
@Suite(.serialized) struct AgentControlSocketTests {
    func expectServes(_ pid: pid_t, _ control: String, _ what: String) throws {
        #expect(kill(pid, 0) == 0, "\(what) agent died")
        #expect(try status(control)["ok"] as? Bool == true, "\(what)")
    }

    /// A status answer on a new connection, once the agent has a free slot
    /// again (it frees them as it sees earlier clients hang up).
    func status(_ control: String) throws -> [String: Any] {
        var answer: [String: Any] = [:]
        for _ in 0..<3000 {
            answer = try ControlClient(path: control).call("status")
            if (answer["error"] as? [String: Any])?["code"] as? String != "busy" { break }
            usleep(10_000)
        }
        return answer
    }

    /// Clients that hang up before the answer: the agent's reply write hits a
    /// closed socket (EPIPE), which used to raise SIGPIPE and end the agent (141).
    func hangUpsBeforeTheAnswer(_ control: String) throws {
        for i in 0..<50 {
            let c = try RawControlClient(control)
            // A partial line: the agent answers it (bad_request) only once it has
            // seen the end of stream, so the client is gone for sure by then.
            c.send(i % 2 == 0 ? "{\"op\":\"sta" : "{\"op\":\"status\"}\n{\"op\":")
            c.close()
        }
        for _ in 0..<50 {
            let c = try RawControlClient(control)
            c.send("{\"op\":\"status\"}\n")
            c.close()
        }
    }

    @Test func receiverAgentSurvivesClientsThatHangUpBeforeTheAnswer() throws {
        let receiver = try ReceiverProcess(pki: nil)
        try hangUpsBeforeTheAnswer(receiver.control)
        try expectServes(receiver.child.pid, receiver.control, "receiver")
        #expect(receiver.child.hasBeenReaped == false)
    }

    @Test func senderAgentSurvivesClientsThatHangUpBeforeTheAnswer() throws {
        let sender = try SenderAgentProcess()
        try hangUpsBeforeTheAnswer(sender.control)
        try expectServes(sender.child.pid, sender.control, "sender")
    }

    static func threads(_ pid: pid_t) -> Int? {
        guard let status = readProcFile("/proc/\(pid)/status") else { return nil }
        return status.split(separator: "\n").first { $0.hasPrefix("Threads:") }
            .flatMap { Int($0.dropFirst("Threads:".count).trimmingCharacters(in: .whitespaces)) }
    }

    /// More connections than the cap: the extra ones get one `busy` line and
    /// are closed; the agent starts no thread for them; the held ones still work.
    func capsConnections(_ pid: pid_t, _ control: String) throws {
        let cap = ControlServer.defaultMaxConnections
        let baseline = try #require(Self.threads(pid))
        let status = "{\"op\":\"status\"}\n"
        var held: [RawControlClient] = []
        defer { for c in held { c.close() } }
        for _ in 0..<cap {
            let c = try RawControlClient(control)
            held.append(c)
            c.send(status)  // answered: its connection thread runs
            let answer = c.readLine() ?? ""
            #expect(answer.contains("\"ok\":true"), "\(answer)")
        }
        for _ in 0..<16 {
            let c = try RawControlClient(control)
            c.send(status)
            let answer = c.readLine() ?? ""
            let refused = answer.contains("\"busy\"") && answer.contains("too many control connections")
            #expect(refused, "\(answer)")
            if refused { #expect(c.readLine() == nil, "closed after the refusal") }
            held.append(c)  // kept open until the threads are counted
        }
        let threads = try #require(Self.threads(pid))
        #expect(threads <= baseline + cap + 4, "\(threads) threads, \(baseline) before \(cap) connections")
        held[0].send(status)
        #expect(held[0].readLine()?.contains("\"ok\":true") == true, "a held connection still works")
        #expect(kill(pid, 0) == 0)
        for c in held { c.close() }
        held = []
        let fresh = try self.status(control)
        #expect(fresh["ok"] as? Bool == true, "\(fresh)")
    }

    @Test func receiverAgentCapsControlConnections() throws {
        let receiver = try ReceiverProcess(pki: nil)
        try capsConnections(receiver.child.pid, receiver.control)
    }

    @Test func senderAgentCapsControlConnections() throws {
        let sender = try SenderAgentProcess()
        try capsConnections(sender.child.pid, sender.control)
    }
}

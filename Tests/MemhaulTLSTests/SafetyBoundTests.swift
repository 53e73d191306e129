import Dispatch
import Foundation
import Testing
import MemhaulSystem
import MemhaulTLS
import MemhaulTestSupport

/// The test-side waits end at `SafetyBound` with a failure, not a hang
/// (here with a 1 s bound: each case stands for a peer or child that never answers).
@Suite struct SafetyBoundTests {
    @Test func aChildThatNeverExitsFailsTheTestAndIsKilled() throws {
        let child = try ChildProcess(["sleep", "600"], stdin: .null)
        var code: Int32 = 0
        withKnownIssue { code = SafetyBound.$seconds.withValue(1) { child.wait() } }
        #expect(code == 128 + SIGKILL)
    }

    @Test func aWatchdogKillsAProcessTheTestCannotBoundItself() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sleep")
        p.arguments = ["600"]
        try p.run()
        let watchdog = SafetyBound.$seconds.withValue(1) { SafetyBound.Watchdog(pid: p.processIdentifier, "sleep 600") }
        p.waitUntilExit()
        withKnownIssue { watchdog.end() }
        #expect(p.terminationReason == .uncaughtSignal && p.terminationStatus == SIGKILL)
    }

    @Test func aChildThatNeverEndsItsOutputThrows() throws {
        let child = try ChildProcess(["sleep", "600"], stdin: .null, captureStderr: true)
        #expect(throws: TestSetupError.self) { try SafetyBound.$seconds.withValue(1) { try child.readToEnd() } }
    }

    @Test func aPeerThatNeverSendsFailsTheReadAndTheStreamKeepsNoTimeout() throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let client = try TCPStream.connect(host: "127.0.0.1", port: listener.port)
        let silent = try listener.accept(timeout: .seconds(30))
        defer { silent.close() }
        #expect(throws: NetworkError.self) { try SafetyBound.$seconds.withValue(1) { _ = try client.readAll(count: 1) } }
        #expect(client.options.readTimeout == nil)
        try client.boundingReads()
        #expect(client.options.readTimeout == SafetyBound.duration)
    }

    @Test func aSemaphoreNeverSignalledAndAConditionNeverMetFailTheTest() {
        let never = DispatchSemaphore(value: 0)
        var signalled = true, met = true
        withKnownIssue { signalled = SafetyBound.$seconds.withValue(1) { never.waitBounded("a signal") } }
        withKnownIssue { met = SafetyBound.$seconds.withValue(1) { SafetyBound.eventually("false to turn true", every: 50_000) { false } } }
        #expect(!signalled && !met)
    }
}

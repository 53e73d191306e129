import Glibc
import Testing
@testable import MemhaulKernel
import MemhaulSystem
import MemhaulTestSupport

extension AttachProcessTests {
    /// Attach to and detach from a real redis-server while redis-benchmark hammers it.
    @Suite struct AttachRedisTests {
        func redisCLI(_ socket: String, _ args: String...) throws -> String {
            let cli = try ChildProcess(["redis-cli", "-s", socket] + args)
            var out: [String] = []
            while let line = try cli.readLine() { out.append(line) }
            cli.wait()
            return out.joined(separator: "\n")
        }

        @Test func redisUnderBenchmarkLoadSurvivesAttachAndDetach() throws {
            let socket = "/tmp/memhaul-attach-redis-\(getpid()).sock"
            unlink(socket)
            defer { unlink(socket) }
            let server = try ChildProcess([
                "redis-server", "--port", "0", "--unixsocket", socket, "--save", "", "--appendonly", "no",
            ])
            defer {
                server.kill(SIGTERM)
                server.wait()
            }
            while let line = try server.readLine() {
                if line.lowercased().contains("ready to accept connections") { break }
            }
            #expect(try redisCLI(socket, "ping") == "PONG")

            let bench = try ChildProcess(["redis-benchmark", "-s", socket, "-t", "set,get", "-n", "200000", "-q"])
            // The SET phase has finished: the GET phase is running while we attach.
            let first = try bench.expectLine(containing: "SET: ")
            var registered = 0
            for _ in 0..<3 {
                let t0 = MonotonicClock.nanoseconds()
                let process = try AttachedProcess.attach(pid: server.pid)
                let t1 = MonotonicClock.nanoseconds()
                registered = process.registered.count
                let skipped = process.skipped.count
                _ = try process.refreshLayout()
                let t2 = MonotonicClock.nanoseconds()
                try process.detach()
                let t3 = MonotonicClock.nanoseconds()
                // Figures, not assertions.
                print(
                    "redis attach \((t1 - t0) / 1000) us (main thread stopped \(process.stoppedNanoseconds / 1000) us),",
                    "refreshLayout \((t2 - t1) / 1000) us, detach \((t3 - t2) / 1000) us,",
                    "\(registered) VMAs registered, \(skipped) skipped")
                #expect(AttachFixtures.userfaultfds(of: server.pid).isEmpty)
            }
            #expect(registered > 0)
            // Informational: the attaches are meant to land while GET load is running.
            let running = AttachFixtures.state(of: bench.pid).map { $0 != "Z" } ?? false
            print("redis-benchmark still running after the attach/detach cycles: \(running)")
            var output = [first]
            while let line = try bench.readLine() { output.append(line) }
            #expect(bench.wait() == 0, "\(output)")
            let text = output.joined(separator: "\n")
            #expect(text.contains("GET") && text.contains("requests per second"), "\(text)")
            #expect(!text.lowercased().contains("error"), "\(text)")
            #expect(try redisCLI(socket, "ping") == "PONG")
            #expect(try AttachFixtures.uffdWPMappings(of: server.pid).isEmpty)
        }
    }
}

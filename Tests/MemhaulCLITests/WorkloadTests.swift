import MemhaulSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif
import MemhaulTestSupport

/// The built memhaul-workload binary, driven over its control protocol.
@Suite(.serialized) struct WorkloadTests {
    @Test func readyLineListsItsRegions() throws {
        let w = try WorkloadProcess(["--size", "3M", "--regions", "3", "--control"])
        #expect(w.ready.contains("\"event\":\"ready\""))
        #expect(w.ready.contains("\"pid\":\(w.pid)"))
        #expect(!w.regions.isEmpty)
        #expect(w.regions.reduce(0) { $0 + ($1.end - $1.start) } == 3 << 20)
        for r in w.regions { #expect(r.start % 4096 == 0 && r.end % 4096 == 0 && r.start < r.end) }
        #expect(w.exitOnEOF() == 0)
    }

    @Test func signalDigestEqualsCommandDigestAndChangesAfterWrite() throws {
        let w = try WorkloadProcess(["--size", "2M", "--control", "--mix", "zero=30,text=40,random=30"])
        let d1 = try w.command("digest")
        #expect(d1.contains("\"event\":\"digest\""))
        let digest1 = try #require(jsonString(d1, "digest"))
        #expect(digest1.count == 32 && digest1.allSatisfy { $0.isHexDigit && !$0.isUppercase })
        kill(w.pid, SIGUSR1)
        let d2 = try #require(try w.readLine())
        #expect(jsonString(d2, "digest") == digest1)
        #expect(d2 == d1)

        let start = w.regions[0].start
        let ok = try w.command("write \(hex(start + 5 * 4096)) 3 2")
        #expect(ok == "{\"event\":\"ok\",\"pages\":3}")
        let d3 = try w.command("digest")
        #expect(jsonString(d3, "digest") != digest1)
        kill(w.pid, SIGUSR1)
        #expect(try #require(try w.readLine()) == d3)
        #expect(w.exitOnEOF() == 0)
    }

    @Test func mappingCommandsChangeTheRegionSet() throws {
        let w = try WorkloadProcess(["--size", "1M", "--control"])
        let mapped = try w.command("map 64K")
        let start = try #require(jsonString(mapped, "start").flatMap(parseHex))
        #expect(jsonString(mapped, "end").flatMap(parseHex) == start + 65536)
        var digest = try w.command("digest")
        #expect(digest.contains(hex(start)))
        #expect(try w.command("write \(hex(start)) 16") == "{\"event\":\"ok\",\"pages\":16}")
        #expect(try w.command("discard \(hex(start)) 8K") == "{\"event\":\"ok\"}")
        #expect(try w.command("free \(hex(start + 8192)) 8K") == "{\"event\":\"ok\"}")

        #expect(try w.command("mprotect \(hex(start)) 4K r") == "{\"event\":\"ok\"}")
        #expect(try w.command("write \(hex(start)) 1").contains("read-only"))
        #expect(try w.command("mprotect \(hex(start)) 4K rw") == "{\"event\":\"ok\"}")
        #expect(try w.command("write \(hex(start)) 1").contains("\"ok\""))

        let moved = try w.command("mremap \(hex(start)) 64K 128K")
        let newStart = try #require(jsonString(moved, "start").flatMap(parseHex))
        digest = try w.command("digest")
        #expect(digest.contains("\"start\":\"\(hex(newStart))\""))
        #expect(try w.command("unmap \(hex(newStart)) 128K") == "{\"event\":\"ok\"}")
        digest = try w.command("digest")
        #expect(!digest.contains("\"start\":\"\(hex(newStart))\""))
        #expect(try w.command("write \(hex(newStart)) 1").contains("not in a workload region"))
        #expect(try w.command("unmap 0x1001 4K").contains("\"error\""))
        #expect(try w.command("frobnicate").contains("unknown command"))
        #expect(try w.command("write nothex 1").contains("\"error\""))
        w.send("exit 7")
        #expect(try w.readLine() == "{\"event\":\"ok\"}")
        #expect(w.wait() == 7)
    }

    @Test func pauseStopsRunningWritersForDigests() throws {
        let w = try WorkloadProcess(["--size", "4M", "--control", "--threads", "2", "--rate", "0", "--churn", "200"])
        #expect(try w.command("pause") == "{\"event\":\"ok\"}")
        let a = try w.command("digest")
        kill(w.pid, SIGUSR1)
        let b = try #require(try w.readLine())
        #expect(a == b, "writers or churn ran while paused")
        #expect(try w.command("resume") == "{\"event\":\"ok\"}")
        // Writers run again: a later digest differs (rate 0 writes continuously).
        var changed = false
        for _ in 0..<50 where !changed { changed = try w.command("digest") != a }
        #expect(changed)
        #expect(w.exitOnEOF() == 0)
    }

    @Test func reportsWriteThroughput() throws {
        let w = try WorkloadProcess(["--size", "1M", "--threads", "1", "--rate", "0", "--report-every", "0.05", "--exit-after", "30"])
        let line = try #require(try w.readLine())
        #expect(line.hasPrefix("{\"event\":\"stats\",\"writes_per_sec\":"))
        kill(w.pid, SIGKILL)
        w.wait()
    }

    @Test func hugePageRegionsAreAligned() throws {
        let w = try WorkloadProcess(["--size", "8M", "--regions", "2", "--thp", "on", "--control"])
        #expect(w.regions.allSatisfy { $0.start % (2 << 20) == 0 })
        let mapped = try w.command("map 4M thp")
        #expect(try #require(jsonString(mapped, "start").flatMap(parseHex)) % (2 << 20) == 0)
        #expect(w.exitOnEOF() == 0)
    }

    @Test func exitAfterEndsTheProcess() throws {
        let w = try WorkloadProcess(["--size", "1M", "--exit-after", "0.2"])
        #expect(try w.readLine() == nil)
        #expect(w.wait() == 0)
    }

    @Test func badOptionsExitWithUsage() throws {
        let w = try WorkloadProcess(["--size", "banana"], expectReady: false)
        #expect(w.wait() == 2)
    }
}

// MARK: Support

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

/// The string value of `"key":"…"` in a flat JSON line (first occurrence).
func jsonString(_ line: String, _ key: String) -> String? {
    guard let r = line.firstRange(of: "\"\(key)\":\"") else { return nil }
    let rest = line[r.upperBound...]
    guard let end = rest.firstIndex(of: "\"") else { return nil }
    return String(rest[..<end])
}


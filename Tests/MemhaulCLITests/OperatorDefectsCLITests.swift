import Foundation
import Testing
import MemhaulTestSupport

/// The small things of issue 10 an operator trips on.
@Suite(.serialized) struct OperatorDefectsCLITests {
    /// `ctl`: 0 answered ok, 1 refused, 2 unreachable (Protocol/control.md).
    @Test func ctlExitStatusTellsRefusedFromUnreachable() throws {
        let dir = temporaryDirectory("ctl-exit")
        let missing = try runMemhaul(["ctl", "status", "--socket", dir + "/nothing.sock"])
        #expect(missing.status == 2, "\(missing.err)")
        #expect(missing.err.contains("cannot reach the agent"), "\(missing.err)")

        let agent = try ChildProcess(["/bin/sh", "-c", "exec \"$0\" sender --insecure --control \"$1\" 2>/dev/null", builtBinary("memhaul"), dir + "/s.sock"],
                                     stdin: .null)
        defer { agent.kill(); _ = agent.wait() }
        _ = try agent.expectLine(startingWith: "ready")
        let ok = try runMemhaul(["ctl", "status", "--socket", dir + "/s.sock"])
        #expect(ok.status == 0, "\(ok.out)\(ok.err)")
        let refused = try runMemhaul(["ctl", "set", "--socket", dir + "/s.sock", "--migration", "no-such", "--max-bandwidth", "100M"])
        #expect(refused.status == 1, "\(refused.out)\(refused.err)")
        #expect(refused.out.contains("\"ok\":false"), "\(refused.out)")
    }

    /// One ByteCount for every byte option: `--max-bandwidth 100M` parses,
    /// a bad size is refused naming the option.
    @Test func byteOptionsTakeSuffixes() throws {
        let good = try runMemhaul(["migrate", "--pid", "2147483000", "--to", "127.0.0.1:1", "--insecure", "--max-bandwidth", "100M"])
        #expect(!good.err.contains("--max-bandwidth"), "\(good.err)")
        let bad = try runMemhaul(["migrate", "--pid", "2147483000", "--to", "127.0.0.1:1", "--insecure", "--max-bandwidth", "lots"])
        #expect(bad.status != 0 && bad.err.contains("--max-bandwidth"), "\(bad.err)")
        let receiver = try runMemhaul(["receive", "--images", temporaryDirectory("bytes") + "/i", "--insecure", "--max-image-bytes", "1.5x"])
        #expect(receiver.status != 0 && receiver.err.contains("--max-image-bytes"), "\(receiver.err)")
    }

    /// The header's columns end where the rows' do.
    @Test func trackHeaderLinesUpWithItsColumns() throws {
        let s = try sleeper()
        let r = try runMemhaul(["track", "--pid", "\(s.pid)", "--rounds", "1", "--interval", "10"])
        #expect(r.status == 0, "\(r.err)")
        let lines = r.out.split(separator: "\n").map(String.init)
        let headerIndex = try #require(lines.firstIndex { $0.contains("dirty pages") })
        let header = lines[headerIndex], rows = lines[(headerIndex + 1)...]
        #expect(rows.count == 2, "\(r.out)")
        // The header's column ends (a letter followed by two spaces, or the line's end)
        // are filled in every row too, and the rows are as long.
        let h = Array(header)
        let ends = h.indices.filter { h[$0] != " " && ($0 + 1 == h.count || (h[$0 + 1] == " " && $0 + 2 < h.count && h[$0 + 2] == " ")) }
        #expect(ends.count == 6, "\(header)")
        for row in rows {
            let c = Array(row)
            #expect(c.count == h.count && ends.allSatisfy { c[$0] != " " }, "\n\(header)\n\(row)")
        }
    }

    @Test func certsInitListsEachReceiverNameOnce() throws {
        let dir = temporaryDirectory("pki-names") + "/pki"
        let r = try runMemhaul(["certs", "init", dir, "--receiver-name", "127.0.0.1", "--receiver-name", "hostb.example"])
        #expect(r.status == 0, "\(r.err)")
        let line = try #require(r.out.split(separator: "\n").first { $0.hasPrefix("receiver names: ") })
        let names = line.dropFirst("receiver names: ".count).split(separator: ";")[0].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(names.count == Set(names).count, "\(line)")
        #expect(Set(names) == ["localhost", "127.0.0.1", "::1", "hostb.example"], "\(line)")
    }
}

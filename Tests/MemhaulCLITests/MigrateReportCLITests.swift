import Foundation
import Testing
import MemhaulTestSupport

/// `migrate --report PATH` writes the report as one JSON object in the common
/// shape (snake_case, units in the names, RFC 3339 start).
@Suite struct MigrateReportCLITests {
    @Test func migrateWritesItsReport() throws {
        let dir = temporaryDirectory("report")
        defer { removeTree(dir) }
        let receiver = try ChildProcess([builtBinary("memhaul"), "receive", "--listen", "127.0.0.1:0", "--images", dir + "/images",
                                         "--insecure", "--control", dir + "/r.sock"], stdin: .null)
        let line = try receiver.expectLine(startingWith: "listening ")
        let port = try #require(line.split(separator: ":").last.flatMap { UInt16($0) })
        let target = try sleeper()
        let r = try runMemhaul(["migrate", "--pid", "\(target.pid)", "--to", "127.0.0.1:\(port)", "--insecure", "--id", "cli-report",
                                "--max-rounds", "0", "--downtime-limit", "0.001", "--after", "resume", "--report", dir + "/report.json"])
        #expect(r.status == 0, "\(r.out)\(r.err)")
        let text = try String(contentsOfFile: dir + "/report.json", encoding: .utf8)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(report["migration"] as? String == "cli-report" && report["state"] as? String == "completed")
        #expect((report["started_at"] as? String).map { ISO8601DateFormatter.fractional.date(from: $0) != nil } == true, "\(text)")
        let rounds = try #require(report["rounds"] as? [[String: Any]])
        #expect(rounds.count == 1 && rounds.first?["frozen"] as? Bool == true && rounds.first?["page_bytes"] is NSNumber, "\(text)")
        let phases = try #require(report["phases"] as? [[String: Any]]).compactMap { $0["name"] as? String }
        #expect(phases == ["setup", "freeze", "final_delta", "verify"], "\(text)")
        let downtime = try #require(report["downtime"] as? [String: Any])
        #expect(downtime["exceeded"] as? Bool == true && downtime["frozen_ms"] is NSNumber, "\(text)")
        #expect(!text.contains("Ms\"") && !text.contains("Bytes\""), "snake_case keys: \(text)")
    }
}

extension ISO8601DateFormatter {
    static var fractional: ISO8601DateFormatter {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }
}

import Foundation
import MemhaulReport
import MemhaulSystem
import MemhaulTestSupport
import Testing

/// A report with every list filled, as a migration would write it.
func sampleReport(side: MigrationReport.Side = .sender) -> MigrationReport {
    var r = MigrationReport(side: side, migration: "m-report-1", state: "completed", startedAt: "2026-12-01T11:20:00.000Z")
    r.pid = 4242
    r.destination = "127.0.0.1:7070"
    r.endedAt = "2026-12-01T11:20:02.500Z"
    r.totalMs = 2500
    r.parameters = .init(downtimeLimitMs: 300, maxRounds: 30, maxTimeS: 600, maxBandwidthBytesPerSecond: nil, autoConverge: true,
                         commitChunkBytes: 64 << 20, compression: "auto")
    var d = MigrationReport.Downtime(limitMs: 300)
    d.frozenStartMs = 2000
    d.frozenEndMs = 2350
    d.frozenMs = 350
    d.downtimeMs = 120.5
    d.expectedMs = 90
    d.exceeded = true
    d.cutoverReason = "converged (expected downtime 90 ms)"
    r.downtime = d
    for i in 0..<3 {
        var round = MigrationReport.Round(round: i)
        round.firstChunk = UInt64(i + 1)
        round.lastChunk = UInt64(i + 1)
        round.startMs = Double(i) * 700
        round.endMs = Double(i) * 700 + 600
        round.durationMs = 600
        round.pages = UInt64(1000 >> i)
        round.pageBytes = round.pages * 4096
        round.wireBytes = round.pageBytes / 2
        round.throughputBytesPerSecond = 1e8
        round.dirtyRateBytesPerSecond = i < 2 ? 2e7 : nil
        round.compression = i == 0 ? "raw" : "zstd 1"
        round.compressionLevel = i == 0 ? nil : 1
        round.throttlePercent = i * 10
        round.predictedMs = i == 0 ? nil : 100
        round.decision = i == 2 ? "final" : "next_round"
        round.frozen = i == 2
        r.rounds.append(round)
    }
    r.phases = [.init(name: "setup", startedAt: "2026-12-01T11:20:00.000Z", startMs: 0, endMs: 20),
                .init(name: "pre_copy", startedAt: "2026-12-01T11:20:00.020Z", startMs: 20, endMs: 2000)]
    var resume = MigrationReport.Resume(at: "2026-12-01T11:20:01.000Z", atMs: 1000)
    resume.committedChunk = 1
    resume.resentBytes = 4096
    r.resumes = [resume]
    r.chunks = [.init(chunk: 1, committedAt: "2026-12-01T11:20:00.600Z", atMs: 600, pages: 1000, zeroPages: 2, discardedPages: 0,
                      pageBytes: 4_096_000, wireBytes: 2_000_000, commitMs: 12.25, fsyncMs: 9.5, final: false)]
    r.digest = "00112233445566778899aabbccddeeff"
    r.warnings = ["downtime 350 ms exceeded the limit of 300 ms <&>"]
    return r
}

struct ReportJSONTests {
    @Test func roundTrip() throws {
        let r = sampleReport()
        let decoded = try ReportJSON.decode(ReportJSON.encode(r))
        #expect(decoded == r)
    }

    /// snake_case keys with units, sorted, slashes unescaped.
    @Test func keysAreSnakeCaseAndSorted() throws {
        let text = String(decoding: ReportJSON.encode(sampleReport()), as: UTF8.self)
        for key in ["\"schema_version\"", "\"throughput_bytes_per_second\"", "\"dirty_rate_bytes_per_second\"", "\"frozen_start_ms\"",
                    "\"commit_chunk_bytes\"", "\"max_time_s\"", "\"resent_bytes_after_resume\"", "\"committed_chunk\""] {
            #expect(text.contains(key), "\(key) missing")
        }
        #expect(!text.contains("Ms\""), "camelCase key left")
        #expect(text.range(of: "\"digest\"")!.lowerBound < text.range(of: "\"downtime\"")!.lowerBound)
        var withSlash = sampleReport()
        withSlash.imageDirectory = "/var/lib/memhaul/images/m-1"
        #expect(String(decoding: ReportJSON.encode(withSlash), as: UTF8.self).contains("\"/var/lib/memhaul/images/m-1\""))
    }

    @Test func unknownFieldsAreTolerated() throws {
        var object = try #require(try JSONSerialization.jsonObject(with: Data(ReportJSON.encode(sampleReport()))) as? [String: Any])
        object["added_by_a_later_memhaul"] = ["x": 1]
        var rounds = try #require(object["rounds"] as? [[String: Any]])
        rounds[0]["new_round_figure_ms"] = 12.5
        object["rounds"] = rounds
        let bytes = Array(try JSONSerialization.data(withJSONObject: object))
        #expect(try ReportJSON.decode(bytes) == sampleReport())
    }

    @Test func truncatedFileIsRefusedClearly() throws {
        let bytes = ReportJSON.encode(sampleReport())
        for cut in [1, bytes.count / 3, bytes.count / 2, bytes.count - 3] {
            #expect(throws: ReportFileError.truncated(path: "r.json", bytes: cut)) { try ReportJSON.decode(Array(bytes.prefix(cut)), path: "r.json") }
        }
        #expect(throws: ReportFileError.truncated(path: "r.json", bytes: 0)) { try ReportJSON.decode([], path: "r.json") }
        let e = ReportFileError.truncated(path: "r.json", bytes: 10)
        #expect(e.description == "report r.json is truncated: its JSON ends early after 10 bytes")
    }

    @Test func otherFilesAreNotReports() throws {
        #expect(throws: ReportFileError.self) { try ReportJSON.decode(Array("hello".utf8)) }
        do {
            _ = try ReportJSON.decode(Array("{\"side\":\"sender\"}".utf8), path: "x.json")
            Issue.record("decoded a non-report")
        } catch let e {
            guard case .notAReport(_, let reason) = e else { Issue.record("\(e)"); return }
            #expect(reason.contains("missing"), "\(reason)")
        }
        var newer = sampleReport()
        newer.schemaVersion = MigrationReport.currentSchemaVersion + 1
        #expect(throws: ReportFileError.newerSchema(path: "report", version: newer.schemaVersion)) { try ReportJSON.decode(ReportJSON.encode(newer)) }
    }

    /// Written atomically (no temporary left), read back, mode 0600.
    @Test func fileRoundTrip() throws {
        let dir = temporaryDirectory("report")
        let path = dir + "/report.json"
        try ReportJSON.write(sampleReport(), to: path)
        try ReportJSON.write(sampleReport(side: .receiver), to: path)
        #expect(try ReportJSON.read(path) == sampleReport(side: .receiver))
        #expect(!FileManager.default.fileExists(atPath: path + ".tmp"))
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(throws: ReportFileError.self) { try ReportJSON.read(dir + "/absent.json") }
    }

    @Test func listsAreBounded() {
        var list: [Int] = []
        var omitted: [String: Int]?
        for i in 0..<(ReportLimits.maxChunks + 5) {
            ReportLimits.append(i, to: &list, limit: ReportLimits.maxChunks, name: "chunks", omitted: &omitted)
        }
        #expect(list.count == ReportLimits.maxChunks)
        #expect(omitted == ["chunks": 5])
        #expect(ReportLimits.text(String(repeating: "é", count: 2000)).utf8.count <= ReportLimits.maxTextBytes)
    }

    @Test func clockStampsAreRFC3339() throws {
        #expect(ReportClock.rfc3339(nanoseconds: 1_796_123_456_789_000_000) == "2026-12-01T11:10:56.789Z")
        #expect(ReportClock.parse("2026-12-01T11:10:56.789Z") == 1_796_123_456_789_000_000)
        let clock = ReportClock(wallOriginNanoseconds: 1_796_123_456_000_000_000, monotonicOrigin: 100)
        #expect(clock.stamp(101.5) == "2026-12-01T11:10:57.500Z")
        #expect(clock.offsetMs(101.5) == 1500)
    }
}

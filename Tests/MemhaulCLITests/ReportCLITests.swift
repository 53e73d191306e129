import Foundation
import Glibc
import MemhaulReport
import MemhaulTestSupport
import Testing

/// Debian's chromium, if installed (scripts/setup installs it).
let chromium: String? = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first { FileManager.default.isExecutableFile(atPath: $0) }

/// A real migration (memhaul-workload dirtying pages, a local receiver,
/// several rounds and commit chunks) writes both reports; `memhaul report`
/// renders each, and headless Chromium loads the pages.
@Suite(.serialized) struct ReportCLITests {
    struct Migrated {
        var dir: String
        var sender: String
        var receiver: String
    }

    /// Runs the migration and returns where the two reports are.
    func migrate(_ tag: String) throws -> Migrated {
        let dir = temporaryDirectory("report-\(tag)")
        let receiver = try ChildProcess([builtBinary("memhaul"), "receive", "--listen", "127.0.0.1:0", "--images", dir + "/images",
                                         "--insecure", "--control", dir + "/r.sock"], stdin: .null)
        defer { receiver.kill(SIGTERM); _ = receiver.wait() }
        let listening = try receiver.expectLine(startingWith: "listening ")
        let port = try #require(listening.split(separator: ":").last.flatMap { UInt16($0) })
        let target = try WorkloadProcess(["--size", "48M", "--mix", "zero=20,text=50,random=30", "--threads", "1", "--rate", "4000",
                                          "--pattern", "hot:0.3"], stdin: .null)
        defer { target.kill(); _ = target.wait() }
        let sender = dir + "/sender-report.json"
        let r = try runMemhaul(["migrate", "--pid", "\(target.pid)", "--to", "127.0.0.1:\(port)", "--insecure", "--id", "m-report-\(tag)",
                                "--max-rounds", "4", "--downtime-limit", "1", "--commit-chunk", "8", "--after", "resume", "--report", sender])
        #expect(r.status == 0, "\(r.out)\(r.err)")
        // The receiver writes its report when the connection ends, after the
        // sender has gone: wait for that event before stopping the receiver
        // (bounded, a guard against a hang, not a timing check).
        let received = dir + "/images/m-report-\(tag)/report.json"
        for _ in 0..<3000 where !FileManager.default.fileExists(atPath: received) { usleep(20_000) }
        return Migrated(dir: dir, sender: sender, receiver: received)
    }

    @Test func bothSidesWriteAReportOfTheRealMigration() throws {
        let m = try migrate("json")
        let s = try ReportJSON.read(m.sender)
        #expect(s.side == .sender && s.state == "completed")
        #expect(s.rounds.count >= 3, "\(s.rounds.count) rounds")
        #expect(s.rounds.last?.frozen == true && s.rounds.dropLast().allSatisfy { !$0.frozen })
        #expect(s.rounds.dropFirst().allSatisfy { $0.predictedMs != nil }, "every round after round 0 has a prediction")
        #expect(s.rounds.dropLast().allSatisfy { $0.decision != nil && $0.dirtyRateBytesPerSecond != nil })
        #expect(s.rounds[0].lastChunk > s.rounds[0].firstChunk, "round 0 travelled as several 8 MiB chunks")
        #expect(s.phases.map(\.name) == ["setup", "pre_copy", "freeze", "final_delta", "verify", "release"])
        let d = try #require(s.downtime)
        #expect(d.frozenStartMs != nil && d.frozenEndMs! >= d.frozenStartMs! && d.frozenMs != nil && d.limitMs == 1)
        #expect(s.totals.pageBytes == s.rounds.reduce(0) { $0 + $1.pageBytes })
        #expect(s.digest != nil)
        #expect(s.parameters?.throttle == "auto" && s.parameters?.throttleSteps != nil)
        #expect((s.throttleMechanism != nil) == s.rounds.contains { $0.throttlePercent > 0 }, "a mechanism exactly when it throttled")
        let r = try ReportJSON.read(m.receiver)
        #expect(r.side == .receiver && r.state == "complete")
        #expect(r.digest == s.digest)
        // The incremental proof rides on the final delta's last chunk (capability final-delta-digest): no verification round.
        #expect(r.chunks.count == Int(s.totals.chunks), "every chunk, and no verification round")
        #expect(r.chunks.last?.final == true)
        #expect(r.totals.pages == s.totals.pages)
        #expect(r.connections.count == 1 && r.connections[0].endState == "complete")
    }

    @Test func truncatedReportIsOneClearError() throws {
        let dir = temporaryDirectory("report-cut")
        try Data("{\"side\": \"sender\", \"rounds\": [".utf8).write(to: URL(fileURLWithPath: dir + "/r.json"))
        let r = try runMemhaul(["report", dir + "/r.json", "-o", dir + "/r.html"])
        #expect(r.status != 0)
        #expect(r.err.contains("is truncated"), "\(r.err)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/r.html"))
    }

    // Chromium renders the pages: without it the test cannot run, and says so.
    @Test(.enabled(if: chromium != nil, "chromium is not installed (apt-get install chromium; scripts/setup does)"))
    func pagesRenderInHeadlessChromium() throws {
        let m = try migrate("html")
        for (name, path, plots) in [("sender", m.sender, ["plot-timeline", "plot-frozen", "plot-bytes", "plot-rates", "plot-duration", "plot-tuning"]),
                                    ("receiver", m.receiver, ["plot-timeline", "plot-bytes", "plot-commit"])] {
            let html = m.dir + "/\(name).html"
            try runProgram([builtBinary("memhaul"), "report", path, "-o", html]).requireSuccess(name)
            let dom = try runProgram([chromium!, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                                      "--user-data-dir=\(m.dir)/chromium-\(name)", "--dump-dom", "file://" + html])
            #expect(dom.status == 0, "\(dom.err)")
            #expect(!dom.err.contains("Failed to load resource") && !dom.err.contains("net::ERR"), "\(dom.err)")
            for id in plots {
                let svg = try #require(element(dom.out, id: id), "\(name): \(id) not in the DOM")
                let points = count(svg, "class=\"point\"") + count(svg, "class=\"bar\"") + count(svg, "class=\"segment\"")
                #expect(points >= 3, "\(name) \(id): \(points) data points")
            }
            let png = m.dir + "/\(name).png"
            let shot = try runProgram([chromium!, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                       "--user-data-dir=\(m.dir)/chromium-\(name)", "--screenshot=\(png)", "--window-size=1280,2000", "file://" + html])
            #expect(shot.status == 0, "\(shot.err)")
            let colours = try runProgram(["/usr/bin/python3", "-c", pngColours, png]).requireSuccess("png check")
            let parts = colours.out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            #expect(parts.count == 2 && parts[0] >= 20 && parts[1] > 0.02, "\(name).png: \(colours.out) (distinct colours, share of non-background pixels)")
        }
    }

    /// The `<svg … id="ID" …>…</svg>` element of a DOM dump.
    func element(_ dom: String, id: String) -> Substring? {
        guard let at = dom.range(of: "id=\"\(id)\""), let open = dom[..<at.lowerBound].range(of: "<svg", options: .backwards) else { return nil }
        let rest = dom[open.lowerBound...]
        return rest[..<(rest.range(of: "</svg>")?.upperBound ?? rest.endIndex)]
    }

    func count(_ s: Substring, _ what: String) -> Int { s.components(separatedBy: what).count - 1 }
}

/// Decodes a PNG (8-bit RGB/RGBA, no interlace, as Chromium writes them) and
/// prints its number of distinct colours and the share of pixels that are not
/// the page background: a blank page has 1 colour and none.
let pngColours = #"""
import struct, sys, zlib
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n"
pos, idat = 8, b""
while pos < len(data):
    n, kind = struct.unpack(">I4s", data[pos:pos+8])
    body = data[pos+8:pos+8+n]
    if kind == b"IHDR":
        w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
    elif kind == b"IDAT":
        idat += body
    pos += 12 + n
bpp = {2: 3, 6: 4}[ctype]
raw = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
colours, counts = set(), {}
for y in range(h):
    f = raw[y*(stride+1)]
    line = bytearray(raw[y*(stride+1)+1:(y+1)*(stride+1)])
    for i in range(stride):
        a = line[i-bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i-bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p-a), abs(p-b), abs(p-c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    if y % 4 == 0:
        for x in range(0, w, 4):
            px = bytes(line[x*bpp:x*bpp+3])
            counts[px] = counts.get(px, 0) + 1
    prev = line
total = sum(counts.values())
background = max(counts.values())
print(len(counts), round(1 - background / total, 4))
"""#

import Foundation
@testable import MemhaulReport
import Testing

/// The page's structure without a browser (the browser check is in MemhaulCLITests).
struct ReportPageTests {
    @Test func senderPageHasEveryPlotWithItsPoints() {
        let html = ReportPage.html(sampleReport(), source: "r.json")
        for id in ["plot-timeline", "plot-frozen", "plot-bytes", "plot-rates", "plot-duration", "plot-tuning"] {
            #expect(html.contains("id=\"\(id)\""), "\(id) missing")
        }
        // 3 rounds × (page, wire) bars in plot-bytes, and one point per known dirty rate.
        let bytes = section(html, "plot-bytes")
        #expect(bytes.components(separatedBy: "class=\"bar\"").count - 1 == 6)
        #expect(section(html, "plot-rates").components(separatedBy: "data-series=\"dirty rate\"").count - 1 == 2)
        #expect(section(html, "plot-timeline").contains("class=\"band\""), "frozen window not drawn")
        #expect(section(html, "plot-timeline").contains("downtime limit"), "limit not drawn")
        #expect(!html.contains("<script"), "the page needs no script")
        #expect(!html.contains("http://") || !html.replacingOccurrences(of: "http://www.w3.org/2000/svg", with: "").contains("http://"))
        #expect(!html.contains("https://"))
        var moved = sampleReport()
        moved.restore = .init()
        moved.restore!.restoredPid = 777
        moved.restore!.criuDumpMs = 80
        #expect(ReportPage.html(moved, source: "r.json").contains("PID 777 on the receiver"))
        // Text from the migration is escaped.
        #expect(html.contains("&lt;&amp;&gt;") && !html.contains("<&>"))
    }

    @Test func receiverPageShowsChunks() {
        var r = sampleReport(side: .receiver)
        r.rounds = []
        r.downtime = nil
        r.connections = [.init(peer: "127.0.0.1:5555", startedAt: "2026-12-01T11:20:00.000Z", startMs: 0)]
        let html = ReportPage.html(r, source: "report.json")
        #expect(html.contains("id=\"plot-commit\""))
        #expect(section(html, "plot-commit").contains("class=\"point\""))
        #expect(section(html, "plot-bytes").components(separatedBy: "class=\"bar\"").count - 1 == 2)
        #expect(html.contains("Commit chunks"))
    }

    @Test func axisTicksAreRound() {
        let t = SVGChart.ticks(max: 3.3 * 1048576, axis: .init(title: "bytes", unit: .bytes))
        #expect(t.unitName == "MiB")
        #expect(t.values.map(t.label) == ["0", "1", "2", "3", "4"])
        let ms = SVGChart.ticks(max: 0.42, axis: .init(title: "t", unit: .milliseconds))
        #expect(ms.values.map(ms.label) == ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5"])
    }

    func section(_ html: String, _ id: String) -> Substring {
        guard let start = html.range(of: "id=\"\(id)\"") else { return "" }
        let rest = html[start.lowerBound...]
        return rest[..<(rest.range(of: "</svg>")?.upperBound ?? rest.endIndex)]
    }
}

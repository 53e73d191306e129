import Foundation

/// A report as one self-contained HTML page (`memhaul report`): summary,
/// warnings, SVG plots and tables; no script, no external resource.
public enum ReportPage {
    typealias C = SVGChart

    static let colors = (page: "#4e79a7", wire: "#f28e2b", dirty: "#e15759", throughput: "#59a14f", level: "#76b7b2",
                         throttle: "#edc948", predicted: "#b07aa1", actual: "#4e79a7", frozen: "#d62728", limit: "#111827",
                         resume: "#9c755f", fsync: "#af7aa1")

    public static func html(_ r: MigrationReport, source: String) -> String {
        var body = summary(r)
        body += r.side == .sender ? senderPlots(r) : receiverPlots(r)
        body += r.side == .sender ? roundsTable(r) : chunksTable(r)
        body += resumesTable(r)
        if let omitted = r.omittedEntries, !omitted.isEmpty {
            body += "<p class=\"note\">Left out by the report's size bound: \(esc(omitted.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", "))).</p>\n"
        }
        body += "<footer>From \(esc(source)) (report schema \(r.schemaVersion), \(r.side.rawValue) side). Times are offsets from the start on the agent's monotonic clock; stamps are UTC.</footer>\n"
        return """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>memhaul migration \(esc(r.migration))</title>
        <style>\(css)</style></head>
        <body><main>
        \(body)</main></body></html>

        """
    }

    // MARK: - Summary

    static func summary(_ r: MigrationReport) -> String {
        let ok = r.state == "completed" || r.state == "complete" || r.state == "running"
        var s = "<header><h1>Migration <code>\(esc(r.migration))</code></h1>"
        s += "<span class=\"badge \(ok ? "ok" : "bad")\">\(esc(r.state))</span>"
        s += "<p class=\"sub\">\(r.side == .sender ? "Sender" : "Receiver") report · started \(esc(r.startedAt))"
        if let t = r.totalMs { s += " · took \(esc(C.Unit.milliseconds.text(t)))" }
        if let pid = r.pid, let d = r.destination { s += " · PID \(pid) → \(esc(d))" }
        if let dir = r.imageDirectory { s += " · image \(esc(dir))" }
        s += "</p></header>\n"
        if let e = r.error { s += "<div class=\"error\"><b>\(esc(e.code))</b>: \(esc(e.message))</div>\n" }
        var cards: [(String, String, String?)] = []
        if r.side == .sender {
            cards.append(("Rounds", "\(r.totals.rounds)", "\(r.totals.chunks) commit chunks"))
            if let d = r.downtime {
                let frozen = d.frozenWindowMs ?? d.frozenMs
                cards.append(("Frozen window", frozen.map { C.Unit.milliseconds.text($0) } ?? "—",
                              "limit \(C.Unit.milliseconds.text(d.limitMs))" + (d.exceeded ? " · exceeded" : " · within")))
                cards.append(("Downtime to final commit", d.downtimeMs.map { C.Unit.milliseconds.text($0) } ?? "—",
                              d.expectedMs.map { "predicted \(C.Unit.milliseconds.text($0))" }))
            }
        } else {
            cards.append(("Commit chunks", "\(r.totals.chunks)", "\(r.connections.count) connection\(r.connections.count == 1 ? "" : "s")"))
            let commits = r.chunks.filter { !$0.final }.map(\.commitMs).sorted()
            if !commits.isEmpty {
                cards.append(("Commit latency", "median \(C.Unit.milliseconds.text(commits[commits.count / 2]))", "max \(C.Unit.milliseconds.text(commits.last!))"))
            }
        }
        cards.append(("Page bytes", C.Unit.bytes.text(Double(r.totals.pageBytes)), "\(r.totals.pages) pages, \(r.totals.zeroPages) zero, \(r.totals.discardedPages) discarded"))
        let ratio = r.totals.pageBytes > 0 ? String(format: "%.2f× of the page bytes", Double(r.totals.wireBytes) / Double(r.totals.pageBytes)) : nil
        cards.append(("Wire bytes", C.Unit.bytes.text(Double(r.totals.wireBytes)), ratio))
        cards.append(("Resumes", "\(r.resumes.count)", r.totals.resentBytesAfterResume > 0 ? "\(C.Unit.bytes.text(Double(r.totals.resentBytesAfterResume))) sent again" : nil))
        if let x = r.restore {
            let parts = [x.criuDumpMs.map { "criu dump \(C.Unit.milliseconds.text($0))" }, x.transferMs.map { "transfer \(C.Unit.milliseconds.text($0))" },
                         x.restoreMs.map { "restore \(C.Unit.milliseconds.text($0))" }, x.pagesCompleteMs.map { "all pages in \(C.Unit.milliseconds.text($0))" },
                         x.criuFiles.map { "\($0) CRIU files" }, x.criuBytes.map { C.Unit.bytes.text(Double($0)) }].compactMap { $0 }
            cards.append(("Moved (CRIU)", x.restoredPid.map { "PID \($0) on the receiver" } ?? "not restored", parts.isEmpty ? nil : parts.joined(separator: " · ")))
        }
        if let digest = r.digest { cards.append(("Digest", "<code class=\"digest\">\(esc(digest))</code>", "both sides agreed")) }
        s += "<section class=\"cards\">"
        for (title, value, note) in cards {
            let warn = title == "Frozen window" && r.downtime?.exceeded == true
            s += "<div class=\"card\(warn ? " warn" : "")\"><div class=\"k\">\(esc(title))</div><div class=\"v\">\(value.hasPrefix("<code") ? value : esc(value))</div>"
            if let note { s += "<div class=\"n\">\(esc(note))</div>" }
            s += "</div>"
        }
        s += "</section>\n"
        if let reason = r.downtime?.cutoverReason { s += "<p class=\"cutover\">Cutover: \(esc(reason))</p>\n" }
        if !r.warnings.isEmpty {
            s += "<div class=\"warnings\"><b>Warnings</b><ul>" + r.warnings.map { "<li>\(esc($0))</li>" }.joined() + "</ul></div>\n"
        }
        return s
    }

    // MARK: - Sender

    static func senderPlots(_ r: MigrationReport) -> String {
        let rounds = r.rounds
        let names = rounds.map { $0.frozen ? "\($0.round)*" : "\($0.round)" }
        var s = "<section class=\"wide\">" + senderTimeline(r) + "</section>\n"
        if let zoom = frozenZoom(r) { s += "<section class=\"wide\">" + zoom + "</section>\n" }
        s += "<section class=\"grid\">"
        s += C.chart(id: "plot-bytes", title: "Bytes per round: pages and what went on the wire", xTitle: "round (* = frozen)", categories: names, series: [
            .init(name: "page bytes", color: colors.page, values: rounds.map { Double($0.pageBytes) }, style: .bar),
            .init(name: "wire bytes", color: colors.wire, values: rounds.map { Double($0.wireBytes) }, style: .bar),
        ], left: .init(title: "bytes", unit: .bytes))
        s += C.chart(id: "plot-rates", title: "Dirty rate against throughput", xTitle: "round (* = frozen)", categories: names, series: [
            .init(name: "throughput (pages)", color: colors.throughput, values: rounds.map { $0.throughputBytesPerSecond }, style: .line),
            .init(name: "dirty rate", color: colors.dirty, values: rounds.map { $0.dirtyRateBytesPerSecond }, style: .line),
        ], left: .init(title: "rate", unit: .bytesPerSecond))
        s += C.chart(id: "plot-duration", title: "Round length: predicted against actual", xTitle: "round (* = frozen)", categories: names, series: [
            .init(name: "actual", color: colors.actual, values: rounds.map { $0.durationMs }, style: .bar),
            .init(name: "predicted", color: colors.predicted, values: rounds.map { $0.predictedMs }, style: .dashedLine),
        ] + (r.downtime.map { d in [C.Series(name: "downtime limit", color: colors.limit, values: rounds.map { _ in d.limitMs }, style: .reference)] } ?? []),
        left: .init(title: "duration", unit: .milliseconds))
        s += C.chart(id: "plot-tuning", title: "Compression level and throttle" + (r.throttleMechanism.map { " (\($0))" } ?? ""), xTitle: "round (* = frozen)", categories: names, series: [
            .init(name: "throttle", color: colors.throttle, values: rounds.map { Double($0.throttlePercent) }, style: .bar),
            .init(name: "zstd level (no point: raw)", color: colors.level, values: rounds.map { $0.compressionLevel.map(Double.init) }, style: .line, rightAxis: true),
        ], left: .init(title: "throttle", unit: .percent, fixedMax: 100), right: .init(title: "zstd level", unit: .plain, fixedMax: 3))
        return s + "</section>\n"
    }

    static let phaseColors: [String: String] = [
        "setup": "#9ca3af", "pre_copy": "#4e79a7", "freeze": "#ff9da7", "final_delta": "#e15759", "verify": "#b07aa1",
        "restore": "#59a14f", "release": "#76b7b2",
    ]

    static func senderLanes(_ r: MigrationReport) -> [C.Lane] {
        var lanes = [C.Lane(label: "phases", segments: r.phases.map {
            C.Segment(start: $0.startMs, end: $0.endMs, label: $0.name.replacingOccurrences(of: "_", with: " "), color: phaseColors[$0.name] ?? "#bab0ac")
        })]
        lanes.append(C.Lane(label: "rounds", segments: r.rounds.map {
            C.Segment(start: $0.startMs, end: $0.endMs, label: "round \($0.round)", color: $0.frozen ? colors.frozen : ($0.round % 2 == 0 ? "#4e79a7" : "#a0cbe8"))
        }))
        return lanes
    }

    static func markers(_ r: MigrationReport) -> [C.Marker] {
        var m: [C.Marker] = []
        if let d = r.downtime, let start = d.frozenStartMs {
            m.append(.init(at: start + d.limitMs, label: "downtime limit (\(C.Unit.milliseconds.text(d.limitMs)) after the freeze)", color: colors.limit, dashed: true))
        }
        for resume in r.resumes { m.append(.init(at: resume.atMs, label: "resume", color: colors.resume, dashed: false)) }
        return m
    }

    static func frozenBand(_ r: MigrationReport) -> C.Segment? {
        guard let d = r.downtime, let start = d.frozenStartMs, let end = d.frozenEndMs else { return nil }
        return C.Segment(start: start, end: end, label: "frozen window (\(C.Unit.milliseconds.text(end - start)))", color: colors.frozen)
    }

    static func senderTimeline(_ r: MigrationReport) -> String {
        let end = max(r.totalMs ?? 0, r.phases.map(\.endMs).max() ?? 0, 1)
        return C.timeline(id: "plot-timeline", title: "Timeline of the phases and rounds", range: 0...end,
                          lanes: senderLanes(r), band: frozenBand(r), markers: markers(r))
    }

    /// The frozen window on its own scale, with the limit: on the whole
    /// timeline a 100 ms window of a 30 s migration is a sliver.
    static func frozenZoom(_ r: MigrationReport) -> String? {
        guard let d = r.downtime, let start = d.frozenStartMs, let end = d.frozenEndMs else { return nil }
        let upper = max(end, start + d.limitMs) + max(end - start, d.limitMs) * 0.08
        return C.timeline(id: "plot-frozen", title: "The frozen window, zoomed: where the downtime went", range: start...upper,
                          lanes: senderLanes(r), band: frozenBand(r), markers: markers(r).filter { $0.label != "resume" })
    }

    static func roundsTable(_ r: MigrationReport) -> String {
        var s = "<section><h2>Rounds</h2><table><thead><tr><th>round</th><th>chunks</th><th>start</th><th>length</th><th>predicted</th><th>pages</th><th>zero</th><th>discarded</th><th>page bytes</th><th>wire bytes</th><th>throughput</th><th>dirty rate</th><th>compression</th><th>throttle</th><th>decision</th></tr></thead><tbody>\n"
        for x in r.rounds {
            let decision = [x.decision, x.decisionReason].compactMap { $0 }.joined(separator: ": ")
            s += "<tr\(x.frozen ? " class=\"frozen\"" : "")><td>\(x.round)\(x.frozen ? " (frozen)" : "")</td><td>\(x.firstChunk == x.lastChunk ? "\(x.firstChunk)" : "\(x.firstChunk)–\(x.lastChunk)")</td>"
            s += "<td>\(esc(C.Unit.milliseconds.text(x.startMs)))</td><td>\(esc(C.Unit.milliseconds.text(x.durationMs)))</td><td>\(x.predictedMs.map { esc(C.Unit.milliseconds.text($0)) } ?? "—")</td>"
            s += "<td>\(x.pages)</td><td>\(x.zeroPages)</td><td>\(x.discardedPages)</td><td>\(esc(C.Unit.bytes.text(Double(x.pageBytes))))</td><td>\(esc(C.Unit.bytes.text(Double(x.wireBytes))))</td>"
            s += "<td>\(esc(C.Unit.bytesPerSecond.text(x.throughputBytesPerSecond)))</td><td>\(x.dirtyRateBytesPerSecond.map { esc(C.Unit.bytesPerSecond.text($0)) } ?? "—")</td>"
            s += "<td>\(esc(x.compression))</td><td>\(x.throttlePercent)%</td><td class=\"l\">\(esc(decision))</td></tr>\n"
        }
        s += "</tbody></table>"
        if !r.phases.isEmpty {
            s += "<h2>Phases</h2><table class=\"narrow\"><thead><tr><th>phase</th><th>started</th><th>offset</th><th>length</th></tr></thead><tbody>"
            for p in r.phases {
                s += "<tr><td class=\"l\">\(esc(p.name))</td><td>\(esc(p.startedAt))</td><td>\(esc(C.Unit.milliseconds.text(p.startMs)))</td><td>\(esc(C.Unit.milliseconds.text(p.durationMs)))</td></tr>"
            }
            s += "</tbody></table>"
        }
        return s + "</section>\n"
    }

    // MARK: - Receiver

    static func receiverPlots(_ r: MigrationReport) -> String {
        let chunks = r.chunks
        let names = chunks.map { $0.final ? "\($0.chunk)✓" : "\($0.chunk)" }
        let end = max(r.totalMs ?? 0, r.connections.compactMap(\.endMs).max() ?? 0, chunks.map(\.atMs).max() ?? 0, 1)
        var lanes = [C.Lane(label: "connections", segments: r.connections.enumerated().map { i, c in
            C.Segment(start: c.startMs, end: c.endMs ?? end, label: "connection \(i + 1)", color: i % 2 == 0 ? "#4e79a7" : "#a0cbe8")
        })]
        lanes.append(C.Lane(label: "commits", segments: chunks.map {
            C.Segment(start: max(0, $0.atMs - $0.commitMs), end: $0.atMs, label: "chunk \($0.chunk)", color: $0.final ? "#59a14f" : "#f28e2b")
        }))
        var s = "<section class=\"wide\">" + C.timeline(id: "plot-timeline", title: "Timeline of the connections and commits", range: 0...end, lanes: lanes, band: nil,
                                                         markers: r.resumes.map { .init(at: $0.atMs, label: "resume", color: colors.resume, dashed: false) }) + "</section>\n"
        s += "<section class=\"grid\">"
        s += C.chart(id: "plot-bytes", title: "Bytes per commit chunk", xTitle: "chunk (✓ = verification)", categories: names, series: [
            .init(name: "page bytes", color: colors.page, values: chunks.map { Double($0.pageBytes) }, style: .bar),
            .init(name: "wire bytes", color: colors.wire, values: chunks.map { Double($0.wireBytes) }, style: .bar),
        ], left: .init(title: "bytes", unit: .bytes))
        s += C.chart(id: "plot-commit", title: "Commit latency per chunk", xTitle: "chunk (✓ = verification)", categories: names, series: [
            .init(name: "commit", color: colors.actual, values: chunks.map { $0.commitMs }, style: .line),
            .init(name: "journal fsync", color: colors.fsync, values: chunks.map { $0.fsyncMs }, style: .dashedLine),
        ], left: .init(title: "latency", unit: .milliseconds))
        return s + "</section>\n"
    }

    static func chunksTable(_ r: MigrationReport) -> String {
        var s = "<section><h2>Commit chunks</h2><table><thead><tr><th>chunk</th><th>committed</th><th>offset</th><th>pages</th><th>zero</th><th>discarded</th><th>page bytes</th><th>wire bytes</th><th>commit</th><th>fsync</th></tr></thead><tbody>\n"
        for c in r.chunks {
            s += "<tr\(c.final ? " class=\"frozen\"" : "")><td>\(c.chunk)\(c.final ? " (verification)" : "")</td><td>\(esc(c.committedAt))</td><td>\(esc(C.Unit.milliseconds.text(c.atMs)))</td>"
            s += "<td>\(c.pages)</td><td>\(c.zeroPages)</td><td>\(c.discardedPages)</td><td>\(esc(C.Unit.bytes.text(Double(c.pageBytes))))</td><td>\(esc(C.Unit.bytes.text(Double(c.wireBytes))))</td>"
            s += "<td>\(esc(C.Unit.milliseconds.text(c.commitMs)))</td><td>\(esc(C.Unit.milliseconds.text(c.fsyncMs)))</td></tr>\n"
        }
        s += "</tbody></table>"
        if !r.connections.isEmpty {
            s += "<h2>Connections</h2><table class=\"narrow\"><thead><tr><th>peer</th><th>started</th><th>length</th><th>resumed from chunk</th><th>end</th></tr></thead><tbody>"
            for c in r.connections {
                s += "<tr><td class=\"l\">\(esc(c.peer))</td><td>\(esc(c.startedAt))</td><td>\(c.endMs.map { esc(C.Unit.milliseconds.text($0 - c.startMs)) } ?? "—")</td>"
                s += "<td>\(c.resumeFromChunk.map { "\($0)" } ?? "—")</td><td class=\"l\">\(esc([c.endState, c.error].compactMap { $0 }.joined(separator: ": ")))</td></tr>"
            }
            s += "</tbody></table>"
        }
        return s + "</section>\n"
    }

    static func resumesTable(_ r: MigrationReport) -> String {
        guard !r.resumes.isEmpty else { return "" }
        var s = "<section><h2>Resumes</h2><table class=\"narrow\"><thead><tr><th>at</th><th>offset</th><th>resumed after chunk</th><th>bytes sent again</th><th>reconnect</th><th>why</th></tr></thead><tbody>"
        for x in r.resumes {
            s += "<tr><td>\(esc(x.at))</td><td>\(esc(C.Unit.milliseconds.text(x.atMs)))</td><td>\(x.committedChunk.map { "\($0)" } ?? "—")</td>"
            s += "<td>\(x.resentBytes.map { esc(C.Unit.bytes.text(Double($0))) } ?? "—")</td><td>\(x.reconnectMs.map { esc(C.Unit.milliseconds.text($0)) } ?? "—")</td><td class=\"l\">\(esc(x.reason ?? ""))</td></tr>"
        }
        return s + "</tbody></table></section>\n"
    }

    static func esc(_ s: String) -> String { C.escape(s) }

    static let css = """
    body{margin:0;background:#f5f6f8;color:#1f2937;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
    main{max-width:1232px;margin:0 auto;padding:20px 16px 40px}
    header h1{display:inline-block;margin:0 12px 4px 0;font-size:24px}
    .badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;vertical-align:4px}
    .badge.ok{background:#dcfce7;color:#166534}.badge.bad{background:#fee2e2;color:#991b1b}
    .sub{margin:0 0 14px;color:#4b5563}
    .cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px;margin-bottom:12px}
    .card{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:10px 12px}
    .card.warn{border-color:#f59e0b;background:#fffbeb}
    .card .k{color:#6b7280;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
    .card .v{font-size:20px;font-weight:600;margin:2px 0}.card .n{color:#6b7280;font-size:12px}
    code.digest{font-size:12px;word-break:break-all}
    .error{background:#fee2e2;border:1px solid #fca5a5;border-radius:8px;padding:10px 12px;margin-bottom:12px}
    .warnings{background:#fffbeb;border:1px solid #fcd34d;border-radius:8px;padding:10px 12px;margin-bottom:12px}
    .warnings ul{margin:4px 0 0 18px;padding:0}
    .cutover{margin:0 0 12px;color:#374151}
    section.wide,section.grid{margin-bottom:12px}
    section.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
    svg.plot{display:block;width:100%;height:auto;background:#fff;border:1px solid #e5e7eb;border-radius:8px}
    svg .plot-title{font-size:15px;font-weight:600;fill:#111827}
    svg .tick{font-size:11px;fill:#4b5563}svg .axis-title{font-size:12px;fill:#374151}
    svg .legend-text{font-size:12px;fill:#374151}svg .lane{font-size:12px;fill:#374151}
    svg .in-bar{font-size:11px;fill:#fff;pointer-events:none}svg .empty{font-size:14px;fill:#9ca3af}
    h2{font-size:17px;margin:18px 0 8px}
    table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #e5e7eb;font-size:12.5px;font-variant-numeric:tabular-nums}
    table.narrow{width:auto;min-width:50%}
    th,td{padding:4px 8px;border-bottom:1px solid #eef0f2;text-align:right;white-space:nowrap}
    th{background:#f9fafb;color:#374151;font-weight:600}td.l{text-align:left;white-space:normal}
    tr.frozen td{background:#fef2f2}
    .note{color:#6b7280}footer{margin-top:20px;color:#6b7280;font-size:12px}
    """
}

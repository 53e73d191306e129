import Foundation

/// Inline SVG plots for the report page: drawn here, as text, so the page
/// needs no script, font or network. Every data point is an element with a
/// class (`bar`, `point`, `segment`) and a `<title>` (the browser's tooltip).
enum SVGChart {
    /// How values of an axis are shown.
    enum Unit {
        case bytes, bytesPerSecond, milliseconds, percent, plain

        /// A divisor and its unit name for values up to `max`.
        func scale(for max: Double) -> (divisor: Double, name: String) {
            switch self {
            case .bytes, .bytesPerSecond:
                let names = ["B", "KiB", "MiB", "GiB", "TiB"]
                var i = 0
                var d = 1.0
                while max / d >= 1024 && i < names.count - 1 { d *= 1024; i += 1 }
                return (d, self == .bytes ? names[i] : names[i] + "/s")
            case .milliseconds:
                return max >= 10_000 ? (1000, "s") : (1, "ms")
            case .percent:
                return (1, "%")
            case .plain:
                return (1, "")
            }
        }

        /// One value with its unit, for tooltips and tables.
        func text(_ v: Double) -> String {
            let (d, name) = scale(for: abs(v))
            let x = v / d
            let digits = x == x.rounded() && d == 1 ? 0 : abs(x) >= 100 ? 0 : abs(x) >= 10 ? 1 : 2
            return String(format: "%.\(digits)f", x) + (name.isEmpty ? "" : name == "%" ? "%" : " " + name)
        }
    }

    struct Axis {
        var title: String
        var unit: Unit
        /// A fixed top (percentages: 100), else from the data.
        var fixedMax: Double? = nil
        /// The bottom when data goes below 0 (zstd's fast levels are negative).
        var fixedMin: Double? = nil
    }

    /// `reference`: a dashed line without points (a limit, not data).
    enum Style { case bar, line, dashedLine, reference }

    struct Series {
        var name: String
        var color: String
        var values: [Double?]
        var style: Style
        var rightAxis = false
    }

    static let width = 600.0
    static let height = 320.0
    static let margin = (left: 64.0, right: 58.0, top: 56.0, bottom: 48.0)

    /// Bars and lines over categories (rounds, chunks), a left axis and an optional right one.
    static func chart(id: String, title: String, xTitle: String, categories: [String], series: [Series], left: Axis, right: Axis? = nil) -> String {
        let pw = width - margin.left - margin.right, ph = height - margin.top - margin.bottom
        var svg = header(id: id, title: title, width: width, height: height)
        svg += legend(series.map { ($0.name, $0.color, $0.style) }, y: 40)
        let leftValues = series.filter { !$0.rightAxis }.flatMap { $0.values.compactMap { $0 } }
        let rightValues = series.filter { $0.rightAxis }.flatMap { $0.values.compactMap { $0 } }
        let leftTicks = ticks(max: leftValues.max() ?? 0, min: leftValues.min() ?? 0, axis: left)
        let rightTicks = right.map { ticks(max: rightValues.max() ?? 0, min: rightValues.min() ?? 0, axis: $0) }
        // Grid and axes.
        for t in leftTicks.values {
            let y = margin.top + ph - leftTicks.fraction(t) * ph
            svg += line(margin.left, y, margin.left + pw, y, "#e3e6ea")
            svg += text(margin.left - 6, y + 4, leftTicks.label(t), anchor: "end", cls: "tick")
        }
        if let rightTicks {
            for t in rightTicks.values {
                let y = margin.top + ph - rightTicks.fraction(t) * ph
                svg += text(margin.left + pw + 6, y + 4, rightTicks.label(t), anchor: "start", cls: "tick")
            }
            svg += axisTitle(x: width - 12, y: margin.top + ph / 2, right!.title + unitSuffix(rightTicks.unitName), rotate: 90)
        }
        svg += line(margin.left, margin.top + ph, margin.left + pw, margin.top + ph, "#6b7280")
        svg += line(margin.left, margin.top, margin.left, margin.top + ph, "#6b7280")
        svg += axisTitle(x: 14, y: margin.top + ph / 2, left.title + unitSuffix(leftTicks.unitName), rotate: -90)
        svg += text(margin.left + pw / 2, height - 8, xTitle, anchor: "middle", cls: "axis-title")
        let n = max(categories.count, 1)
        let slot = pw / Double(n)
        let every = max(1, Int((Double(n) / 24).rounded(.up)))
        for (i, c) in categories.enumerated() where i % every == 0 {
            svg += text(margin.left + slot * (Double(i) + 0.5), margin.top + ph + 16, c, anchor: "middle", cls: "tick")
        }
        // Bars, grouped within each slot.
        let bars = series.filter { $0.style == .bar }
        let group = slot * 0.8
        let barWidth = bars.isEmpty ? 0 : group / Double(bars.count)
        for (b, s) in bars.enumerated() {
            let scale = s.rightAxis ? rightTicks! : leftTicks
            for (i, v) in s.values.enumerated() {
                guard let v else { continue }
                let base = margin.top + ph - scale.fraction(0) * ph
                let h = max(0, (scale.fraction(v) - scale.fraction(0)) * ph)
                let x = margin.left + slot * Double(i) + (slot - group) / 2 + barWidth * Double(b)
                svg += "<rect class=\"bar\" data-series=\"\(escape(s.name))\" data-value=\"\(v)\" x=\"\(f(x))\" y=\"\(f(base - h))\" width=\"\(f(max(barWidth - 1, 0.5)))\" height=\"\(f(h))\" fill=\"\(s.color)\"><title>\(escape("\(s.name), \(xTitle) \(categories[i]): \(scale.unit.text(v))"))</title></rect>\n"
            }
        }
        // Lines with a point per value.
        for s in series where s.style != .bar {
            let scale = s.rightAxis ? rightTicks! : leftTicks
            var points: [(Double, Double, Int, Double)] = []
            for (i, v) in s.values.enumerated() {
                guard let v else { continue }
                points.append((margin.left + slot * (Double(i) + 0.5), margin.top + ph - min(max(scale.fraction(v), 0), 1) * ph, i, v))
            }
            if points.count > 1 {
                let d = points.map { "\(f($0.0)),\(f($0.1))" }.joined(separator: " ")
                let dash = s.style == .line ? "" : " stroke-dasharray=\"6 4\""
                svg += "<polyline class=\"series\" fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"2\"\(dash) points=\"\(d)\"/>\n"
            }
            for p in points where s.style != .reference {
                svg += "<circle class=\"point\" data-series=\"\(escape(s.name))\" data-value=\"\(p.3)\" cx=\"\(f(p.0))\" cy=\"\(f(p.1))\" r=\"3.5\" fill=\"\(s.color)\"><title>\(escape("\(s.name), \(xTitle) \(categories[p.2]): \(scale.unit.text(p.3))"))</title></circle>\n"
            }
        }
        if series.allSatisfy({ $0.values.allSatisfy { $0 == nil } }) {
            svg += text(margin.left + pw / 2, margin.top + ph / 2, "no data", anchor: "middle", cls: "empty")
        }
        return svg + "</svg>\n"
    }

    struct Segment {
        var start: Double
        var end: Double
        var label: String
        var color: String
    }

    struct Lane {
        var label: String
        var segments: [Segment]
    }

    struct Marker {
        var at: Double
        var label: String
        var color: String
        var dashed: Bool
    }

    /// Lanes of spans over time (milliseconds from the report's start), a
    /// shaded band (the frozen window) and vertical markers (the limit, resumes).
    static func timeline(id: String, title: String, range: ClosedRange<Double>, lanes: [Lane], band: Segment?, markers: [Marker],
                         width: Double = 1200) -> String {
        let left = 110.0, right = 24.0, top = 56.0, laneHeight = 30.0, bottom = 46.0
        let height = top + laneHeight * Double(max(lanes.count, 1)) + bottom
        let pw = width - left - right
        let span = max(range.upperBound - range.lowerBound, 0.001)
        func x(_ t: Double) -> Double { left + (min(max(t, range.lowerBound), range.upperBound) - range.lowerBound) / span * pw }
        var svg = header(id: id, title: title, width: width, height: height)
        var legendItems: [(String, String, Style)] = []
        if let band { legendItems.append((band.label, band.color, .bar)) }
        for m in markers where !legendItems.contains(where: { $0.0 == m.label }) { legendItems.append((m.label, m.color, m.dashed ? .dashedLine : .line)) }
        svg += legend(legendItems, y: 40)
        let axis = ticks(max: span, axis: Axis(title: "time", unit: .milliseconds))
        let laneBottom = top + laneHeight * Double(lanes.count)
        for t in axis.values {
            let px = left + t / span * pw
            guard px <= left + pw + 0.5 else { continue }
            svg += line(px, top, px, laneBottom, "#e3e6ea")
            svg += text(px, laneBottom + 16, axis.label(t), anchor: "middle", cls: "tick")
        }
        svg += text(left + pw / 2, height - 8, "time since " + (range.lowerBound == 0 ? "the start" : "the freeze") + unitSuffix(axis.unitName), anchor: "middle", cls: "axis-title")
        if let band {
            svg += "<rect class=\"band\" x=\"\(f(x(band.start)))\" y=\"\(f(top - 4))\" width=\"\(f(max(x(band.end) - x(band.start), 2)))\" height=\"\(f(laneBottom - top + 8))\" fill=\"\(band.color)\" fill-opacity=\"0.18\" stroke=\"\(band.color)\" stroke-width=\"1\"><title>\(escape("\(band.label): \(Unit.milliseconds.text(band.end - band.start))"))</title></rect>\n"
        }
        for (i, lane) in lanes.enumerated() {
            let y = top + laneHeight * Double(i)
            svg += text(left - 8, y + laneHeight / 2 + 4, lane.label, anchor: "end", cls: "lane")
            svg += line(left, y + laneHeight, left + pw, y + laneHeight, "#f0f1f3")
            for s in lane.segments where s.end >= range.lowerBound && s.start <= range.upperBound {
                let x0 = x(s.start), w = max(x(s.end) - x0, 1.5)
                svg += "<rect class=\"segment\" data-start-ms=\"\(s.start)\" data-end-ms=\"\(s.end)\" x=\"\(f(x0))\" y=\"\(f(y + 5))\" width=\"\(f(w))\" height=\"\(f(laneHeight - 10))\" rx=\"3\" fill=\"\(s.color)\"><title>\(escape("\(s.label): \(Unit.milliseconds.text(s.end - s.start)) (\(Unit.milliseconds.text(s.start)) → \(Unit.milliseconds.text(s.end)))"))</title></rect>\n"
                if w > Double(s.label.count) * 7 + 8 {
                    svg += text(x0 + w / 2, y + laneHeight / 2 + 4, s.label, anchor: "middle", cls: "in-bar")
                }
            }
        }
        svg += line(left, laneBottom, left + pw, laneBottom, "#6b7280")
        for m in markers where range.contains(m.at) {
            let px = x(m.at)
            svg += "<line class=\"marker\" x1=\"\(f(px))\" y1=\"\(f(top - 8))\" x2=\"\(f(px))\" y2=\"\(f(laneBottom + 4))\" stroke=\"\(m.color)\" stroke-width=\"2\"\(m.dashed ? " stroke-dasharray=\"6 4\"" : "")><title>\(escape("\(m.label) at \(Unit.milliseconds.text(m.at))"))</title></line>\n"
        }
        return svg + "</svg>\n"
    }

    // MARK: - Pieces

    struct Ticks {
        var top: Double
        var bottom: Double = 0
        var values: [Double]
        var divisor: Double
        var unitName: String
        var unit: Unit
        /// Where `v` sits between the bottom (0) and the top (1).
        func fraction(_ v: Double) -> Double { top > bottom ? (v - bottom) / (top - bottom) : 0 }
        func label(_ v: Double) -> String {
            let x = v / divisor
            let step = values.count > 1 ? (values[1] - values[0]) / divisor : 1
            let digits = step >= 1 ? 0 : min(3, Int((-log10(step)).rounded(.up)))
            return String(format: "%.\(digits)f", x)
        }
    }

    /// Round ticks from 0 (or below, for negative data) to at least `max`, about five of them.
    static func ticks(max: Double, min: Double = 0, axis: Axis) -> Ticks {
        let top = axis.fixedMax.map { Swift.max($0, max) } ?? max
        let low = Swift.min(0, min, axis.fixedMin.map { Swift.min($0, min) } ?? 0)
        let (divisor, name) = axis.unit.scale(for: Swift.max(top, -low))
        let scaled = (top - low) / divisor
        guard scaled > 0, scaled.isFinite else { return Ticks(top: divisor, values: stride(from: 0, through: divisor, by: divisor / 5).map { $0 }, divisor: divisor, unitName: name, unit: axis.unit) }
        let raw = scaled / 5
        let magnitude = pow(10, floor(log10(raw)))
        let norm = raw / magnitude
        let step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * magnitude
        let niceTop = (top / divisor / step).rounded(.up) * step
        let niceBottom = (low / divisor / step).rounded(.down) * step
        let values = stride(from: niceBottom, through: niceTop + step / 2, by: step).map { $0 * divisor }
        return Ticks(top: niceTop * divisor, bottom: niceBottom * divisor, values: values, divisor: divisor, unitName: name, unit: axis.unit)
    }

    static func header(id: String, title: String, width: Double, height: Double) -> String {
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" id=\"\(id)\" viewBox=\"0 0 \(f(width)) \(f(height))\" width=\"\(f(width))\" height=\"\(f(height))\" role=\"img\" aria-label=\"\(escape(title))\">\n<rect x=\"0\" y=\"0\" width=\"\(f(width))\" height=\"\(f(height))\" fill=\"#ffffff\"/>\n"
            + text(12, 22, title, anchor: "start", cls: "plot-title")
    }

    static func legend(_ items: [(String, String, Style)], y: Double) -> String {
        var svg = "<g class=\"legend\">"
        var x = 14.0
        for (name, color, style) in items {
            switch style {
            case .bar: svg += "<rect x=\"\(f(x))\" y=\"\(f(y - 9))\" width=\"12\" height=\"10\" fill=\"\(color)\"/>"
            case .line, .dashedLine, .reference:
                svg += "<line x1=\"\(f(x))\" y1=\"\(f(y - 4))\" x2=\"\(f(x + 14))\" y2=\"\(f(y - 4))\" stroke=\"\(color)\" stroke-width=\"2\"\(style == .line ? "" : " stroke-dasharray=\"4 3\"")/>"
            }
            svg += text(x + 18, y, name, anchor: "start", cls: "legend-text")
            x += 30 + Double(name.count) * 6.6
        }
        return svg + "</g>\n"
    }

    static func axisTitle(x: Double, y: Double, _ s: String, rotate: Double) -> String {
        "<text class=\"axis-title\" x=\"\(f(x))\" y=\"\(f(y))\" text-anchor=\"middle\" transform=\"rotate(\(f(rotate)) \(f(x)) \(f(y)))\">\(escape(s))</text>\n"
    }

    static func unitSuffix(_ name: String) -> String { name.isEmpty ? "" : " (\(name))" }

    static func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, _ color: String) -> String {
        "<line x1=\"\(f(x1))\" y1=\"\(f(y1))\" x2=\"\(f(x2))\" y2=\"\(f(y2))\" stroke=\"\(color)\" stroke-width=\"1\"/>\n"
    }

    static func text(_ x: Double, _ y: Double, _ s: String, anchor: String, cls: String) -> String {
        "<text class=\"\(cls)\" x=\"\(f(x))\" y=\"\(f(y))\" text-anchor=\"\(anchor)\">\(escape(s))</text>\n"
    }

    static func f(_ v: Double) -> String { String(format: "%.1f", v.isFinite ? v : 0) }

    /// Text for XML and HTML (the report's strings come from the migration: ids, messages).
    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(c)
            }
        }
        return out
    }
}

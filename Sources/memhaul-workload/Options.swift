#if canImport(Glibc)
import Glibc
#endif

/// Command-line options of memhaul-workload (ARCHITECTURE.md, "Workload control protocol").
struct Options {
    enum Pattern: Equatable {
        case uniform
        /// 90% of writes go to this fraction of the pages.
        case hot(Double)
        /// A key-value store's hot keys: every write goes to this fraction of the pages and
        /// rewrites one 8-byte field of one 64-byte value (``Content/updateField(_:_:)``).
        case kv(Double)
    }

    var size: UInt64 = 64 << 20
    var regions = 1
    /// Percentages of zero, text and random pages.
    var mix: (zero: Int, text: Int, random: Int) = (30, 40, 30)
    /// nil: leave the system THP default.
    var thp: Bool?
    var threads = 0
    /// Pages per second over all writer threads; 0 = as fast as possible.
    var rate: Double = 0
    var pattern: Pattern = .uniform
    var churn: Double = 0
    var control = false
    var reportEvery: Double = 0
    var exitAfter: Double = 0
    var seed: UInt64 = 1
    /// Threads blocking in these calls that count their EINTRs (`eintr` command).
    var eintrProbes: [EINTRProbe.Kind] = []
    /// Where the heartbeat thread keeps the longest pause and the stalls it saw (Heartbeat.swift).
    var heartbeat: String?

    static let usage = """
        usage: memhaul-workload --size 64M [--regions N] [--mix zero=30,text=40,random=30]
               [--thp on|off] [--threads T --rate PAGES_PER_SEC --pattern uniform|hot:0.1|kv:0.05]
               [--churn OPS_PER_SEC] [--control] [--report-every SECONDS] [--exit-after SECONDS] [--seed N]
               [--eintr-probe sigtimedwait]
               [--heartbeat FILE]
        """

    struct ParseError: Error { var message: String }

    static func parse(_ args: [String]) throws(ParseError) -> Options {
        var o = Options()
        var i = 0
        func value(_ name: String) throws(ParseError) -> String {
            i += 1
            guard i < args.count else { throw ParseError(message: "\(name) needs a value") }
            return args[i]
        }
        func number(_ name: String, _ s: String) throws(ParseError) -> Double {
            guard let v = Double(s), v >= 0 else { throw ParseError(message: "\(name): bad number \(s)") }
            return v
        }
        while i < args.count {
            let a = args[i]
            switch a {
            case "--size":
                let s = try value(a)
                guard let v = parseSize(s), v > 0 else { throw ParseError(message: "--size: bad size \(s)") }
                o.size = v
            case "--regions":
                guard let v = Int(try value(a)), v >= 1 else { throw ParseError(message: "--regions: need N >= 1") }
                o.regions = v
            case "--mix":
                o.mix = try parseMix(try value(a))
            case "--thp":
                switch try value(a) {
                case "on": o.thp = true
                case "off": o.thp = false
                case let s: throw ParseError(message: "--thp: expected on|off, got \(s)")
                }
            case "--threads":
                guard let v = Int(try value(a)), v >= 0 else { throw ParseError(message: "--threads: need T >= 0") }
                o.threads = v
            case "--rate": o.rate = try number(a, try value(a))
            case "--pattern":
                let s = try value(a)
                if s == "uniform" {
                    o.pattern = .uniform
                } else if s.hasPrefix("hot:"), let f = Double(s.dropFirst(4)), f > 0, f <= 1 {
                    o.pattern = .hot(f)
                } else if s.hasPrefix("kv:"), let f = Double(s.dropFirst(3)), f > 0, f <= 1 {
                    o.pattern = .kv(f)
                } else {
                    throw ParseError(message: "--pattern: expected uniform, hot:FRACTION or kv:FRACTION, got \(s)")
                }
            case "--churn": o.churn = try number(a, try value(a))
            case "--control": o.control = true
            case "--report-every": o.reportEvery = try number(a, try value(a))
            case "--exit-after": o.exitAfter = try number(a, try value(a))
            case "--heartbeat": o.heartbeat = try value(a)
            case "--seed":
                guard let v = UInt64(try value(a)) else { throw ParseError(message: "--seed: need an integer") }
                o.seed = v
            case "--eintr-probe":
                let s = try value(a)
                guard let k = EINTRProbe.Kind(rawValue: s) else { throw ParseError(message: "--eintr-probe: expected sigtimedwait, got \(s)") }
                o.eintrProbes = [k]
            case "--help", "-h":
                throw ParseError(message: usage)
            default:
                throw ParseError(message: "unknown option \(a)\n\(usage)")
            }
            i += 1
        }
        return o
    }

    /// "64M", "1G", "512K", "4096".
    static func parseSize(_ s: String) -> UInt64? {
        guard let last = s.last else { return nil }
        let shift: UInt64
        var digits = Substring(s)
        switch last {
        case "K", "k": shift = 10
        case "M", "m": shift = 20
        case "G", "g": shift = 30
        default: shift = 0
        }
        if shift > 0 { digits = digits.dropLast() }
        guard let v = UInt64(digits) else { return nil }
        return v << shift
    }

    static func parseMix(_ s: String) throws(ParseError) -> (zero: Int, text: Int, random: Int) {
        var mix = (zero: 0, text: 0, random: 0)
        for item in s.split(separator: ",") {
            let kv = item.split(separator: "=")
            guard kv.count == 2, let v = Int(kv[1]), v >= 0 else { throw ParseError(message: "--mix: bad item \(item)") }
            switch kv[0] {
            case "zero": mix.zero = v
            case "text": mix.text = v
            case "random": mix.random = v
            default: throw ParseError(message: "--mix: unknown kind \(kv[0])")
            }
        }
        guard mix.zero + mix.text + mix.random > 0 else { throw ParseError(message: "--mix: all zero") }
        return mix
    }
}

#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// The report's clock: a wall-clock origin for RFC 3339 stamps and a
/// monotonic origin for offsets, so a stamp is `origin + offset` and a wall
/// clock step during a migration cannot reorder events.
public struct ReportClock: Sendable, Equatable {
    public let wallOriginNanoseconds: UInt64
    public let monotonicOrigin: Double

    public init(wallOriginNanoseconds: UInt64 = WallClock.nanoseconds(), monotonicOrigin: Double = MonotonicClock.seconds()) {
        self.wallOriginNanoseconds = wallOriginNanoseconds
        self.monotonicOrigin = monotonicOrigin
    }

    /// A clock that continues a report started at `startedAt` (another
    /// connection, or a restarted receiver): the origin is placed by the wall clock.
    public init?(continuing startedAt: String) {
        guard let origin = Self.parse(startedAt) else { return nil }
        let wallNow = WallClock.nanoseconds()
        let ago = wallNow > origin ? Double(wallNow - origin) / 1e9 : 0
        self.init(wallOriginNanoseconds: origin, monotonicOrigin: MonotonicClock.seconds() - ago)
    }

    public var startedAt: String { Self.rfc3339(nanoseconds: wallOriginNanoseconds) }

    /// Milliseconds since the origin of a `MonotonicClock.seconds()` instant.
    public func offsetMs(_ monotonic: Double) -> Double { Self.round3((monotonic - monotonicOrigin) * 1000) }

    /// RFC 3339 of a `MonotonicClock.seconds()` instant.
    public func stamp(_ monotonic: Double) -> String {
        let delta = (monotonic - monotonicOrigin) * 1e9
        let ns = delta >= 0 ? wallOriginNanoseconds &+ UInt64(delta) : wallOriginNanoseconds &- UInt64(min(-delta, Double(wallOriginNanoseconds)))
        return Self.rfc3339(nanoseconds: ns)
    }

    /// `2026-12-01T11:20:00.123Z`.
    public static func rfc3339(nanoseconds: UInt64) -> String {
        var seconds = time_t(nanoseconds / 1_000_000_000)
        var t = tm()
        gmtime_r(&seconds, &t)
        let ms = Int(nanoseconds / 1_000_000 % 1000)
        func pad(_ v: Int32, _ width: Int) -> String { String(repeating: "0", count: max(0, width - String(v).count)) + String(v) }
        return "\(pad(t.tm_year + 1900, 4))-\(pad(t.tm_mon + 1, 2))-\(pad(t.tm_mday, 2))T\(pad(t.tm_hour, 2)):\(pad(t.tm_min, 2)):\(pad(t.tm_sec, 2)).\(pad(Int32(ms), 3))Z"
    }

    /// The nanoseconds of a stamp ``rfc3339(nanoseconds:)`` made (UTC, `Z`, optional fraction).
    public static func parse(_ s: String) -> UInt64? {
        let u = Array(s.utf8)
        func num(_ from: Int, _ count: Int) -> Int32? {
            guard from + count <= u.count else { return nil }
            var v: Int32 = 0
            for c in u[from..<(from + count)] {
                guard c >= 48 && c <= 57 else { return nil }
                v = v * 10 + Int32(c - 48)
            }
            return v
        }
        guard u.count >= 20, u.last == UInt8(ascii: "Z"), let y = num(0, 4), let mo = num(5, 2), let d = num(8, 2),
              let h = num(11, 2), let mi = num(14, 2), let sec = num(17, 2) else { return nil }
        var t = tm()
        t.tm_year = y - 1900
        t.tm_mon = mo - 1
        t.tm_mday = d
        t.tm_hour = h
        t.tm_min = mi
        t.tm_sec = sec
        let epoch = timegm(&t)
        guard epoch >= 0 else { return nil }
        var fraction: UInt64 = 0
        if u.count > 21, u[19] == UInt8(ascii: "."), let f = num(20, min(9, u.count - 21)) {
            let digits = min(9, u.count - 21)
            fraction = UInt64(f) * UInt64(pow(10.0, Double(9 - digits)))
        }
        return UInt64(epoch) * 1_000_000_000 + fraction
    }

    /// Figures are kept to 3 decimals (a microsecond of a millisecond figure).
    public static func round3(_ v: Double) -> Double { v.isFinite ? (v * 1000).rounded() / 1000 : 0 }
}

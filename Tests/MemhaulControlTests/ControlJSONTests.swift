import Foundation
import Testing
import MemhaulControl
import MemhaulSender

/// The one JSON output: snake_case keys from the types, sorted, slashes as
/// is, numbers rounded by what their key names, `error` an object.
@Suite struct ControlJSONTests {
    @Test func numbersAreRoundedByTheirUnit() {
        let text = String(decoding: ControlJSON.text([
            "downtime_ms": 33.675587000004725, "handshake_timeout_s": 0.123456789, "commit_seconds": 0.171311692000017,
            "dirty_rate_bytes_per_second": 3462.359486728773, "ratio": 0.333333333, "count": 7, "big": UInt64(1) << 60,
            "flag": true, "path": "/tmp/a/b", "nested": [["frozen_ms": 175.78385999877355]],
        ]), as: UTF8.self)
        #expect(text == #"{"big":1152921504606846976,"commit_seconds":0.1713,"count":7,"dirty_rate_bytes_per_second":3462,"downtime_ms":33.7,"flag":true,"handshake_timeout_s":0.1235,"nested":[{"frozen_ms":175.8}],"path":"/tmp/a/b","ratio":0.333}"#)
    }

    /// A status: counters in their own object, the id as `migration`, a failure as `{code, message}`.
    @Test func statusShape() throws {
        var s = MigrationStatus(id: "m-1", pid: 42, destination: "b:7070")
        s.state = .failed
        s.pageBytes = 8192
        s.dirtyRateBps = 1234.5678
        s.downtimeMs = 12.345678
        s.failure = StatusError(describing: MigrationErrorProbe.failure)
        let object = ControlJSON.object(s)
        let text = String(decoding: ControlJSON.text(object), as: UTF8.self)
        #expect(text.contains(#""migration":"m-1""#) && !text.contains(#""id""#), "\(text)")
        #expect(text.contains(#""counters":{"#) && text.contains(#""page_bytes":8192"#), "\(text)")
        #expect(text.contains(#""dirty_rate_bytes_per_second":1235"#) && text.contains(#""downtime_ms":12.3"#), "\(text)")
        #expect(text.contains(#""error":{"code":"failed","message":"probe failure"}"#), "\(text)")
        #expect(!text.contains("_bps"), "\(text)")
        let back = try JSONDecoder().decode(MigrationStatus.self, from: Data(text.utf8))
        #expect(back.pageBytes == 8192 && back.error == "probe failure" && back.id == "m-1")
    }
}

private enum MigrationErrorProbe: Error, CustomStringConvertible {
    case failure
    var description: String { "probe failure" }
}

/// Requests keep the caller's numbers: a 0.001 ms limit must not round to 0.
@Test func requestsAreNotRounded() throws {
    let line = ControlRequest(op: "migrate", args: ["downtime_limit_ms": 0.001, "max_time_s": 0.00001]).encode()
    let back = try ControlRequest.decode(line)
    #expect(try back.number("downtime_limit_ms") == 0.001 && back.number("max_time_s") == 0.00001)
}

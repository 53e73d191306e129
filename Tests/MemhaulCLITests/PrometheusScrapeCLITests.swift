#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import MemhaulTestSupport

/// Debian's `prometheus` package (scripts/setup installs it); without it the
/// test shows as skipped with this reason, never as passed.
private let prometheusTools: Bool = ["/usr/bin/prometheus", "/usr/bin/promtool"].allSatisfy { (path: String) in access(path, X_OK) == 0 }

/// A real Prometheus scrapes both agents during a migration; afterwards its
/// HTTP API holds the migration's bytes and rounds, equal to the migration's
/// own status, and `promtool check metrics` accepts both expositions.
@Suite(.serialized) struct PrometheusScrapeCLITests {
    @Test(.enabled(if: prometheusTools, "needs Debian's prometheus package (/usr/bin/prometheus and /usr/bin/promtool)"))
    func prometheusScrapesBothAgentsDuringAMigration() throws {
        let dir = temporaryDirectory("prometheus")
        defer { removeTree(dir) }
        let receiver = try ChildProcess([builtBinary("memhaul"), "receive", "--listen", "127.0.0.1:0", "--images", dir + "/images",
                                         "--insecure", "--control", dir + "/r.sock", "--metrics-listen", "127.0.0.1:0"], stdin: .null)
        let receiverMetrics = try port(of: try receiver.expectLine(startingWith: "metrics "))
        let receiverPort = try port(of: try receiver.expectLine(startingWith: "listening "))
        let sender = try ChildProcess([builtBinary("memhaul"), "sender", "--insecure", "--control", dir + "/s.sock",
                                       "--metrics-listen", "127.0.0.1:0"], stdin: .null)
        let senderMetrics = try port(of: try sender.expectLine(startingWith: "metrics "))
        _ = try sender.expectLine(startingWith: "ready ")

        // A peer that speaks no protocol is a refusal with reason "protocol".
        _ = try? httpExchange(port: receiverPort, "GET / HTTP/1.1\r\n\r\n")
        try eventually("the receiver counts the refusal") {
            try httpGet(port: receiverMetrics, "/metrics").contains("memhaul_receiver_refusals_total{reason=\"protocol\"} 1\n")
        }

        let prometheus = try PrometheusServer(dir: dir + "/prometheus", targets: ["memhaul-sender": senderMetrics, "memhaul-receiver": receiverMetrics])
        try eventually("Prometheus scrapes both agents") {
            try prometheus.query("sum(up{job=~\"memhaul-.*\"})").first == 2
        }

        // A migration that does not converge (writes, a limit no round meets) until it is told to cut over.
        let workload = try WorkloadProcess(["--size", "64M", "--threads", "1", "--rate", "2000"], stdin: .null)
        let id = "prom-scrape"
        let started = try runMemhaul(["ctl", "migrate", "--socket", dir + "/s.sock", "--pid", "\(workload.pid)", "--to", "127.0.0.1:\(receiverPort)",
                                      "--id", id, "--downtime-limit", "0.001", "--no-auto-converge", "--max-rounds", "100000", "--after", "resume"])
        try #require(started.status == 0, "\(started.out)\(started.err)")
        try eventually("Prometheus sees the migration active on the sender and commits on the receiver") {
            try prometheus.query("memhaul_migration_state{migration=\"\(id)\",state=\"active\"}").first == 1
                && (try prometheus.query("memhaul_receiver_commits_total").first ?? 0) >= 1
        }
        let cut = try runMemhaul(["ctl", "cutover", "--socket", dir + "/s.sock", "--migration", id])
        try #require(cut.status == 0, "\(cut.out)\(cut.err)")
        var status: [String: Any] = [:]
        try eventually("the migration ends") {
            let r = try runMemhaul(["ctl", "status", "--socket", dir + "/s.sock", "--migration", id])
            let reply = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
            status = (reply?["result"] as? [String: Any])?["status"] as? [String: Any] ?? [:]
            return ["completed", "failed", "cancelled"].contains(status["state"] as? String ?? "")
        }
        try #require(status["state"] as? String == "completed", "\(status)")
        let counters = try #require(status["counters"] as? [String: Any])
        let pageBytes = try #require((counters["page_bytes"] as? NSNumber)?.doubleValue)
        let wireBytes = try #require((counters["transferred_bytes"] as? NSNumber)?.doubleValue)
        let rounds = try #require((counters["rounds"] as? NSNumber)?.doubleValue)
        #expect(rounds >= 2 && pageBytes > 0 && wireBytes > 0)

        // Values no longer change once the state is final: wait for a scrape that saw it.
        try eventually("Prometheus scrapes the completed migration") {
            try prometheus.query("memhaul_migration_state{migration=\"\(id)\",state=\"completed\"}").first == 1
                && (try prometheus.query("memhaul_receiver_migrations_completed_total").first) == 1
        }
        #expect(try prometheus.query("memhaul_migration_page_bytes_total{migration=\"\(id)\"}") == [pageBytes])
        #expect(try prometheus.query("memhaul_migration_wire_bytes_total{migration=\"\(id)\"}") == [wireBytes])
        #expect(try prometheus.query("memhaul_migration_rounds_total{migration=\"\(id)\"}") == [rounds])
        #expect(try prometheus.query("memhaul_receiver_committed_page_bytes_total") == [pageBytes])
        #expect(try prometheus.query("memhaul_receiver_refusals_total{reason=\"protocol\"}") == [1])
        #expect((try prometheus.query("memhaul_receiver_commit_duration_seconds_count").first ?? 0) >= rounds)
        #expect((try prometheus.query("memhaul_receiver_image_disk_bytes").first ?? 0) > 0)

        for (name, port) in [("sender", senderMetrics), ("receiver", receiverMetrics)] {
            let file = dir + "/\(name).prom"
            try Data(try httpGet(port: port, "/metrics").utf8).write(to: URL(fileURLWithPath: file))
            let check = try runProgram(["/bin/sh", "-c", "/usr/bin/promtool check metrics < \(file)"])
            #expect(check.status == 0, "promtool on the \(name)'s exposition: \(check.out)\(check.err)")
        }
    }
}

private func port(of announcement: String) throws -> UInt16 {
    guard let port = announcement.split(separator: ":").last.flatMap({ UInt16($0) }) else { throw TestSetupError("no port in \(announcement)") }
    return port
}

/// Polls `condition` (an event observed through an API, not a time) with a
/// generous bound, so a broken setup fails instead of hanging.
private func eventually(_ what: String, bound: Int = 1200, _ condition: () throws -> Bool) throws {
    var lastError: Error?
    for _ in 0..<bound {
        do {
            if try condition() { return }
        } catch { lastError = error }
        usleep(100_000)
    }
    throw TestSetupError("\(what): not observed\(lastError.map { " (last error: \($0))" } ?? "")")
}

/// A Prometheus server of its own: temp config and TSDB, a free loopback port, killed at the end.
private final class PrometheusServer {
    let port: UInt16
    let process: ChildProcess

    init(dir: String, targets: [String: UInt16]) throws {
        try FileManager.default.createDirectory(atPath: dir + "/data", withIntermediateDirectories: true)
        var config = "global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\nscrape_configs:\n"
        for (job, port) in targets.sorted(by: { $0.key < $1.key }) {
            config += "  - job_name: \(job)\n    static_configs:\n      - targets: ['127.0.0.1:\(port)']\n"
        }
        try Data(config.utf8).write(to: URL(fileURLWithPath: dir + "/prometheus.yml"))
        port = try freePort()
        process = try ChildProcess(["/usr/bin/prometheus", "--config.file=\(dir)/prometheus.yml", "--storage.tsdb.path=\(dir)/data",
                                    "--web.listen-address=127.0.0.1:\(port)"], stdin: .null)
        try eventually("Prometheus at 127.0.0.1:\(port) is ready") { (try? httpGet(port: port, "/-/ready")) != nil }
    }

    deinit { process.kill(SIGKILL) }

    /// The values of an instant query's vector result.
    func query(_ promql: String) throws -> [Double] {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        let body = try httpGet(port: port, "/api/v1/query?query=" + promql.addingPercentEncoding(withAllowedCharacters: allowed)!)
        let reply = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
        let result = (reply?["data"] as? [String: Any])?["result"] as? [[String: Any]] ?? []
        return result.compactMap { ($0["value"] as? [Any])?.last as? String }.compactMap(Double.init)
    }
}

/// A loopback port nobody listens on now (bound to 0 and released).
private func freePort() throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc = withUnsafeMutablePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
    }
    guard rc else { throw TestSetupError("bind 127.0.0.1:0: errno \(errno)") }
    return UInt16(bigEndian: addr.sin_port)
}

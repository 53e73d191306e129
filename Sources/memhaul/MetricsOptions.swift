import ArgumentParser
import MemhaulMetrics

/// `--metrics-listen`: the opt-in Prometheus endpoint of an agent (Protocol/metrics.md).
struct MetricsOptions: ParsableArguments {
    @Option(help: "Serve Prometheus metrics at GET /metrics on loopback HOST:PORT (port 0 = any free port, printed on start) or unix:/PATH. Nothing else: the endpoint has no TLS.")
    var metricsListen: String?

    func validate() throws {
        if let metricsListen {
            do { _ = try MetricsAddress(parsing: metricsListen) } catch { throw ValidationError(error.description) }
        }
    }

    /// Starts the listener when asked; announces `metrics ADDRESS` on stdout (tests read the port).
    func start(_ source: some MetricsSource) throws -> MetricsListener? {
        guard let metricsListen else { return nil }
        let listener = try MetricsListener(address: try MetricsAddress(parsing: metricsListen), source: source)
        Log.line("metrics on http://\(listener.boundDescription)/metrics")
        Console.announce("metrics \(listener.boundDescription)")
        return listener
    }
}

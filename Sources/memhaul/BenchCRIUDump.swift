import Foundation
import MemhaulControl

extension BenchSupport.Environment {
    /// Seconds for `criu dump --page-server --tls` of a fresh `memhaul-workload
    /// workloadArguments` (the same content as the bench's: the generator is
    /// seeded; CRIU cannot dump the bench's own child, whose stdio are sockets
    /// to this process) to a `criu page-server --tls` on 127.0.0.1 writing into
    /// `directory`, with this environment's PKI as scripts/bench-restore drives
    /// it; and the page bytes the server stored. The dump kills the workload.
    /// The page server does not fsync its pages; memhaul's image is durable. So
    /// `durableSeconds` also counts an fsync of every file the page server
    /// wrote (`sync FILE...`), started once the dump returns: the same
    /// durability as memhaul's, for the comparison beside the stock one.
    func timeCRIUDump(workloadArguments: [String], criu: String, directory: String) throws -> (seconds: Double, durableSeconds: Double, pageBytes: UInt64, machineSeconds: Double) {
        let port = 27000 + Int(getpid() % 2000)
        let server = directory + "/page-server", dump = directory + "/dump"
        try FileManager.default.createDirectory(atPath: server, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dump, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let script = """
            set -e
            # Only stdio: a descriptor inherited from the bench (a socket) would stop CRIU's dump.
            for fd in /proc/$$/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-" 2>/dev/null; done
            setsid "\(BenchSupport.binaryDirectory)/memhaul-workload" \(workloadArguments.joined(separator: " ")) --exit-after 3600 </dev/null >"\(directory)/workload.out" 2>&1 &
            for i in $(seq 1 6000); do grep -q '"ready"' "\(directory)/workload.out" 2>/dev/null && break; sleep 0.05; done
            pid=$(sed -n 's/.*"pid":\\([0-9]*\\).*/\\1/p' "\(directory)/workload.out" | head -1)
            [ -n "$pid" ] || { echo "the workload did not start" >&2; exit 1; }
            "\(criu)" page-server -D "\(server)" --address 127.0.0.1 --port \(port) -o "\(server)/page-server.log" \\
              --tls --tls-cacert "\(certs)/ca.pem" --tls-cert "\(certs)/receiver.pem" --tls-key "\(certs)/receiver.key" --tls-no-cn-verify &
            ps=$!
            for i in $(seq 1 250); do ss -ltnH "sport = :\(port)" | grep -q . && break; sleep 0.02; done
            busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
            busy0=$(busy)
            start=$(date +%s.%N)
            "\(criu)" dump -t $pid -D "\(dump)" --shell-job -o dump.log \\
              --page-server --address 127.0.0.1 --port \(port) \\
              --tls --tls-cacert "\(certs)/ca.pem" --tls-cert "\(certs)/sender.pem" --tls-key "\(certs)/sender.key" \\
              || { grep Error "\(dump)/dump.log" | tail -3 >&2; kill $ps $pid; exit 1; }
            wait $ps
            end=$(date +%s.%N)
            busy1=$(busy)
            sync "\(server)"/*
            durable=$(date +%s.%N)
            echo "$start $end $durable $(cat "\(server)"/pages-*.img | wc -c) $(( busy1 - busy0 )) $(getconf CLK_TCK)"
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = ["-c", script]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Double($0) }
        guard p.terminationStatus == 0, parts.count == 6, parts[5] > 0 else { throw CLIError("criu dump to its page server failed: \(errors)") }
        return (parts[1] - parts[0], parts[2] - parts[0], UInt64(parts[3]), parts[4] / parts[5])
    }

    /// The receiver agent's counters (its control status, Protocol/control.md).
    func receiverCounters() throws -> [String: Any] {
        let status = try ControlClient(path: scratch + "/receiver.sock").call("status")
        return ((status["result"] as? [String: Any])?["counters"] as? [String: Any]) ?? [:]
    }
}

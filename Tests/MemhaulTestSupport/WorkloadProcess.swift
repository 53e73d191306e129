#if canImport(Glibc)
import Glibc
#endif

/// The built `memhaul-workload` (see ARCHITECTURE.md, "Workload control
/// protocol"), started and read up to its ready line.
public final class WorkloadProcess: ChildProcess, @unchecked Sendable {
    /// The `{"event":"ready",…}` line ("" with `expectReady: false`).
    public private(set) var ready = ""
    /// The regions listed in the ready line.
    public private(set) var regions: [(start: UInt64, end: UInt64)] = []

    /// `stdin: .null` for a workload without `--control` that must not see
    /// commands (it exits when a control stdin closes).
    public init(_ args: [String], stdin: Stdin = .pipe, expectReady: Bool = true) throws {
        try super.init([builtBinary("memhaul-workload")] + args, stdin: stdin)
        guard expectReady else { return }
        guard let line = try readLine() else { throw TestSetupError("workload exited before its ready line (built? \(builtBinary("memhaul-workload")))") }
        ready = line
        var rest = Substring(line)
        while let s = rest.firstRange(of: "\"start\":\"") {
            rest = rest[s.upperBound...]
            let a = rest.prefix { $0 != "\"" }
            guard let e = rest.firstRange(of: "\"end\":\"") else { break }
            rest = rest[e.upperBound...]
            let b = rest.prefix { $0 != "\"" }
            if let x = parseHex(String(a)), let y = parseHex(String(b)) { regions.append((x, y)) }
        }
    }

    /// Sends a control command and returns its one-line answer.
    public func command(_ line: String) throws -> String {
        send(line)
        guard let answer = try readLine() else { throw TestSetupError("workload died on \(line)") }
        return answer
    }

    /// Closes stdin and returns the exit status (a control workload exits on EOF).
    public func exitOnEOF() -> Int32 {
        closeStdin()
        return wait()
    }
}

/// `0x…` to a number.
public func parseHex(_ s: String) -> UInt64? { s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : nil }

import ArgumentParser
import MemhaulKernel

/// `memhaul probe`: can this machine and these privileges run a memhaul sender?
/// Each check is done for real (uffd async WP and PAGEMAP_SCAN in this process,
/// ptrace and pidfd_getfd on a child), so a missing feature is found before a migration.
struct ProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Check the kernel features and privileges a memhaul sender needs.",
        discussion: """
            Creates a userfaultfd with WP_ASYNC in this process, write-protects a test page and \
            finds it written with PAGEMAP_SCAN; seizes a child /bin/sleep with ptrace and takes a \
            descriptor from it with pidfd_getfd; reports kernel.yama.ptrace_scope, CAP_SYS_PTRACE \
            and vm.unprivileged_userfaultfd. Exits 1 when a required feature is missing.
            """
    )

    @Flag(help: "Print one JSON object instead of a table.")
    var json = false

    func run() throws {
        let report = KernelFeatures.probe()
        if json {
            print(Self.json(report))
        } else {
            let width = report.features.map(\.name.count).max() ?? 0
            for f in report.features {
                let mark = f.ok ? "ok     " : (f.required ? "MISSING" : "warn   ")
                let name = f.name.padding(toLength: width)
                print("\(mark) \(name)  \(f.detail)")
                if let fix = f.fix { print("        \(String(repeating: " ", count: width))  fix: \(fix)") }
            }
            print(report.allRequiredPresent ? "memhaul can attach on this machine." : "memhaul cannot attach: fix the MISSING features above.")
        }
        if !report.allRequiredPresent { throw ExitCode(1) }
    }

    /// `{"kernel":"6.18…","ok":true,"features":[{"name":…,"ok":…,"required":…,"detail":…,"fix":…}]}`
    static func json(_ report: KernelFeatures) -> String {
        let features = report.features.map { f in
            "{\"name\":\(quote(f.name)),\"ok\":\(f.ok),\"required\":\(f.required),\"detail\":\(quote(f.detail)),\"fix\":"
                + (f.fix.map(quote) ?? "null") + "}"
        }
        return "{\"kernel\":\(quote(report.kernelRelease)),\"ok\":\(report.allRequiredPresent),\"features\":["
            + features.joined(separator: ",") + "]}"
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

extension String {
    fileprivate func padding(toLength n: Int) -> String {
        count >= n ? self : self + String(repeating: " ", count: n - count)
    }
}

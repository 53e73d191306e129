import ArgumentParser
import Foundation
import MemhaulControl
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

    @Option(help: "Also attach to this PID, print what would be tracked and how long it took, then detach.")
    var attach: Int32?

    func run() throws {
        if let pid = attach {
            try Self.trialAttach(pid)
            return
        }
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

    /// Attach, refresh, detach once, printing the mappings and the time each step took.
    static func trialAttach(_ pid: Int32) throws {
        let clock = ContinuousClock()
        let t0 = clock.now
        let process = try AttachedProcess.attach(pid: pid)
        let t1 = clock.now
        let registered = process.registered
        let skipped = process.skipped
        _ = try process.refreshLayout()
        let t2 = clock.now
        try process.detach()
        let t3 = clock.now
        let bytes = registered.reduce(UInt64(0)) { $0 + $1.byteCount }
        for e in registered { print("tracked \(e.range) \(e.permissions) \(e.path.isEmpty ? "anon" : e.path)") }
        for s in skipped { print("skipped \(s)") }
        print(
            "PID \(pid): \(registered.count) mappings tracked (\(bytes >> 20) MiB of address space), \(skipped.count) skipped;",
            "attach \(micros(t1 - t0)) us (target stopped \(process.stoppedNanoseconds / 1000) us),",
            "refresh \(micros(t2 - t1)) us, detach \(micros(t3 - t2)) us",
            process.userModeOnly ? "; uffd is user-mode only" : "")
    }

    static func micros(_ d: Duration) -> Int64 {
        d.components.seconds * 1_000_000 + d.components.attoseconds / 1_000_000_000_000
    }

    /// `{"features":[{"detail":…,"fix":…,"name":…,"ok":…,"required":…}],"kernel":"6.18…","ok":true}` (the common JSON output).
    static func json(_ report: KernelFeatures) -> String {
        let features: [[String: Any]] = report.features.map { f in
            ["name": f.name, "ok": f.ok, "required": f.required, "detail": f.detail, "fix": f.fix ?? NSNull()]
        }
        return String(decoding: ControlJSON.text(["kernel": report.kernelRelease, "ok": report.allRequiredPresent, "features": features]), as: UTF8.self)
    }
}

extension String {
    fileprivate func padding(toLength n: Int) -> String {
        count >= n ? self : self + String(repeating: " ", count: n - count)
    }
}

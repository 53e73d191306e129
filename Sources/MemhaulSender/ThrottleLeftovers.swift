#if canImport(Glibc)
import Glibc
#endif
import MemhaulKernel
import MemhaulSystem

/// What a cgroup throttle changed, on disk while it is in effect, so that a
/// throttle whose agent died without running code (SIGKILL, OOM kill, power
/// loss of a container's agent but not its target) is undone later:
/// ``restoreAbandoned()`` runs at every `memhaul migrate` and `memhaul sender`
/// start and undoes each record whose owner process is gone.
///
/// Residual risk: until such a start, the target runs with the low quota
/// (at least 1 ms of CPU per 100 ms period: slowed, never stopped); a record
/// that cannot be written makes the cgroup throttle unavailable (auto falls
/// back to signals).
public enum ThrottleLeftovers {
    /// `$MEMHAUL_THROTTLE_RECORDS`, else `/run/memhaul-throttle`.
    public static var directory: String {
        if let d = getenv("MEMHAUL_THROTTLE_RECORDS"), d.pointee != 0 { return String(cString: d) }
        return "/run/memhaul-throttle"
    }

    struct Record: Equatable {
        var pid: Int32
        /// The agent that applied the throttle, and its start time (clock ticks
        /// since boot, /proc/PID/stat field 22), so a reused PID is not mistaken for it.
        var owner: Int32
        var ownerStart: UInt64
        /// The target's cgroup before the throttle.
        var home: CPUCgroup
        /// The cgroup whose bandwidth is changed.
        var used: CPUCgroup
        /// `used` was made for the throttle (moved back to `home` and removed after).
        var created: Bool
        /// `used`'s bandwidth before, when it was not created.
        var saved: CPUCgroup.Bandwidth?

        var fileName: String { "cgroup-\(pid).rec" }

        var text: String {
            var lines = [
                "pid=\(pid)", "owner=\(owner)", "owner_start=\(ownerStart)", "hierarchy=\(home.hierarchy.rawValue)",
                "mount=\(home.mount)", "home=\(home.path)", "used=\(used.path)", "created=\(created ? 1 : 0)",
            ]
            if let saved { lines.append("saved=\(saved)") }
            return lines.joined(separator: "\n") + "\n"
        }

        init(pid: Int32, owner: Int32, ownerStart: UInt64, home: CPUCgroup, used: CPUCgroup, created: Bool, saved: CPUCgroup.Bandwidth?) {
            self.pid = pid
            self.owner = owner
            self.ownerStart = ownerStart
            self.home = home
            self.used = used
            self.created = created
            self.saved = saved
        }

        init?(text: String) {
            var f: [String: String] = [:]
            for line in text.split(separator: "\n") {
                guard let eq = line.firstIndex(of: "=") else { continue }
                f[String(line[..<eq])] = String(line[line.index(after: eq)...])
            }
            guard let pid = f["pid"].flatMap({ Int32($0) }), let owner = f["owner"].flatMap({ Int32($0) }),
                  let start = f["owner_start"].flatMap({ UInt64($0) }),
                  let h = f["hierarchy"].flatMap({ CPUCgroup.Hierarchy(rawValue: $0) }),
                  let mount = f["mount"], let home = f["home"], let used = f["used"], let created = f["created"],
                  home.hasPrefix("/"), used.hasPrefix("/") else { return nil }
            let saved = f["saved"].flatMap { CPUCgroup.Bandwidth.parseCPUMax($0) }
            if created == "0" && saved == nil { return nil }
            self.init(pid: pid, owner: owner, ownerStart: start, home: CPUCgroup(hierarchy: h, mount: mount, path: home),
                      used: CPUCgroup(hierarchy: h, mount: mount, path: used), created: created == "1", saved: saved)
        }
    }

    /// `mkdir -p` of ``directory`` (mode 0700).
    static func prepareDirectory() throws(SystemError) {
        var path = ""
        for part in directory.split(separator: "/") {
            path += "/" + part
            do {
                _ = try Syscall.run("mkdir(\(path))") { mkdir(path, 0o700) }
            } catch where error.errno == .EEXIST {}
        }
    }

    /// Writes the record durably (temporary file, fsync, rename).
    static func write(_ r: Record) throws(SystemError) {
        let path = directory + "/" + r.fileName
        let tmp = path + ".tmp"
        let fd = try FileDescriptor.open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        var failure: SystemError?
        Array(r.text.utf8).withUnsafeBytes { b in
            do throws(SystemError) { try fd.writeAll(b) } catch { failure = error }
        }
        if let failure { throw failure }
        try fd.fsync()
        try fd.close()
        _ = try Syscall.run("rename(\(tmp))") { rename(tmp, path) }
    }

    /// Undoes a record: the quota lifted first (nothing stays throttled even if
    /// a later step fails), then the target moved home and the created cgroup
    /// removed, or the saved bandwidth put back; then the record deleted (kept
    /// when a step failed, so a later start tries again). Returns the problems.
    static func undo(_ r: Record, in directory: String = directory) -> String? {
        var problems: [String] = []
        let unlimited = CPUCgroup.Bandwidth(quotaMicros: nil, periodMicros: r.saved?.periodMicros ?? CgroupThrottle.periodMicros)
        if r.created {
            if r.used.exists {
                do { try r.used.setBandwidth(unlimited) } catch { problems.append("lifting the quota of \(r.used): \(error)") }
                for p in (try? r.used.processes()) ?? [] {
                    do { try r.home.move(pid: p) } catch where error.errno == .ESRCH {} catch { problems.append("moving PID \(p) back to \(r.home): \(error)") }
                }
                do { try r.used.remove() } catch where error.errno == .ENOENT {} catch { problems.append("removing \(r.used): \(error)") }
            }
        } else if let saved = r.saved {
            do { try r.used.setBandwidth(saved) } catch where error.errno == .ENOENT {} catch {
                problems.append("restoring \(r.used) bandwidth \(saved): \(error)")
            }
        }
        if problems.isEmpty { unlink(directory + "/" + r.fileName) }
        return problems.isEmpty ? nil : "cgroup throttle not fully undone: " + problems.joined(separator: "; ")
    }

    /// /proc/PID/stat field 22 (start time), nil when the process is gone.
    static func startTime(of pid: Int32) -> UInt64? {
        guard let stat = try? ProcFS.readString("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? UInt64(fields[19]) : nil
    }

    /// Undoes every record whose owner is gone (another live agent's records
    /// are left alone). Returns one line per record undone or failed.
    @discardableResult
    public static func restoreAbandoned(in directory: String = directory) -> [String] {
        guard let names = try? Directory.entries(directory) else { return [] }
        var lines: [String] = []
        for name in names.sorted() where name.hasSuffix(".rec") {
            let path = directory + "/" + name
            guard let text = try? ProcFS.readString(path), let r = Record(text: text) else {
                lines.append("\(path): unreadable throttle record, left in place")
                continue
            }
            if let start = startTime(of: r.owner), start == r.ownerStart { continue }
            if let problem = undo(r, in: directory) {
                lines.append("PID \(r.pid): \(problem)")
            } else {
                lines.append("PID \(r.pid): undid the cgroup throttle of agent PID \(r.owner), which had died (\(r.used))")
            }
        }
        return lines
    }
}

#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// A cgroup with the CPU bandwidth controller (CFS quota per period), in either
/// hierarchy: cgroup v2 `cpu.max` (`max 100000` or `QUOTA PERIOD`), or cgroup
/// v1's `cpu` controller (`cpu.cfs_quota_us`, -1 = unlimited, and
/// `cpu.cfs_period_us`). Same kernel mechanism, two file layouts; hybrid
/// systems (cpu bound to v1, an empty v2 tree) still have the v1 one.
public struct CPUCgroup: Sendable, Equatable, CustomStringConvertible {
    public enum Hierarchy: String, Sendable { case v2, v1 }

    /// CFS bandwidth: `quotaMicros` of CPU time per `periodMicros` over all
    /// threads of the cgroup; nil quota = unlimited.
    public struct Bandwidth: Sendable, Equatable, CustomStringConvertible {
        public var quotaMicros: Int64?
        public var periodMicros: Int64
        public init(quotaMicros: Int64?, periodMicros: Int64) {
            self.quotaMicros = quotaMicros
            self.periodMicros = periodMicros
        }
        /// The `cpu.max` form.
        public var description: String { "\(quotaMicros.map(String.init) ?? "max") \(periodMicros)" }

        /// Parses `cpu.max` (`max 100000`, `50000 100000`).
        public static func parseCPUMax(_ text: String) -> Bandwidth? {
            let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
            guard f.count == 2, let period = Int64(f[1]), period > 0 else { return nil }
            if f[0] == "max" { return Bandwidth(quotaMicros: nil, periodMicros: period) }
            guard let q = Int64(f[0]), q > 0 else { return nil }
            return Bandwidth(quotaMicros: q, periodMicros: period)
        }
    }

    public var hierarchy: Hierarchy
    /// Where the hierarchy is mounted.
    public var mount: String
    /// The cgroup's path inside the hierarchy (`/` is its root).
    public var path: String

    public init(hierarchy: Hierarchy, mount: String, path: String) {
        self.hierarchy = hierarchy
        self.mount = mount
        self.path = path
    }

    public var directory: String { path == "/" ? mount : mount + path }
    public var isRoot: Bool { path == "/" }
    public var description: String { "cgroup \(hierarchy.rawValue) \(directory)" }

    /// The child cgroup `name` (not created).
    public func child(_ name: String) -> CPUCgroup {
        CPUCgroup(hierarchy: hierarchy, mount: mount, path: (isRoot ? "" : path) + "/" + name)
    }

    /// Why a process has no usable CPU cgroup.
    public struct Unavailable: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// The cgroup that holds `pid`'s CPU bandwidth: v2 where the cpu controller
    /// is available in the v2 tree at the process's cgroup, else the v1 `cpu`
    /// hierarchy. From `/proc/PID/cgroup` and `/proc/self/mountinfo`.
    public static func of(pid: Int32) throws(Unavailable) -> CPUCgroup {
        let memberships: String
        let mounts: String
        do {
            memberships = try ProcFS.readString("/proc/\(pid)/cgroup")
            mounts = try ProcFS.readString("/proc/self/mountinfo")
        } catch {
            throw Unavailable(description: "cannot read the cgroups of PID \(pid): \(error)")
        }
        return try locate(memberships: memberships, mountinfo: mounts)
    }

    /// ``of(pid:)`` on given file contents (pure, for tests of both layouts).
    public static func locate(memberships: String, mountinfo: String) throws(Unavailable) -> CPUCgroup {
        var v2Path: String?
        var v1Path: String?
        for line in memberships.split(separator: "\n") {
            let f = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard f.count == 3 else { continue }
            if f[0] == "0" && f[1].isEmpty { v2Path = String(f[2]) }
            if f[1].split(separator: ",").contains("cpu") { v1Path = String(f[2]) }
        }
        var v2Mount: (root: String, point: String)?
        var v1Mount: (root: String, point: String)?
        for line in mountinfo.split(separator: "\n") {
            // ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
            let f = line.split(separator: " ").map(String.init)
            guard let dash = f.firstIndex(of: "-"), dash >= 5, f.count > dash + 3 else { continue }
            let fstype = f[dash + 1]
            if fstype == "cgroup2", v2Mount == nil { v2Mount = (f[3], unescape(f[4])) }
            if fstype == "cgroup", f[dash + 3].split(separator: ",").contains("cpu"), v1Mount == nil { v1Mount = (f[3], unescape(f[4])) }
        }
        func inMount(_ path: String, _ m: (root: String, point: String)) -> String? {
            if m.root == "/" { return path }
            guard path == m.root || path.hasPrefix(m.root + "/") else { return nil }
            let rest = String(path.dropFirst(m.root.count))
            return rest.isEmpty ? "/" : rest
        }
        if let p = v2Path, let m = v2Mount, let rel = inMount(p, m) {
            let g = CPUCgroup(hierarchy: .v2, mount: m.point, path: rel)
            if (try? g.controllers())?.contains("cpu") == true || (g.isRoot && (try? g.subtreeControl())?.contains("cpu") == true) {
                return g
            }
        }
        if let p = v1Path, let m = v1Mount, let rel = inMount(p, m) {
            return CPUCgroup(hierarchy: .v1, mount: m.point, path: rel)
        }
        if v2Mount != nil {
            throw Unavailable(description: "the cpu controller is not available to the process's cgroup v2 (cgroup.controllers has no cpu) and no cgroup v1 cpu hierarchy is mounted")
        }
        throw Unavailable(description: "no cgroup v2 or cgroup v1 cpu hierarchy is mounted")
    }

    /// Mount points escape space, tab, newline and backslash as `\ooo`.
    private static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 4 <= b.count,
               let v = UInt8(String(decoding: b[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: files

    private func read(_ file: String) throws -> String {
        try ProcFS.readString(directory + "/" + file)
    }

    /// `open(O_WRONLY)` + one `write`: a cgroup file takes a value per write.
    private func write(_ file: String, _ value: String) throws(SystemError) {
        let fd = try FileDescriptor.open(directory + "/" + file, O_WRONLY)
        let bytes = Array(value.utf8)
        var failure: SystemError?
        bytes.withUnsafeBytes { b in
            do throws(SystemError) { _ = try Syscall.run("write(\(directory)/\(file))") { Glibc.write(fd.rawValue, b.baseAddress, b.count) } } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// v2 `cgroup.controllers`: the controllers this cgroup may use.
    public func controllers() throws -> [String] {
        try read("cgroup.controllers").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
    }

    /// v2 `cgroup.subtree_control`: the controllers its children use.
    public func subtreeControl() throws -> [String] {
        try read("cgroup.subtree_control").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
    }

    /// The processes in the cgroup (`cgroup.procs`).
    public func processes() throws -> [Int32] {
        try read("cgroup.procs").split(separator: "\n").compactMap { Int32($0) }
    }

    /// Moves the whole thread group of `pid` here (`write(cgroup.procs)`).
    public func move(pid: Int32) throws(SystemError) {
        try write("cgroup.procs", "\(pid)")
    }

    /// The current bandwidth limit.
    public func bandwidth() throws -> Bandwidth {
        switch hierarchy {
        case .v2:
            let text = try read("cpu.max")
            guard let b = Bandwidth.parseCPUMax(text) else { throw Unavailable(description: "\(directory)/cpu.max: unexpected \(text)") }
            return b
        case .v1:
            let q = try read("cpu.cfs_quota_us").trimmingCharacters(in: " \n")
            let p = try read("cpu.cfs_period_us").trimmingCharacters(in: " \n")
            guard let quota = Int64(q), let period = Int64(p), period > 0 else {
                throw Unavailable(description: "\(directory): unexpected cpu.cfs_quota_us \(q) / cpu.cfs_period_us \(p)")
            }
            return Bandwidth(quotaMicros: quota < 0 ? nil : quota, periodMicros: period)
        }
    }

    /// Sets the bandwidth limit (`cpu.max`; v1: period first, then quota, and
    /// the reverse when the period shrinks, so quota ≤ period rules never trip).
    public func setBandwidth(_ b: Bandwidth) throws(SystemError) {
        switch hierarchy {
        case .v2:
            try write("cpu.max", b.description)
        case .v1:
            try write("cpu.cfs_quota_us", "-1")
            try write("cpu.cfs_period_us", "\(b.periodMicros)")
            try write("cpu.cfs_quota_us", "\(b.quotaMicros ?? -1)")
        }
    }

    /// `cpu.stat` `nr_throttled`: periods in which the cgroup ran out of quota.
    public func throttledPeriods() throws -> UInt64 {
        for line in try read("cpu.stat").split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count == 2, f[0] == "nr_throttled", let v = UInt64(f[1]) { return v }
        }
        return 0
    }

    /// `mkdir(2)`; an existing directory is fine (a leftover of ours).
    public func create() throws(SystemError) {
        let dir = directory
        do {
            _ = try Syscall.run("mkdir(\(dir))") { mkdir(dir, 0o755) }
        } catch where error.errno == .EEXIST {}
    }

    /// `rmdir(2)`: the cgroup must be empty.
    public func remove() throws(SystemError) {
        let dir = directory
        _ = try Syscall.run("rmdir(\(dir))") { rmdir(dir) }
    }

    /// Whether the cgroup directory exists.
    public var exists: Bool { access(directory, F_OK) == 0 }
}

private extension String {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let c = s.first, set.contains(c) { s = s.dropFirst() }
        while let c = s.last, set.contains(c) { s = s.dropLast() }
        return String(s)
    }
}

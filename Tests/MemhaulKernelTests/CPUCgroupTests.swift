import Testing
import MemhaulKernel

/// The file formats of the CPU bandwidth cgroup, and finding a process's cgroup
/// in a hierarchy mounted from a sub-tree (a container's view).
@Suite struct CPUCgroupTests {
    @Test func parsesCPUMax() {
        #expect(CPUCgroup.Bandwidth.parseCPUMax("max 100000\n") == .init(quotaMicros: nil, periodMicros: 100_000))
        #expect(CPUCgroup.Bandwidth.parseCPUMax("25000 50000\n") == .init(quotaMicros: 25_000, periodMicros: 50_000))
        #expect(CPUCgroup.Bandwidth.parseCPUMax("max") == nil)
        #expect(CPUCgroup.Bandwidth.parseCPUMax("-1 100000") == nil)
        #expect(CPUCgroup.Bandwidth(quotaMicros: 1000, periodMicros: 100_000).description == "1000 100000")
    }

    @Test func findsTheV1CPUHierarchyMountedFromASubtree() throws {
        let memberships = "4:memory:/x\n1:cpu,cpuacct:/docker/abc/job\n0::/\n"
        let mountinfo = """
            31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
            32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            """
        let g = try CPUCgroup.locate(memberships: memberships, mountinfo: mountinfo)
        #expect(g.hierarchy == .v1)
        #expect(g.path == "/job")
        #expect(g.directory == "/sys/fs/cgroup/cpu,cpuacct/job")
        #expect(g.child("memhaul-throttle-7").directory == "/sys/fs/cgroup/cpu,cpuacct/job/memhaul-throttle-7")
    }

    @Test func noCPUHierarchyIsUnavailable() {
        #expect(throws: CPUCgroup.Unavailable.self) {
            try CPUCgroup.locate(memberships: "0::/\n", mountinfo: "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
        }
    }
}

import Glibc
import Testing
@testable import MemhaulKernel
import MemhaulTestSupport

extension AttachProcessTests {
    /// `memhaul probe` (faults injected into the child binary with
    /// MEMHAUL_INJECT_FAULTS), and the feature probe in-process.
    @Suite struct AttachProbeTests {
        func probe(faults: String?) throws -> (code: Int32, json: String) {
            let child = try ChildProcess(
                [builtBinary("memhaul"), "probe", "--json"],
                environment: faults.map { ["MEMHAUL_INJECT_FAULTS": $0] } ?? [:])
            var out = ""
            while let line = try child.readLine() { out += line }
            return (child.wait(), out)
        }

        @Test func featuresOfThisMachine() {
            let report = KernelFeatures.probe()
            #expect(report.allRequiredPresent, "\(report.requiredMissing)")
            for name in ["userfaultfd", "uffd WP_ASYNC", "PAGEMAP_SCAN", "ptrace", "pidfd_getfd"] {
                #expect(report.features.contains { $0.name == name && $0.ok && $0.required }, "\(name)")
            }
        }

        @Test func probeBinaryPassesHere() throws {
            let (code, json) = try probe(faults: nil)
            #expect(code == 0, "\(json)")
            #expect(json.hasPrefix("{\"features\":[") && json.hasSuffix("\"ok\":true}"), "\(json)")  // sorted keys
        }

        @Test func missingPagemapScanIsReportedAndFails() throws {
            let (code, json) = try probe(faults: "ioctl(PAGEMAP_SCAN)=ENOTTY")
            #expect(code == 1)
            #expect(json.contains("\"name\":\"PAGEMAP_SCAN\",\"ok\":false,\"required\":true}"), "\(json)")
            #expect(json.contains("\"fix\":\"kernel lacks PAGEMAP_SCAN (Linux ≥ 6.7)\""), "\(json)")
            #expect(json.contains("\"name\":\"ptrace\",\"ok\":true"))
        }

        @Test func missingAsyncWriteProtectAndPtraceAreReported() throws {
            let (code, json) = try probe(faults: "ioctl(UFFDIO_API)=EINVAL,ptrace(SEIZE)=EPERM")
            #expect(code == 1)
            #expect(json.contains("kernel lacks UFFD_FEATURE_WP_ASYNC (needs Linux ≥ 6.7)"), "\(json)")
            #expect(json.contains("\"name\":\"ptrace\",\"ok\":false"), "\(json)")
            #expect(json.contains("run as root or grant CAP_SYS_PTRACE"), "\(json)")
        }
    }
}

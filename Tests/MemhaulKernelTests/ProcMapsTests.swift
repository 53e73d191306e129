import Foundation
import Glibc
import Testing
@testable import MemhaulKernel
import MemhaulSystem
import MemhaulTestSupport

@Suite struct ProcMapsTests {
    static let sample = """
        55d0c8a00000-55d0c8a28000 r--p 00000000 fd:01 1048602                    /usr/bin/redis-server
        55d0c8a28000-55d0c8b6f000 r-xp 00028000 fd:01 1048602                    /usr/bin/redis-server
        55d0c8d7f000-55d0c8d83000 rw-p 0017f000 fd:01 1048602                    /usr/bin/redis-server
        55d0c9b21000-55d0c9b42000 rw-p 00000000 00:00 0                          [heap]
        7f1c10000000-7f1c10021000 rw-p 00000000 00:00 0 
        7f1c14000000-7f1c14400000 rw-s 00000000 00:01 4096                       /dev/zero (deleted)
        7f1c18000000-7f1c18001000 rw-p 00000000 08:02 77                         /tmp/dir with spaces/data file.bin
        7f1c18001000-7f1c18002000 rw-p 00000000 08:02 78                         /tmp/gone.bin (deleted)
        7f1c18002000-7f1c18003000 ---p 00000000 00:00 0 
        7f1c19000000-7f1c19200000 rw-p 00000000 00:0f 123                        /anon_hugepage (deleted)
        7ffd5c1e0000-7ffd5c201000 rw-p 00000000 00:00 0                          [stack]
        7ffd5c3f2000-7ffd5c3f6000 r--p 00000000 00:00 0                          [vvar]
        7ffd5c3f6000-7ffd5c3f8000 r-xp 00000000 00:00 0                          [vdso]
        ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]

        garbage line
        """

    @Test func parsesEveryKindOfLine() {
        let maps = ProcMaps.parse(Self.sample)
        #expect(maps.count == 14)
        #expect(maps[0] == MapsEntry(start: 0x55d0_c8a0_0000, end: 0x55d0_c8a2_8000, permissions: [.read], offset: 0,
                                     device: "fd:01", inode: 1_048_602, path: "/usr/bin/redis-server"))
        #expect(maps[1].permissions == [.read, .execute])
        #expect(maps[1].offset == 0x28000)
        #expect(maps[3].path == "[heap]" && maps[3].isPseudo)
        #expect(maps[4].isAnonymous && maps[4].path == "")
        #expect(maps[5].permissions == [.read, .write, .shared])
        #expect(maps[6].path == "/tmp/dir with spaces/data file.bin")
        #expect(maps[7].isDeleted)
        #expect(maps[13].start == 0xffff_ffff_ff60_0000)
        #expect(maps[13].path == "[vsyscall]")
    }

    @Test func decidesWhatToTrackAndSaysWhy() {
        let maps = ProcMaps.parse(Self.sample)
        let decisions = maps.map { ProcMaps.trackability(of: $0) }
        #expect(decisions[0] == .tracked)  // read-only private: may hold data written before an mprotect
        #expect(decisions[1] == .tracked)  // text: COW pages from a debugger, JIT code
        #expect(decisions[2] == .tracked)  // private file data: written pages are anon COW
        #expect(decisions[3] == .tracked)
        #expect(decisions[4] == .tracked)
        #expect(decisions[5] == .skipped(.shared))
        #expect(decisions[6] == .tracked)
        #expect(decisions[8] == .skipped(.noAccessAndEmpty))  // PROT_NONE: the caller checks it is empty
        #expect(decisions[9] == .skipped(.hugetlb))
        #expect(decisions[10] == .tracked)
        #expect(decisions[11] == .skipped(.kernelProvided("[vvar]")))
        #expect(decisions[12] == .skipped(.kernelProvided("[vdso]")))
        #expect(decisions[13] == .skipped(.kernelProvided("[vsyscall]")))
        #expect(ProcMaps.trackability(of: maps[4], flags: [.io]) == .skipped(.deviceMemory))
        #expect(ProcMaps.trackability(of: maps[4], flags: [.pfnMap]) == .skipped(.deviceMemory))
        #expect(ProcMaps.trackability(of: maps[4], flags: [.hugetlb]) == .skipped(.hugetlb))
        #expect(SkipReason.noAccessAndEmpty.description.contains("PROT_NONE"))
        #expect(SkipReason.shared.description.contains("MAP_SHARED"))
    }

    @Test func parsesSmapsVmFlags() {
        let smaps = """
            7f1c10000000-7f1c10021000 rw-p 00000000 00:00 0 
            Size:                132 kB
            KernelPageSize:        4 kB
            THPeligible:    0
            VmFlags: rd wr mr mw me ac sd uw 
            7ffd5c3f2000-7ffd5c3f6000 r--p 00000000 00:00 0                          [vvar]
            Size:                 16 kB
            VmFlags: rd mr pf io de dd sd 
            """
        let flags = ProcMaps.parseSmapsFlags(Array(smaps.utf8))
        let a = flags[AddressRange(start: 0x7f1c_1000_0000, end: 0x7f1c_1002_1000)]
        #expect(a?.contains(.uffdWriteProtect) == true)
        #expect(a?.contains(.io) == false)
        let b = flags[AddressRange(start: 0x7ffd_5c3f_2000, end: 0x7ffd_5c3f_6000)]
        #expect(b?.isSuperset(of: [.io, .pfnMap, .dontDump]) == true)
        #expect(b?.contains(.uffdWriteProtect) == false)
    }

    @Test func readsOwnMapsAndSmaps() throws {
        let maps = try ProcMaps.read(pid: getpid())
        #expect(maps.contains { $0.path == "[stack]" })
        #expect(maps.contains { $0.path == "[vdso]" })
        #expect(zip(maps, maps.dropFirst()).allSatisfy { $0.end <= $1.start })
        let flags = try ProcMaps.readFlags(pid: getpid())
        let stack = maps.first { $0.path == "[stack]" }!
        #expect(flags[stack.range]?.contains(.uffdWriteProtect) == false)
        // Other tests map and unmap concurrently in this process, so compare
        // counts on a quiet process instead.
        let quiet = try ChildProcess(["/bin/sleep", "30"], stdin: .null)  // killed in deinit
        let qMaps = try ProcMaps.read(pid: quiet.pid)
        let qFlags = try ProcMaps.readFlags(pid: quiet.pid)
        #expect(qFlags.count >= qMaps.count - 1)  // [vsyscall] has no smaps block on some kernels
    }

    @Test func rangeAlgebra() {
        let a = [AddressRange(start: 0, end: 10), AddressRange(start: 20, end: 30)]
        let b = [AddressRange(start: 5, end: 22), AddressRange(start: 25, end: 26)]
        #expect(a.subtracting(b) == [
            AddressRange(start: 0, end: 5), AddressRange(start: 22, end: 25), AddressRange(start: 26, end: 30),
        ])
        #expect([AddressRange(start: 10, end: 20), AddressRange(start: 0, end: 10)].coalesced() == [
            AddressRange(start: 0, end: 20)
        ])
        #expect(a.clipped(to: b) == [
            AddressRange(start: 5, end: 10), AddressRange(start: 20, end: 22), AddressRange(start: 25, end: 26),
        ])
    }
}

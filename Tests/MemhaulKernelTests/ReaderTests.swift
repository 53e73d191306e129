import MemhaulKernel
import MemhaulSystem
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite struct ReaderTests {
    @Test func readsAChildsMemoryExactly() throws {
        let (child, region) = try ForeignTarget.spawn(pages: 3000, track: false)
        for i in 0..<3000 where i % 3 != 2 { try ForeignTarget.command(child, "f \(i) \(i % 251)") }
        // Scattered ranges: more than IOV_MAX so the reader batches.
        var ranges: [AddressRange] = []
        for i in stride(from: 0, to: 3000, by: 2) { ranges.append(AddressRange(start: region.start + UInt64(i) * 4096, pages: 1)) }
        #expect(ranges.count > 1024)
        let reader = RemoteMemoryReader(pid: child.pid, bufferBytes: 8 << 20)
        let result = try reader.read(ranges)
        #expect(result.bytes == ranges.count * 4096)
        #expect(result.vanished.isEmpty)
        #expect(result.calls >= 2)
        for (k, r) in ranges.enumerated() {
            let i = Int((r.start - region.start) / 4096)
            let want: UInt8 = i % 3 == 2 ? 0 : UInt8(i % 251)
            let page = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(reader.buffer)[(k * 4096)..<((k + 1) * 4096)])
            #expect(page.allSatisfy { $0 == want }, "page \(i)")
            if page.contains(where: { $0 != want }) { break }
        }
        child.send("q")
        child.wait()
    }

    @Test func unmappedHoleIsReportedVanished() throws {
        let (child, region) = try ForeignTarget.spawn(pages: 16, track: false)
        for i in 0..<16 { try ForeignTarget.command(child, "f \(i) \(i + 1)") }
        try ForeignTarget.command(child, "u 5")
        try ForeignTarget.command(child, "u 6")
        try ForeignTarget.command(child, "u 12")
        let reader = RemoteMemoryReader(pid: child.pid, bufferBytes: 1 << 20)
        let dest = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 4096, alignment: 4096)
        defer { dest.deallocate() }
        dest.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let result = try reader.read([region], into: dest)
        #expect(result.bytes == 16 * 4096)
        #expect(result.vanished == [AddressRange(start: region.start + 5 * 4096, pages: 2), AddressRange(start: region.start + 12 * 4096, pages: 1)])
        for i in 0..<16 {
            let want: UInt8 = [5, 6, 12].contains(i) ? 0 : UInt8(i + 1)
            #expect(dest[i * 4096] == want && dest[i * 4096 + 4095] == want, "page \(i)")
        }
        // A range starting on a hole.
        let r2 = try reader.read([AddressRange(start: region.start + 12 * 4096, pages: 2)], into: dest)
        #expect(r2.vanished == [AddressRange(start: region.start + 12 * 4096, pages: 1)])
        #expect(dest[4096] == 14)
        child.send("q")
        child.wait()
    }

    @Test func exitedTargetIsATypedError() throws {
        let (child, region) = try ForeignTarget.spawn(pages: 4, track: false)
        child.send("q")
        child.waitExitedNoReap()
        let reader = RemoteMemoryReader(pid: child.pid, bufferBytes: 1 << 16)
        let error = #expect(throws: RemoteReadError.self) { try reader.read([region]) }
        #expect(error == .targetExited(pid: child.pid))
        #expect(error?.description.contains("exited") == true)
        child.wait()
    }

    @Test func injectedFaultsAreTypedAndNamed() throws {
        let reader = RemoteMemoryReader(pid: getpid(), bufferBytes: 1 << 16)
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { page.deallocate() }
        let range = AddressRange(start: UInt64(UInt(bitPattern: page)), pages: 1)
        #expect(try reader.read([range]).bytes == 4096)
        let error = Syscall.withFaults([.init("process_vm_readv", .EPERM)]) {
            #expect(throws: RemoteReadError.self) { try reader.read([range]) }
        }
        #expect(error == .system(SystemError("process_vm_readv", .EPERM)))
        #expect(error?.description.hasPrefix("process_vm_readv: EPERM") == true)
    }

    @Test func tooLargeARequestIsRefused() throws {
        let reader = RemoteMemoryReader(pid: getpid(), bufferBytes: 4096)
        #expect(throws: RemoteReadError.self) { try reader.read([AddressRange(start: 0x10000, pages: 2)]) }
    }
}

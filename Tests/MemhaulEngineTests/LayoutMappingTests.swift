import Testing
import MemhaulImage
@testable import MemhaulReceiver
import MemhaulWire

/// LAYOUT ↔ image region keeps every bit: a CRIU export needs the file-backed
/// and huge-page flags the receiver used to drop.
@Suite struct LayoutMappingTests {
    @Test func everyProtectionAndFlagSurvivesTheRoundTrip() {
        for prot in 0..<8 {
            for flags in 0..<8 {
                let wire = RegionDescriptor(
                    start: 0x7f00_0000_0000, end: 0x7f00_0001_0000, protection: Protection(rawValue: UInt8(prot)),
                    flags: RegionFlags(rawValue: UInt8(flags)), name: "/usr/lib/libc.so.6")
                let image = ImageRegion(wire)
                #expect(RegionDescriptor(image) == wire)
                #expect(image.protection.contains(.fileBacked) == wire.flags.contains(.fileBacked))
                #expect(image.protection.contains(.hugePages) == wire.flags.contains(.hugePages))
            }
        }
    }
}

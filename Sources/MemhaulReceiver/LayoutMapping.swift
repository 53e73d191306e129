import MemhaulImage
import MemhaulWire

// A LAYOUT region ↔ an image region: every bit the wire carries is kept, so
// an export (CRIU) sees what the sender saw. The sender's side of the mapping
// (a /proc/PID/maps entry → a LAYOUT region) is MemhaulSender's LayoutMapping.swift.

extension ImageRegion {
    public init(_ wire: RegionDescriptor) {
        var p: ImageProtection = []
        if wire.protection.contains(.read) { p.insert(.read) }
        if wire.protection.contains(.write) { p.insert(.write) }
        if wire.protection.contains(.exec) { p.insert(.execute) }
        if wire.flags.contains(.shared) { p.insert(.shared) }
        if wire.flags.contains(.fileBacked) { p.insert(.fileBacked) }
        if wire.flags.contains(.hugePages) { p.insert(.hugePages) }
        self.init(start: wire.start, end: wire.end, protection: p, name: wire.name)
    }
}

extension RegionDescriptor {
    public init(_ image: ImageRegion) {
        let p = image.protection
        var protection: Protection = []
        if p.contains(.read) { protection.insert(.read) }
        if p.contains(.write) { protection.insert(.write) }
        if p.contains(.execute) { protection.insert(.exec) }
        var flags: RegionFlags = []
        if p.contains(.shared) { flags.insert(.shared) }
        if p.contains(.fileBacked) { flags.insert(.fileBacked) }
        if p.contains(.hugePages) { flags.insert(.hugePages) }
        self.init(start: image.start, end: image.end, protection: protection, flags: flags, name: image.name)
    }
}

import MemhaulKernel
import MemhaulWire

// A /proc/PID/maps entry → a LAYOUT region. The receiver's side (LAYOUT ↔
// image region) is MemhaulReceiver's LayoutMapping.swift; together they carry
// protection, shared, file-backed and huge-page bits end to end.

extension RegionDescriptor {
    public init(_ entry: MapsEntry) {
        var protection: Protection = []
        if entry.permissions.contains(.read) { protection.insert(.read) }
        if entry.permissions.contains(.write) { protection.insert(.write) }
        if entry.permissions.contains(.execute) { protection.insert(.exec) }
        var flags: RegionFlags = []
        if entry.permissions.contains(.shared) { flags.insert(.shared) }
        if !entry.isAnonymous && !entry.isPseudo { flags.insert(.fileBacked) }
        let name = String(decoding: entry.path.utf8.prefix(WireLimits.default.maxRegionNameLength), as: UTF8.self)
        self.init(start: entry.start, end: entry.end, protection: protection, flags: flags, name: name)
    }
}

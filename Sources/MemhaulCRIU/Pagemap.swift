import MemhaulSystem

/// `pagemap_entry` flags (`criu/include/pagemap.h`).
public struct PagemapFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Pages are in the parent image level.
    public static let parent = PagemapFlags(rawValue: 1 << 0)
    /// Pages may be restored lazily (their data is not in this level).
    public static let lazy = PagemapFlags(rawValue: 1 << 1)
    /// Pages are in this level's `pages-N.img`, in pagemap order.
    public static let present = PagemapFlags(rawValue: 1 << 2)

    public var description: String {
        [(Self.parent, "parent"), (.lazy, "lazy"), (.present, "present")].filter { contains($0.0) }.map(\.1).joined(separator: "|")
    }
}

/// One `pagemap_entry`: `pages` pages from `address`.
public struct PagemapEntry: Hashable, Sendable {
    public var address: UInt64
    public var pages: UInt64
    public var flags: PagemapFlags
    /// The old boolean form of `.parent` (field 3), kept as read.
    public var inParent: Bool?

    public init(address: UInt64, pages: UInt64, flags: PagemapFlags, inParent: Bool? = nil) {
        self.address = address
        self.pages = pages
        self.flags = flags
        self.inParent = inParent
    }

    public var range: AddressRange { AddressRange(start: address, end: address &+ pages &* PageSize.bytes) }

    /// Field numbers of `images/pagemap.proto`.
    enum Field { static let vaddr: UInt64 = 1, compatNrPages: UInt64 = 2, inParent: UInt64 = 3, flags: UInt64 = 4, nrPages: UInt64 = 5 }

    /// CRIU ≥ 4.2 writes the count only in `nr_pages` (5) and leaves
    /// `compat_nr_pages` (2) at 0; crit 3.17 reads only field 2 and then sees
    /// 0 pages without an error. So both are written (field 2 when it fits).
    func encoded() -> [UInt8] {
        var w = ProtoWriter()
        w.varint(UInt32(Field.vaddr), address)
        w.varint(UInt32(Field.compatNrPages), pages <= UInt64(UInt32.max) ? pages : 0)
        if let inParent { w.varint(UInt32(Field.inParent), inParent ? 1 : 0) }
        w.varint(UInt32(Field.flags), UInt64(flags.rawValue))
        w.varint(UInt32(Field.nrPages), pages)
        return w.bytes
    }

    static func decode(_ bytes: ArraySlice<UInt8>) throws(ProtoError) -> PagemapEntry {
        var r = ProtoReader(bytes)
        var vaddr: UInt64?, compat: UInt64?, nr: UInt64?, flags: UInt64 = 0, inParent: Bool?
        for (field, value) in try r.fields() {
            switch field {
            case Field.vaddr: vaddr = value
            case Field.compatNrPages: compat = value
            case Field.inParent: inParent = value != 0
            case Field.flags: flags = value
            case Field.nrPages: nr = value
            default: continue
            }
        }
        guard let vaddr else { throw .missingField("vaddr") }
        guard let compat else { throw .missingField("compat_nr_pages") }
        var entryFlags = PagemapFlags(rawValue: UInt32(truncatingIfNeeded: flags))
        if inParent == true { entryFlags.insert(.parent) }
        return PagemapEntry(address: vaddr, pages: nr ?? compat, flags: entryFlags, inParent: inParent)
    }
}

/// A CRIU `pagemap-PID.img`: the head (`pages_id`: which `pages-N.img` holds
/// the present pages) and the entries, in address order.
public struct Pagemap: Hashable, Sendable {
    public var pagesID: UInt32
    public var entries: [PagemapEntry]

    public init(pagesID: UInt32, entries: [PagemapEntry]) {
        self.pagesID = pagesID
        self.entries = entries
    }

    /// Bytes `pages-<pagesID>.img` must hold: every present page, in order.
    /// A shorter file makes CRIU's restorer loop for ever (`criu/pie/restorer.c`).
    public var presentBytes: UInt64 {
        entries.filter { $0.flags.contains(.present) }.reduce(0) { $0 + $1.pages * PageSize.bytes }
    }

    public func encoded() -> [UInt8] {
        var out = CRIUImageFile.header(magic: CRIUImageFile.pagemapMagic)
        var head = ProtoWriter()
        head.varint(1, UInt64(pagesID))
        CRIUImageFile.appendEntry(head.bytes, to: &out)
        for e in entries { CRIUImageFile.appendEntry(e.encoded(), to: &out) }
        return out
    }

    public static func decode(_ bytes: [UInt8]) throws(CRIUError) -> Pagemap {
        let messages = try CRIUImageFile.entries(bytes, magic: CRIUImageFile.pagemapMagic)
        guard let first = messages.first else { throw .malformed("pagemap image has no head") }
        do {
            var r = ProtoReader(first)
            guard let id = try r.fields().first(where: { $0.field == 1 })?.value, let pagesID = UInt32(exactly: id) else {
                throw CRIUError.malformed("pagemap head has no pages_id")
            }
            return Pagemap(pagesID: pagesID, entries: try messages.dropFirst().map { m throws(ProtoError) in try PagemapEntry.decode(m) })
        } catch let e as ProtoError {
            throw .malformed("pagemap: \(e)")
        } catch let e as CRIUError {
            throw e
        } catch {
            throw .malformed("pagemap: \(error)")
        }
    }
}

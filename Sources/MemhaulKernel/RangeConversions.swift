/// `AddressRange` (from /proc/PID/maps) and `PageRange` (what the scanner
/// takes) have the same shape; these convert without repeating the mapping.
extension PageRange {
    public init(_ range: AddressRange) { self.init(start: range.start, end: range.end) }
}

extension Array where Element == AddressRange {
    public var pageRanges: [PageRange] { map(PageRange.init) }
}

#if canImport(Glibc)
import Glibc
#endif
import MemhaulSystem

/// Where the committed image keeps each address, for readers that hand the
/// region files themselves to another program (CRIU's parent-chain restore
/// reads them in place) instead of reading through ``ImageReader/read(at:into:)``.
public struct ImageRegionFileMap: Sendable, Equatable {
    /// A region file: address `a` is at file offset `a - base` (Protocol/image.md, "Region files and segments").
    public struct File: Sendable, Equatable {
        public var id: UInt32
        public var base: UInt64
        /// The highest address it serves minus `base` (the manifest's size).
        public var size: UInt64
        public var path: String
        public init(id: UInt32, base: UInt64, size: UInt64, path: String) {
            (self.id, self.base, self.size, self.path) = (id, base, size, path)
        }
    }

    /// The layout cut into `[start, end)` pieces, each served by one file: sorted, disjoint.
    public struct Segment: Sendable, Equatable {
        public var start: UInt64
        public var end: UInt64
        public var fileID: UInt32
        public init(start: UInt64, end: UInt64, fileID: UInt32) {
            (self.start, self.end, self.fileID) = (start, end, fileID)
        }
    }

    public var files: [UInt32: File]
    public var segments: [Segment]
    /// Committed journals not applied to the region files: while any exist the
    /// files alone do not hold the committed content.
    public var pendingJournals: [UInt32]
    /// Vacant ranges (Protocol/image.md, "Vacant ranges": they read as zeros)
    /// where the region file holds data: the in-place writes of a round a
    /// writer has open or a crash cut short. Empty for a committed image whose
    /// vacant ranges are holes, as the format promises after a commit.
    public var vacantWithData: [AddressRange]

    public init(files: [UInt32: File], segments: [Segment], pendingJournals: [UInt32], vacantWithData: [AddressRange]) {
        (self.files, self.segments, self.pendingJournals, self.vacantWithData) = (files, segments, pendingJournals, vacantWithData)
    }
}

extension ImageReader {
    /// The manifest's region files and segments as the reader opened them;
    /// each vacant range is checked for data (`lseek(SEEK_DATA)`, no reads).
    public func regionFileMap() throws(ImageError) -> ImageRegionFileMap {
        let bases = Dictionary(manifest.files.map { ($0.id, $0.base) }, uniquingKeysWith: { a, _ in a })
        var opened: [UInt32: ImageFile] = [:]
        var withData: [AddressRange] = []
        for v in manifest.vacant {
            for s in manifest.segments where s.start < v.end && v.start < s.end {
                guard let base = bases[s.fileID] else { continue }  // the manifest's checks name every file
                let (lo, hi) = (max(v.start, s.start), min(v.end, s.end))
                if opened[s.fileID] == nil { opened[s.fileID] = try ImageFile(path: paths.regionFile(s.fileID), flags: O_RDONLY) }
                if let data = try opened[s.fileID]!.nextData(lo - base), data < hi - base {
                    withData.append(AddressRange(start: lo, end: hi))
                }
            }
        }
        return ImageRegionFileMap(
            files: Dictionary(manifest.files.map { ($0.id, .init(id: $0.id, base: $0.base, size: $0.size, path: paths.regionFile($0.id))) },
                              uniquingKeysWith: { a, _ in a }),
            segments: manifest.segments.map { .init(start: $0.start, end: $0.end, fileID: $0.fileID) },
            pendingJournals: pendingJournals,
            vacantWithData: withData)
    }
}

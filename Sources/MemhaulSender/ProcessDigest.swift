import MemhaulSession
import MemhaulDigest
import MemhaulKernel
import MemhaulWire
import MemhaulSystem

/// The sender's side of the proof: the memory digest of a (frozen) process
/// over the regions it declared, in the canonical form of ARCHITECTURE.md.
///
/// Pages with content (present, not the zero page, or swapped) are read with
/// process_vm_readv; every other page counts as zero, exactly as the image
/// stores it. Clean file-backed pages of private mappings count as zero on both
/// sides (the restorer maps the file), except in `fileContent`, the mappings of
/// files that cannot be reopened (deleted, memfd, replaced): there they are
/// content, sent and digested like anonymous memory (README "What memhaul migrates").
enum ProcessDigest {
    /// `version`: the form the receiver accepted (capability `digestV2`). In v2
    /// the digester classifies every page it is given by its bytes, so a
    /// populated all-zero page and an unpopulated one hash alike, as on the
    /// image side; the gaps between populated ranges cost O(1).
    static func compute(
        pid: Int32, regions: [RegionDescriptor], scanner: PagemapScanner, fileContent: [AddressRange] = [],
        version: DigestVersion = .v1
    ) throws -> MemoryDigest {
        let digester = MemoryDigester(version: version)
        let reader = RemoteMemoryReader(pid: pid, bufferBytes: 8 << 20)
        let chunkPages = (8 << 20) / Int(PageSize.bytes)
        for region in regions {
            digester.beginRegion(start: region.start, end: region.end)
            let populated = try scanner.populated([AddressRange(start: region.start, end: region.end)], fileContent: fileContent)
            var cursor = region.start
            var iterator = BatchIterator(ranges: populated, batchPages: chunkPages)
            while let batch = iterator.next() {
                // Zeros up to each range, then its bytes.
                let result = try reader.read(batch)
                var offset = 0
                for r in batch {
                    if r.start > cursor { digester.updateZeros(count: Int(r.start - cursor)) }
                    let bytes = UnsafeRawBufferPointer(start: reader.buffer.baseAddress! + offset, count: Int(r.byteCount))
                    if result.vanished.isEmpty {
                        digester.update(bytes)
                    } else {
                        try hashSkippingVanished(r, bytes, result.vanished, digester)
                    }
                    offset += Int(r.byteCount)
                    cursor = r.end
                }
            }
            if region.end > cursor { digester.updateZeros(count: Int(region.end - cursor)) }
        }
        return digester.finalize()
    }

    /// A page unmapped under a frozen target cannot happen; if it does the
    /// digest must not silently differ, so it is an error.
    private static func hashSkippingVanished(_ r: AddressRange, _ bytes: UnsafeRawBufferPointer, _ vanished: [AddressRange], _ d: MemoryDigester) throws {
        throw MigrationError.protocolViolation("memory of \(r) vanished while the target was frozen")
    }
}

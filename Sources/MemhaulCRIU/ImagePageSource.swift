import MemhaulImage
import MemhaulSystem

/// A committed memhaul image as CRIU's page source.
public final class ImagePageSource: CRIUPageSource {
    public let reader: ImageReader
    public let coverage: [AddressRange]

    /// Opens `directory` read-only; refuses an image whose migration did not
    /// complete (its proof did not pass) unless `allowIncomplete`.
    public init(directory: String, allowIncomplete: Bool) throws {
        reader = try ImageReader.open(directory: directory)
        guard allowIncomplete || reader.state == .complete else {
            throw CRIUError.imageIncomplete("\(directory) is \(reader.state), not complete: its digest proof did not pass (--allow-incomplete to use it anyway)")
        }
        coverage = reader.layout.map { AddressRange(start: $0.start, end: $0.end) }.coalesced()
    }

    public func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try reader.read(at: address, into: buffer)
    }
}


import MemhaulSystem

/// Where CRIU's missing pages come from: a committed memhaul image (the CLI
/// adapts the image reader), or anything else that can read memory by address.
public protocol CRIUPageSource: AnyObject {
    /// The address ranges the image declares, sorted and coalesced: a request
    /// outside them is refused (the image cannot vouch for it).
    var coverage: [AddressRange] { get }
    /// Fills `buffer` with the image's bytes at `address` (holes read as zeros).
    func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws
}

extension CRIUPageSource {
    func covers(_ range: AddressRange) -> Bool {
        [range].subtracting(coverage).isEmpty
    }
}

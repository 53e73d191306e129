/// CRIU's image framing (`criu/image.c`): `u32 IMG_COMMON_MAGIC`, `u32` the
/// image type's magic, then entries, each a `u32` length and that many bytes
/// of protobuf. `pages-N.img` files are raw (no header).
public enum CRIUImageFile {
    public static let commonMagic: UInt32 = 0x5456_4319
    public static let pagemapMagic: UInt32 = 0x5608_4025
    /// Largest entry we accept: a pagemap entry is at most ~40 bytes.
    static let maxEntryBytes = 1 << 16

    static func header(magic: UInt32) -> [UInt8] {
        var out: [UInt8] = []
        appendU32(commonMagic, to: &out)
        appendU32(magic, to: &out)
        return out
    }

    static func appendEntry(_ message: [UInt8], to out: inout [UInt8]) {
        appendU32(UInt32(message.count), to: &out)
        out += message
    }

    private static func appendU32(_ v: UInt32, to out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out += $0 }
    }

    private static func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    /// The entries of an image with the given type magic.
    static func entries(_ bytes: [UInt8], magic: UInt32) throws(CRIUError) -> [ArraySlice<UInt8>] {
        guard bytes.count >= 8 else { throw .malformed("image shorter than its 8-byte header") }
        guard u32(bytes, 0) == commonMagic, u32(bytes, 4) == magic else {
            throw .malformed("bad magic 0x\(String(u32(bytes, 0), radix: 16)) 0x\(String(u32(bytes, 4), radix: 16))")
        }
        var out: [ArraySlice<UInt8>] = []
        var at = 8
        while at < bytes.count {
            guard bytes.count - at >= 4 else { throw .malformed("entry length cut at byte \(at)") }
            let n = Int(u32(bytes, at))
            at += 4
            guard n <= maxEntryBytes, bytes.count - at >= n else { throw .malformed("entry of \(n) bytes at byte \(at - 4) runs past the end") }
            out.append(bytes[at..<(at + n)])
            at += n
        }
        return out
    }
}

/// Errors of the CRIU integration, each one readable line.
public enum CRIUError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case notInImage(AddressRange)
    case unsupported(String)
    case io(String)
    case imageIncomplete(String)

    public var description: String {
        switch self {
        case .malformed(let m): "CRIU image: \(m)"
        case .notInImage(let r): "the memhaul image does not hold \(r), which the CRIU dump leaves to it (PE_LAZY)"
        case .unsupported(let m): "unsupported CRIU dump: \(m)"
        case .io(let m): m
        case .imageIncomplete(let m): "memhaul image: \(m)"
        }
    }
}

import MemhaulSystem

/// The few protobuf (proto2) wire rules CRIU's pagemap images need: varint
/// fields only (wire type 0), unknown fields skipped. Hand-written because the
/// two messages (`pagemap_head`, `pagemap_entry`, `images/pagemap.proto`) are
/// five varints, and swift-protobuf's code generator would cost every build
/// minutes for them.
struct ProtoWriter {
    private(set) var bytes: [UInt8] = []

    mutating func varint(_ field: UInt32, _ value: UInt64) {
        append(UInt64(field) << 3)  // wire type 0
        append(value)
    }

    private mutating func append(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }
}

/// Why a protobuf message did not decode.
public enum ProtoError: Error, Equatable, CustomStringConvertible {
    case truncated
    case overlongVarint
    case unsupportedWireType(field: UInt64, type: UInt8)
    case missingField(String)

    public var description: String {
        switch self {
        case .truncated: "protobuf: message ends inside a field"
        case .overlongVarint: "protobuf: varint longer than 10 bytes"
        case let .unsupportedWireType(f, t): "protobuf: field \(f) has wire type \(t)"
        case let .missingField(name): "protobuf: required field \(name) missing"
        }
    }
}

struct ProtoReader {
    private let bytes: ArraySlice<UInt8>
    private var offset: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        offset = bytes.startIndex
    }

    /// Every field as (number, varint value); length-delimited and fixed
    /// fields are skipped (none are defined in the messages we read).
    mutating func fields() throws(ProtoError) -> [(field: UInt64, value: UInt64)] {
        var out: [(UInt64, UInt64)] = []
        while offset < bytes.endIndex {
            let key = try varint()
            let field = key >> 3
            switch UInt8(key & 7) {
            case 0: out.append((field, try varint()))
            case 1: try skip(8)
            case 5: try skip(4)
            case 2:
                let n = try varint()
                guard n <= UInt64(bytes.endIndex - offset) else { throw .truncated }
                try skip(Int(n))
            case let t: throw .unsupportedWireType(field: field, type: t)
            }
        }
        return out
    }

    private mutating func skip(_ n: Int) throws(ProtoError) {
        guard bytes.endIndex - offset >= n else { throw .truncated }
        offset += n
    }

    private mutating func varint() throws(ProtoError) -> UInt64 {
        var value: UInt64 = 0
        for i in 0..<10 {
            guard offset < bytes.endIndex else { throw .truncated }
            let b = bytes[offset]
            offset += 1
            value |= UInt64(b & 0x7f) << (7 * UInt64(i))
            if b & 0x80 == 0 { return value }
        }
        throw .overlongVarint
    }
}

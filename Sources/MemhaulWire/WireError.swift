/// Every way a byte stream can fail to be a valid memhaul wire stream (Protocol/wire.md, "Decode errors").
///
/// The decoder throws these before allocating anything sized by the input; the encoder throws
/// the same cases when asked to encode a message the decoder would reject, so nothing invalid
/// ever reaches the wire.
public enum WireError: Error, Hashable, Sendable {
    /// The buffer ends before the structure does: `needed` bytes were required, `available` present.
    case truncated(needed: Int, available: Int)
    /// The stream does not start with `MEMHAUL\0`.
    case badMagic
    /// The peer speaks another major version.
    case unsupportedVersion(WireVersion)
    /// A frame's declared payload length exceeds the limit for its type (checked before allocating).
    case payloadTooLarge(length: UInt32, limit: UInt32)
    /// The frame type byte is not one of ``FrameType``.
    case unknownFrameType(UInt8)
    /// A flags field has a bit set that this version does not define.
    case invalidFlags(UInt8)
    /// A reserved field (or a field that must be zero in context) is not zero.
    case reservedNotZero
    /// The frame sequence number is not the next one expected.
    case sequenceMismatch(expected: UInt32, got: UInt32)
    /// The payload is longer than its fields say, or a derived length disagrees.
    case lengthMismatch(expected: Int, actual: Int)
    /// A count exceeds its limit.
    case countTooLarge(count: Int, limit: Int)
    /// A list that must not be empty is empty (PAGE_BATCH runs, ZERO/DISCARD ranges).
    case emptyList
    /// A string is longer than its limit.
    case nameTooLong(length: Int, limit: Int)
    /// A string field is not valid UTF-8.
    case invalidUTF8
    /// The migration id is empty, longer than 64 bytes, or has a byte outside `[A-Za-z0-9._-]`.
    case invalidMigrationID
    /// The page size is not a power of two in 4096...65536.
    case invalidPageSize(UInt32)
    /// A round number is 0 (rounds start at 1).
    case invalidRound
    /// An address or region bound is not page aligned.
    case unalignedAddress(UInt64)
    /// A range or region covers no pages (page count 0, or end <= start).
    case emptyRange(start: UInt64)
    /// start + pageCount * pageSize does not fit in 64 bits.
    case rangeOverflow(start: UInt64)
    /// A range or region starts before the previous one ends (unsorted or overlapping).
    case rangesUnsorted(start: UInt64)
    /// PAGE_BATCH encoding byte is not raw (0) or zstd (1).
    case unknownEncoding(UInt8)
    /// A zstd PAGE_BATCH payload is empty or larger than the uncompressed data.
    case compressedTooLarge(length: Int, uncompressed: Int)
    /// A RESTORE_FILE name outside `RestoreFileName.rule`.
    case invalidFileName
    /// A PID of 0.
    case invalidPID
    /// A ROUND_ACK load fraction above 1000 thousandths.
    case loadOutOfRange(UInt16)
}

extension WireError: CustomStringConvertible {
    /// One readable line, suitable for an ERROR frame's message.
    public var description: String {
        switch self {
        case let .truncated(needed, available): "wire: truncated: needed \(needed) bytes, have \(available)"
        case .badMagic: "wire: bad magic (not a memhaul stream)"
        case let .unsupportedVersion(v): "wire: unsupported protocol version \(v) (this side speaks \(WireVersion.current))"
        case let .payloadTooLarge(length, limit): "wire: payload length \(length) exceeds limit \(limit)"
        case let .unknownFrameType(t): "wire: unknown frame type \(t)"
        case let .invalidFlags(f): "wire: undefined flag bits set in \(f)"
        case .reservedNotZero: "wire: reserved field is not zero"
        case let .sequenceMismatch(expected, got): "wire: frame sequence \(got), expected \(expected)"
        case let .lengthMismatch(expected, actual): "wire: length \(actual), expected \(expected)"
        case let .countTooLarge(count, limit): "wire: count \(count) exceeds limit \(limit)"
        case .emptyList: "wire: empty list where at least one entry is required"
        case let .nameTooLong(length, limit): "wire: string of \(length) bytes exceeds limit \(limit)"
        case .invalidUTF8: "wire: string is not valid UTF-8"
        case .invalidMigrationID: "wire: migration id must be 1-64 bytes of [A-Za-z0-9._-]"
        case let .invalidPageSize(s): "wire: invalid page size \(s)"
        case .invalidRound: "wire: round 0 is invalid (rounds start at 1)"
        case let .unalignedAddress(a): "wire: address 0x\(String(a, radix: 16)) is not page aligned"
        case let .emptyRange(start): "wire: empty range at 0x\(String(start, radix: 16))"
        case let .rangeOverflow(start): "wire: range at 0x\(String(start, radix: 16)) overflows 64 bits"
        case let .rangesUnsorted(start): "wire: range at 0x\(String(start, radix: 16)) is unsorted or overlaps the previous one"
        case let .unknownEncoding(e): "wire: unknown page encoding \(e)"
        case let .compressedTooLarge(length, uncompressed): "wire: compressed payload \(length) bytes for \(uncompressed) uncompressed"
        case .invalidFileName: "wire: restore file name must be \(RestoreFileName.rule)"
        case .invalidPID: "wire: PID 0 is invalid"
        case let .loadOutOfRange(v): "wire: ROUND_ACK load \(v) exceeds 1000 thousandths"
        }
    }
}

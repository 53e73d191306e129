/// Protocol version: same major required on both sides; the minor only adds optional capabilities.
public struct WireVersion: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var major: UInt16
    public var minor: UInt16

    public init(major: UInt16, minor: UInt16) {
        self.major = major
        self.minor = minor
    }

    /// The version this codec implements.
    public static let current = WireVersion(major: 1, minor: 0)

    /// True when a peer speaking `other` can talk to us (same major).
    public func isCompatible(with other: WireVersion) -> Bool { major == other.major }

    public static func < (a: WireVersion, b: WireVersion) -> Bool { (a.major, a.minor) < (b.major, b.minor) }

    public var description: String { "\(major).\(minor)" }
}

/// The 12-byte stream preamble each side sends first: `MEMHAUL\0`, major u16, minor u16.
public enum Preamble {
    public static let magic: [UInt8] = Array("MEMHAUL".utf8) + [0]
    public static let size = 12

    public static func encode(_ version: WireVersion = .current, into out: inout [UInt8]) {
        out.append(contentsOf: magic)
        out.appendLE(version.major)
        out.appendLE(version.minor)
    }

    /// Decodes the first 12 bytes of `bytes` and checks the major against `local`.
    public static func decode(_ bytes: UnsafeRawBufferPointer, local: WireVersion = .current) throws(WireError) -> WireVersion {
        guard bytes.count >= size else { throw .truncated(needed: size, available: bytes.count) }
        for i in 0..<8 where bytes[i] != magic[i] { throw .badMagic }
        let version = WireVersion(major: bytes.le(UInt16.self, at: 8), minor: bytes.le(UInt16.self, at: 10))
        guard version.isCompatible(with: local) else { throw .unsupportedVersion(version) }
        return version
    }
}

/// HELLO/WELCOME capability bits. Unknown bits are legal in HELLO (a newer minor); WELCOME
/// answers with the subset the receiver accepts.
public struct Capabilities: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// PAGE_BATCH encoding 1 (zstd) may be used.
    public static let zstd = Capabilities(rawValue: 1 << 0)
    /// The resume handshake (HELLO resume round, WELCOME last committed round) is honoured.
    public static let resume = Capabilities(rawValue: 1 << 1)
    /// KEEPALIVE frames may be sent and must be answered.
    public static let keepalive = Capabilities(rawValue: 1 << 2)
    /// The CRIU hand-over after the proof (RESTORE_FILE, RESTORE_BEGIN, RESTORE_DONE): the
    /// receiver restores the process. A receiver sets it only when it runs CRIU.
    public static let criuRestore = Capabilities(rawValue: 1 << 3)
    /// The verification round's digests (ROUND_END, final ROUND_ACK) are memory
    /// digest v2 (ARCHITECTURE.md "Memory digest"): runs of zero pages hashed as
    /// one record, so the cost follows the content, not the declared layout.
    /// Without it both sides use v1.
    public static let digestV2 = Capabilities(rawValue: 1 << 4)
    /// The verification round's digests are the ledger digest (v3, ARCHITECTURE.md
    /// "Memory digest"): both sides keep one hash per page as it is sent and
    /// committed, so the proof at cutover costs O(regions). It proves the image
    /// holds what the sender read, not that this equals the frozen source (the
    /// sender's `--proof both|full` re-reads it). Takes precedence over `digestV2`.
    public static let ledgerDigest = Capabilities(rawValue: 1 << 5)
    /// With `criuRestore`: RESTORE_BEGIN may ask for the parent route (option bit 4).
    /// An older receiver leaves it out, and a sender that wants that route stops
    /// before anything is frozen. (Bits 6 and 7 are the delta encoding's and the
    /// receiver load's.)
    public static let criuParentRoute = Capabilities(rawValue: 1 << 8)
    /// PAGE_BATCH encoding 2 (delta) may be used: pages re-sent as XBZRLE deltas against the
    /// content the receiver committed for them (wire.md, PAGE_BATCH).
    public static let pageDelta = Capabilities(rawValue: 1 << 6)
    /// Non-final ROUND_ACKs may carry the receiver's load (``ReceiverLoad``): how busy its
    /// network thread and its storage stage were during the chunk, so the sender's
    /// compression governor can tell a busy receiver from a slow network.
    /// (Bit 6 is taken by the delta encoding.)
    public static let receiverLoad = Capabilities(rawValue: 1 << 7)
    /// With `ledgerDigest`: the final delta's last ROUND_END may carry the final flag and
    /// the sender's digest, so the receiver commits the last pages and proves the image in one
    /// durable commit, and no verification round follows (wire.md, "The final round").
    public static let finalDeltaDigest = Capabilities(rawValue: 1 << 9)

    /// Everything version 1.0 defines.
    public static let v1_0: Capabilities = [.zstd, .resume, .keepalive]
}

/// Limits the decoder enforces and the encoder respects. Defaults are the protocol's (wire.md, "Limits");
/// a receiver may only tighten them.
public struct WireLimits: Hashable, Sendable {
    /// Page size all addresses are aligned to (negotiated in HELLO; 4096 on x86-64).
    public var pageSize: UInt32 = 4096
    /// Largest frame payload of any type.
    public var maxPayloadLength: UInt32 = 16 << 20
    /// Pages in one PAGE_BATCH (1024 pages = 4 MiB at 4 KiB pages).
    public var maxPagesPerBatch: Int = 1024
    /// Runs in one PAGE_BATCH.
    public var maxRunsPerBatch: Int = 1024
    /// Ranges in one ZERO_RANGES / DISCARD_RANGES.
    public var maxRangesPerMessage: Int = 65536
    /// Regions in one LAYOUT frame.
    public var maxRegionsPerLayout: Int = 65536
    /// Bytes of a region name.
    public var maxRegionNameLength: Int = 4096
    /// Bytes of an ERROR message.
    public var maxErrorMessageLength: Int = 1024

    public init() {}

    public static let `default` = WireLimits()

    /// Migration ids are at most 64 bytes of `[A-Za-z0-9._-]`.
    public static let maxMigrationIDLength = 64
    /// Sender names are at most 255 bytes of UTF-8 (one length byte).
    public static let maxSenderNameLength = 255
}
